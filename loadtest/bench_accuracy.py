"""Benchmark: how accurate the latency predictor is after warm-up, under changing load.

For each fleet (homogeneous: 4 sims at speed 1.0; heterogeneous: speeds 0.5, 1.0, 1.5, 2.0)
and each objective (``mean``, ``quantile`` p90), on freshly started sims (real time, sim
defaults: 256 seqs, 4096 KV blocks), it runs the real gateway (``create_app``, this process)
with the ``predicted-latency`` preset and replays the Azure 2023 conversation trace through it
(``loadtest.fleet``: its own driver process, streaming with ``include_usage``): a warm-up at
medium load, then low -> high -> low. Rates are set per fleet from its total speed (about
``--capacity-per-speed`` req/s per unit of speed saturates a sim on this trace) and printed
with the trace scaling.

It scores every prediction made after the warm-up for the endpoint that served the request
against the latency the gateway measured (the predictor's own samples: dispatch to first token,
and time per output token): MAPE per phase, p90 coverage for the quantile objective, plus
Spearman rank correlation. For the heterogeneous fleet it prints each pod's learned latency
factor (``slogate_predictor_endpoint_latency_factor``: ``exp(offset)``) next to its true
relative slowness (geometric-mean speed / speed).

    .venv/bin/python -m loadtest.bench_accuracy                      # both fleets, both objectives
    .venv/bin/python -m loadtest.bench_accuracy --fleets hetero --objectives mean

Prints tables and writes ``results/bench_accuracy.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from config import PredictorConfig
from gateway.cli import new_event_loop
from loadtest.fleet import (
    Phase,
    PredictionLog,
    PredictionRecord,
    SimSpec,
    WorkloadSpec,
    coverage,
    latency_summary,
    mape,
    run_driver,
    sim_fleet,
    start_gateway,
)
from loadtest.report import write_report
from scheduler.predictor.training import spearman

FLEETS: dict[str, tuple[float, ...]] = {
    "homo": (1.0, 1.0, 1.0, 1.0),
    "hetero": (0.5, 1.0, 1.5, 2.0),
}
TTFT_TARGET = 0.10


def workload(speeds: Sequence[float], args: argparse.Namespace) -> WorkloadSpec:
    capacity = args.capacity_per_speed * sum(speeds)
    return WorkloadSpec(
        trace=args.trace,
        seed=args.seed,
        phases=(
            Phase("warmup", args.warmup_s, round(0.6 * capacity, 1)),
            Phase("low", args.phase_s, round(args.low * capacity, 1)),
            Phase("high", args.phase_s, round(args.high * capacity, 1)),
            Phase("low2", args.phase_s, round(args.low * capacity, 1)),
        ),
    )


def _scores(records: Sequence[PredictionRecord], quantile: bool) -> dict[str, float]:
    out: dict[str, float] = {"n": len(records), "mape": mape(records)}
    if quantile:
        out["coverage"] = coverage(records)
    if len(records) >= 2:
        out["spearman"] = spearman(
            np.array([r.predicted_s for r in records]), np.array([r.actual_s for r in records])
        )
    return out


async def run_case(fleet: str, objective: str, args: argparse.Namespace) -> dict[str, Any]:
    speeds = FLEETS[fleet]
    spec = workload(speeds, args)
    sims = SimSpec(speeds=speeds, seed=args.seed)
    predictor_cfg = PredictorConfig(
        objective=objective,
        **({"retrain_interval_s": args.retrain_interval_s} if args.retrain_interval_s else {}),
    )
    log = PredictionLog()
    async with sim_fleet(sims) as pods:
        gw = await start_gateway(
            pods, preset=args.preset, predictor=predictor_cfg, observers=(log,)
        )
        log.attach(gw.gateway)
        try:
            start_at = time.monotonic() + 1.0
            client = await run_driver(gw.url, spec, start_at=start_at)
            predictor = gw.gateway.predictor
            model = predictor.model
            trainer = gw.gateway.trainer.stats
            windows = dict(predictor.window_sizes())
            decisions = (predictor.predicted_decisions, predictor.fallback_decisions)
        finally:
            await gw.close()
    bounds = [(name, start_at + lo, start_at + hi) for name, lo, hi in spec.phase_bounds()]
    after = bounds[1][1]
    quantile = objective == "quantile"
    result: dict[str, Any] = {
        "fleet": fleet,
        "objective": objective,
        "speeds": speeds,
        "workload": spec.describe(),
        "sims": sims.describe(),
        "client": latency_summary(client, spec.duration_s),
        "model_version": None if model is None else model.version,
        "prefill_rate": getattr(model.ttft, "prefill_rate", None) if model is not None else None,
        "windows": windows,
        "decisions": {"predicted": decisions[0], "fallback": decisions[1]},
        "training_runs": asdict(trainer),
        "phases": {},
    }
    for target in ("ttft", "tpot"):
        recs = [r for r in log.records if r.target == target]
        result[target] = _scores([r for r in recs if r.at >= after], quantile)
        for name, lo, hi in bounds:
            phase = result["phases"].setdefault(name, {})
            phase[target] = _scores([r for r in recs if lo <= r.at < hi], quantile)
    result["by_pod"] = {
        pod.name: {
            target: _scores(
                [
                    r
                    for r in log.records
                    if r.target == target and r.endpoint == pod.name and r.at >= after
                ],
                quantile,
            )
            for target in ("ttft", "tpot")
        }
        for pod in pods
    }
    factors: dict[str, dict[str, float]] = {}
    if model is not None:
        gmean = math.exp(sum(math.log(s) for s in speeds) / len(speeds))
        for pod_name, speed in zip((p.name for p in pods), speeds, strict=True):
            row = {"true": gmean / speed}
            for target_model in (model.ttft, model.tpot):
                if target_model is not None and pod_name in target_model.offsets:
                    row[target_model.target] = math.exp(target_model.offsets[pod_name])
            factors[pod_name] = row
    result["latency_factors"] = factors
    return result


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:{spec}}"


def print_results(results: list[dict[str, Any]]) -> None:
    print("\nTTFT / TPOT accuracy after warm-up (predictions for the pod used vs gateway-measured)")
    head = (
        f"{'fleet':<7}{'objective':<10}{'phase':<7}{'n':>6}{'TTFT MAPE':>10}{'cov':>6}"
        f"{'rho':>6}{'TPOT MAPE':>10}{'cov':>6}{'rho':>6}"
    )
    print(head)
    for res in results:
        rows = [("all", res["ttft"], res["tpot"])] + [
            (name, phase["ttft"], phase["tpot"])
            for name, phase in res["phases"].items()
            if name != "warmup"
        ]
        for name, ttft, tpot in rows:
            print(
                f"{res['fleet']:<7}{res['objective']:<10}{name:<7}{ttft['n']:>6}"
                f"{_fmt(ttft['mape']):>10}{_fmt(ttft.get('coverage'), '.2f'):>6}"
                f"{_fmt(ttft.get('spearman'), '.2f'):>6}"
                f"{_fmt(tpot['mape']):>10}{_fmt(tpot.get('coverage'), '.2f'):>6}"
                f"{_fmt(tpot.get('spearman'), '.2f'):>6}"
            )
    for res in results:
        if res["latency_factors"]:
            print(f"\nlearned latency factors, {res['fleet']} fleet, {res['objective']} objective")
            print(
                f"{'pod':<12}{'true':>7}{'ttft':>7}{'tpot':>7}"
                f"{'n':>7}{'TTFT MAPE':>10}{'TPOT MAPE':>10}"
            )
            for pod, row in res["latency_factors"].items():
                acc = res["by_pod"][pod]
                print(
                    f"{pod:<12}{row['true']:>7.2f}{_fmt(row.get('ttft'), '.2f'):>7}"
                    f"{_fmt(row.get('tpot'), '.2f'):>7}{acc['ttft']['n']:>7}"
                    f"{_fmt(acc['ttft']['mape']):>10}{_fmt(acc['tpot']['mape']):>10}"
                )
    print("\nclient view and verdict")
    for res in results:
        c = res["client"]
        verdict = ""
        if res["objective"] == "mean":
            verdict = "ok" if res["ttft"]["mape"] <= TTFT_TARGET else "MISS"
        print(
            f"{res['fleet']:<7}{res['objective']:<10} {c['requests']} requests, "
            f"{c['errors']} errors, TTFT p50 {c['ttft_p50_s'] * 1000:.0f} ms, "
            f"model v{res['model_version']}, prefill rate {res['prefill_rate']}, "
            f"windows {res['windows']}  {verdict}"
        )


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for fleet in args.fleets.split(","):
        for objective in args.objectives.split(","):
            print(f"running {fleet} fleet, objective {objective} ...", file=sys.stderr)
            results.append(await run_case(fleet, objective, args))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Latency predictor accuracy after warm-up.")
    parser.add_argument("--fleets", default="homo,hetero")
    parser.add_argument("--objectives", default="mean,quantile")
    parser.add_argument("--trace", default="azure-conv")
    parser.add_argument("--warmup-s", type=float, default=40.0)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--low", type=float, default=0.3, help="low load, share of capacity")
    parser.add_argument("--high", type=float, default=0.85, help="high load, share of capacity")
    parser.add_argument("--capacity-per-speed", type=float, default=4.0)
    parser.add_argument("--retrain-interval-s", type=float, default=0.0, help="0: the default")
    parser.add_argument(
        "--preset",
        default="predicted-latency",
        help="the preset routing with the predictor (predicted-latency-slo: what SLO decisions "
        "see, the model's TPOT from the start and its step floor)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/bench_accuracy.json"))
    args = parser.parse_args(argv)

    loop = new_event_loop()
    try:
        results = loop.run_until_complete(main_async(args))
    finally:
        loop.close()
    print_results(results)
    for res in results:
        print(f"{res['fleet']}: {res['sims']}; {res['workload']}")
        break
    write_report(
        args.out, "bench_accuracy", args=vars(args) | {"out": str(args.out)}, results=results
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
