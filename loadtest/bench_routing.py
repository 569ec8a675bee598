"""Benchmark: routing on a heterogeneous fleet, ``predicted-latency`` against the heuristics.

The same workload (same trace rows, arrival times and prompts, same seeds) is replayed through
the real gateway (``create_app``, this process) once per preset, each time on freshly started
sims (speeds 0.5, 1.0, 1.5, 2.0 by default, real time), one preset after the other
(``loadtest.fleet``: sims and driver in their own processes). The driver measures what a client
sees: TTFT, TPOT, end-to-end latency, throughput and which pod served each request.

The predictor does not start cold: first a warm-up run (``--warmup-s`` of the same trace, other
rows, at medium load) with the ``predicted-latency`` preset on its own fresh sims saves its
model and training window (``PredictorConfig.state_dir``); the measured ``predicted-latency``
run restores them at start (same pod names, same speeds) and keeps training as usual. The
other presets need no warm-up state.

    .venv/bin/python -m loadtest.bench_routing
    .venv/bin/python -m loadtest.bench_routing --trace mooncake --length-scale 0.125

Prints a table with ratios against ``load-prefix`` and writes ``results/bench_routing.json``.

``--matrix`` runs the routing matrix instead (:mod:`loadtest.matrix`): slogate's presets
against vllm-router's policies, each router in its own process, on every combination of
engine, fleet, workload and scenario (``--engines``, ``--fleets``, ``--workloads``,
``--scenarios``, ``--arms`` restrict it); the predictor starts cold there. It prints a table
per cell with ratios to the best vllm-router policy, then a summary of p90 TTFT ratios, and
writes ``results/bench_routing_matrix.json``:

    .venv/bin/python -m loadtest.bench_routing --matrix
    .venv/bin/python -m loadtest.bench_routing --matrix --engines vllm --fleets hetero \
        --workloads azure-conv --scenarios steady,slowdown --duration-s 40
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from config import PredictorConfig
from gateway.cli import new_event_loop
from loadtest.fleet import (
    ClientRecord,
    Phase,
    SimSpec,
    WorkloadSpec,
    latency_summary,
    run_driver,
    sim_fleet,
    start_gateway,
)
from loadtest.matrix import (
    ENGINES,
    FLEETS,
    SCENARIOS,
    WORKLOADS,
    MatrixSettings,
    matrix_from_args,
    run_matrix,
    split_list,
)
from loadtest.matrix_report import (
    cell_report,
    print_cell,
    print_summary,
    summary_runs,
    summary_table,
)
from loadtest.report import write_report
from loadtest.routers import ARMS, VLLM_ROUTER_INSTALL, find_vllm_router

PRESETS = ("predicted-latency", "load-prefix", "least-request", "round-robin")
BASELINE = "load-prefix"


def workload(args: argparse.Namespace, speeds: tuple[float, ...], *, warmup: bool) -> WorkloadSpec:
    capacity = args.capacity_per_speed * sum(speeds)
    common: dict[str, Any] = {
        "trace": args.trace,
        "seed": args.seed,
        "length_scale": args.length_scale,
    }
    if warmup:
        return WorkloadSpec(
            **common,
            start_row=args.start_row + 10_000,
            phases=(Phase("warmup", args.warmup_s, round(0.6 * capacity, 1)),),
        )
    return WorkloadSpec(
        **common,
        start_row=args.start_row,
        phases=(
            Phase("medium", args.phase_s, round(args.medium * capacity, 1)),
            Phase("high", args.phase_s, round(args.high * capacity, 1)),
            Phase("medium2", args.phase_s, round(args.medium * capacity, 1)),
        ),
    )


async def run_preset(
    preset: str, spec: WorkloadSpec, sims: SimSpec, predictor: PredictorConfig, seed: int
) -> tuple[list[ClientRecord], dict[str, Any]]:
    async with sim_fleet(sims) as pods:
        gw = await start_gateway(pods, preset=preset, predictor=predictor, seed=seed)
        try:
            records = await run_driver(gw.url, spec, start_at=time.monotonic() + 1.0)
            p = gw.gateway.predictor
            info: dict[str, Any] = {
                "pods": [pod.name for pod in pods],
                "predicted_decisions": p.predicted_decisions,
                "fallback_decisions": p.fallback_decisions,
                "model_version": None if p.model is None else p.model.version,
            }
            if preset == "predicted-latency":
                acc = p.accuracy()
                info["live_ttft_mape"] = acc.ttft_mape
                info["live_tpot_mape"] = acc.tpot_mape
        finally:
            await gw.close()
    return records, info


def summarize(records: list[ClientRecord], spec: WorkloadSpec, pods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = latency_summary(records, spec.duration_s)
    served = Counter(r.endpoint for r in records if r.error is None)
    total = sum(served.values()) or 1
    out["share"] = {pod: served.get(pod, 0) / total for pod in pods}
    out["phases"] = {
        name: latency_summary([r for r in records if r.phase == name], hi - lo)
        for name, lo, hi in spec.phase_bounds()
    }
    return out


METRICS = (
    ("TTFT p50", "ttft_p50_s", 1000, "ms"),
    ("TTFT p90", "ttft_p90_s", 1000, "ms"),
    ("TTFT p99", "ttft_p99_s", 1000, "ms"),
    ("TPOT p50", "tpot_p50_s", 1000, "ms"),
    ("TPOT p90", "tpot_p90_s", 1000, "ms"),
    ("e2e p50", "e2e_p50_s", 1, "s"),
    ("e2e p90", "e2e_p90_s", 1, "s"),
    ("throughput", "throughput_rps", 1, "req/s"),
    ("tokens/s", "tokens_per_s", 1, ""),
)


def print_table(results: dict[str, dict[str, Any]], pods: list[str]) -> None:
    names = list(results)
    base = results.get(BASELINE)
    width = 20
    print("\n" + f"{'':<14}" + "".join(f"{n:>{width}}" for n in names))
    for label, key, scale, unit in METRICS:
        cells = []
        for n in names:
            value = results[n]["summary"][key]
            cell = f"{value * scale:.1f}" if not math.isnan(value) else "-"
            if base is not None and n != BASELINE and base["summary"][key]:
                cell += f" ({value / base['summary'][key]:.2f}x)"
            cells.append(f"{cell:>{width}}")
        print(f"{label + (' ' + unit if unit else ''):<14}" + "".join(cells))
    for pod in pods:
        cells = [f"{results[n]['summary']['share'][pod]:>{width}.1%}" for n in names]
        print(f"{'share ' + pod:<14}" + "".join(cells))
    errors = [f"{results[n]['summary']['errors']:>{width}}" for n in names]
    print(f"{'errors':<14}" + "".join(errors))
    print("\nTTFT p90 (ms) per phase")
    phases = list(next(iter(results.values()))["summary"]["phases"])
    for phase in phases:
        cells = [
            f"{results[n]['summary']['phases'][phase]['ttft_p90_s'] * 1000:>{width}.1f}"
            for n in names
        ]
        print(f"{phase:<14}" + "".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Routing comparison on a heterogeneous fleet.")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--speeds", default="0.5,1.0,1.5,2.0")
    parser.add_argument("--trace", default="azure-conv", help="azure-conv, azure-code, mooncake")
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument("--start-row", type=int, default=0)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--medium", type=float, default=0.6, help="share of capacity")
    parser.add_argument("--high", type=float, default=0.9, help="share of capacity")
    parser.add_argument("--capacity-per-speed", type=float, default=4.0)
    parser.add_argument("--warmup-s", type=float, default=40.0)
    parser.add_argument("--objective", default="mean", choices=("mean", "quantile"))
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/bench_routing.json"))
    matrix = parser.add_argument_group("the matrix (--matrix)")
    matrix.add_argument("--matrix", action="store_true", help="run the routing matrix")
    matrix.add_argument("--engines", default=",".join(ENGINES))
    matrix.add_argument("--fleets", default=",".join(FLEETS))
    matrix.add_argument("--workloads", default=",".join(WORKLOADS))
    matrix.add_argument("--scenarios", default=",".join(SCENARIOS))
    matrix.add_argument("--arms", default=",".join(a.name for a in ARMS))
    matrix.add_argument("--duration-s", type=float, default=MatrixSettings().duration_s)
    matrix.add_argument("--drain-s", type=float, default=MatrixSettings().drain_s)
    matrix.add_argument(
        "--recalibrate", action="store_true", help="measure capacities again, not from cache"
    )
    matrix.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run each cell this many times (arms in reverse order on every second run); "
        "the summary gives the median ratio and every run's",
    )
    matrix.add_argument("--log-dir", type=Path, help="keep each router's log here")
    matrix.add_argument(
        "--matrix-out", type=Path, default=Path("results/bench_routing_matrix.json")
    )
    args = parser.parse_args(argv)
    if args.matrix:
        return run_matrix_command(args)
    speeds = tuple(float(s) for s in args.speeds.split(","))
    presets = args.presets.split(",")
    sims = SimSpec(speeds=speeds, seed=args.seed)
    spec = workload(args, speeds, warmup=False)

    async def run_all(state_dir: str) -> dict[str, dict[str, Any]]:
        predictor = PredictorConfig(objective=args.objective, state_dir=state_dir)
        out: dict[str, dict[str, Any]] = {}
        if "predicted-latency" in presets and args.warmup_s > 0:
            print("warming up the predictor ...", file=sys.stderr)
            warm = workload(args, speeds, warmup=True)
            _, info = await run_preset("predicted-latency", warm, sims, predictor, args.seed)
            out["_warmup"] = {"info": info, "workload": warm.describe()}
        for preset in presets:
            print(f"running {preset} ...", file=sys.stderr)
            records, info = await run_preset(preset, spec, sims, predictor, args.seed)
            out[preset] = {"summary": summarize(records, spec, info["pods"]), "info": info}
        return out

    loop = new_event_loop()
    try:
        with tempfile.TemporaryDirectory() as state_dir:
            results = loop.run_until_complete(run_all(state_dir))
    finally:
        loop.close()
    warmup = results.pop("_warmup", None)
    pods = next(iter(results.values()))["info"]["pods"]
    print_table(results, pods)
    if "predicted-latency" in results:
        info = results["predicted-latency"]["info"]
        print(
            f"\npredicted-latency: {info['predicted_decisions']} decisions by prediction, "
            f"{info['fallback_decisions']} by the fallback; model v{info['model_version']}; "
            f"live TTFT MAPE {info['live_ttft_mape']:.3f}"
        )
    print(f"fleet: {sims.describe()}")
    print(f"workload: {spec.describe()}")
    if warmup is not None:
        print(f"warm-up (predicted-latency, state saved then restored): {warmup['workload']}")
    write_report(
        args.out,
        "bench_routing",
        args=vars(args) | {"out": str(args.out)},
        fleet=sims.describe(),
        workload=spec.describe(),
        warmup=warmup,
        results=results,
    )
    return 0


def run_matrix_command(args: argparse.Namespace) -> int:
    try:
        cells, arms, settings = matrix_from_args(args, split_list(args.scenarios))
    except ValueError as exc:
        print(f"bench_routing: {exc}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("bench_routing: --repeats must be at least 1", file=sys.stderr)
        return 2
    if any(a.is_peer for a in arms) and find_vllm_router() is None:
        print(
            f"vllm-router is not installed; its arms are skipped. To include them: "
            f"{VLLM_ROUTER_INSTALL}",
            file=sys.stderr,
        )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    loop = new_event_loop()
    try:
        runs = loop.run_until_complete(
            run_matrix(
                cells,
                arms,
                settings,
                log_dir=args.log_dir,
                progress=progress,
                repeats=args.repeats,
            )
        )
    finally:
        loop.close()
    labels = {a.name: a.label for a in arms}
    reports = [cell_report(run, settings) for run in runs]
    for report in reports:
        print_cell(report, labels)
    table = summary_table(reports)
    by_run = summary_runs(reports)
    print_summary(table, labels, runs=by_run)
    if any(a.is_peer for a in arms) and find_vllm_router() is None:
        print(f"\nvllm-router arms skipped: not installed. To include them: {VLLM_ROUTER_INSTALL}")
    print(
        f"\n{len(cells)} cells x {len(arms)} arms"
        + (f" x {args.repeats} runs" if args.repeats > 1 else "")
        + f" in {(time.monotonic() - started) / 60:.1f} min; "
        f"{settings.duration_s:g} s driven per arm (half at each load), drain up to "
        f"{settings.drain_s:g} s; slowdown at {settings.slowdown_s:g} s"
    )
    write_report(
        args.matrix_out,
        "bench_routing_matrix",
        args=vars(args) | {"out": str(args.out), "matrix_out": str(args.matrix_out)},
        settings=asdict(settings),
        arms={a.name: {"kind": a.kind, "setting": a.setting, "label": a.label} for a in arms},
        summary=table,
        summary_runs=by_run,
        cells=reports,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
