"""Benchmark: the gateway's event-loop lag while the latency predictor trains.

The gateway (``create_app``, ``predicted-latency`` preset) runs in this process in front of a
heterogeneous sim fleet (speeds 0.5, 1.0, 1.5, 2.0, real time), while the driver process
replays the Azure 2023 conversation trace at a steady ~60 % of the fleet's capacity
(``loadtest.fleet``). A background task on the gateway's loop sleeps 1 ms again and again and
records how much longer each sleep took than asked (the lag every request's relay and
scheduling would see at that moment). Three arms, each on freshly started sims, one after the
other:

- ``training``: the predictor trains every ``--retrain-interval-s`` (default 2 s, five times
  the production default's rate, so a short run holds many training runs);
- ``no-training``: the same preset and traffic, training never due (routing by the fallback);
- ``load-prefix``: no predictor at all.

It reports lag p50/p99/p99.9/max per arm, and for the training arm also during training runs
only (from the run's start to the model's installation) and outside them, the runs' count and
wall time. Target: p99 <= 5 ms with training.

    .venv/bin/python -m loadtest.bench_looplag [--seconds 40] [--retrain-interval-s 2]

Prints a table and writes ``results/bench_looplag.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from config import PredictorConfig
from gateway.cli import new_event_loop
from loadtest.fleet import (
    Phase,
    SimSpec,
    WorkloadSpec,
    latency_summary,
    run_driver,
    sim_fleet,
    start_gateway,
)
from loadtest.report import write_report

SPEEDS = (0.5, 1.0, 1.5, 2.0)
TARGET_P99_MS = 5.0
NEVER_S = 1e9


class LagProbe:
    """Sleeps ``interval_s`` in a loop on the running event loop and records the oversleep."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        """(monotonic time at wake-up, lag seconds)."""

    async def run(self) -> None:
        clock, interval = time.perf_counter, self.interval_s
        while True:
            started = clock()
            await asyncio.sleep(interval)
            now = clock()
            self.samples.append((time.monotonic(), now - started - interval))


def _percentiles(lags: list[float]) -> dict[str, float]:
    if not lags:
        return {"n": 0, "p50_ms": math.nan, "p99_ms": math.nan, "p999_ms": math.nan}
    ordered = sorted(lags)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {
        "n": len(ordered),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": ordered[-1] * 1000,
    }


async def run_arm(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    capacity = args.capacity_per_speed * sum(SPEEDS)
    spec = WorkloadSpec(
        trace="azure-conv",
        seed=args.seed,
        phases=(Phase("steady", args.seconds, round(args.load * capacity, 1)),),
    )
    preset = "load-prefix" if arm == "load-prefix" else "predicted-latency"
    predictor = PredictorConfig(
        objective="mean",
        retrain_interval_s=args.retrain_interval_s if arm == "training" else NEVER_S,
        min_samples=args.min_samples,
    )
    probe = LagProbe()
    training: list[tuple[float, float]] = []
    async with sim_fleet(SimSpec(speeds=SPEEDS, seed=args.seed)) as pods:
        gw = await start_gateway(pods, preset=preset, predictor=predictor, seed=args.seed)
        trainer = gw.gateway.trainer
        original: Callable[..., Awaitable[Any]] = trainer.worker.run

        async def timed_run(job: Any, *, timeout_s: float) -> Any:
            started = time.monotonic()
            try:
                return await original(job, timeout_s=timeout_s)
            finally:
                training.append((started, time.monotonic()))

        trainer.worker.run = timed_run  # type: ignore[method-assign]
        task = asyncio.create_task(probe.run())
        try:
            start_at = time.monotonic() + 1.0
            client = await run_driver(gw.url, spec, start_at=start_at)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stats = trainer.stats
            model = gw.gateway.predictor.model
            await gw.close()
    settle = start_at + args.settle_s
    lags = [(t, lag) for t, lag in probe.samples if settle <= t <= start_at + args.seconds]

    def in_training(t: float) -> bool:
        return any(a <= t <= b for a, b in training)

    return {
        "arm": arm,
        "preset": preset,
        "retrain_interval_s": predictor.retrain_interval_s if arm == "training" else None,
        "lag": _percentiles([lag for _, lag in lags]),
        "lag_during_training": _percentiles([lag for t, lag in lags if in_training(t)]),
        "lag_outside_training": _percentiles([lag for t, lag in lags if not in_training(t)]),
        "training_runs": len(training),
        "training_wall_s": [round(b - a, 3) for a, b in training],
        "trainer": {"runs": stats.runs, "accepted": stats.accepted, "failed": stats.failed},
        "model_version": None if model is None else model.version,
        "client": latency_summary(client, args.seconds),
        "workload": spec.describe(),
    }


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gateway event-loop lag while training.")
    parser.add_argument("--arms", default="training,no-training,load-prefix")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--settle-s", type=float, default=5.0, help="ignored at the start")
    parser.add_argument("--retrain-interval-s", type=float, default=2.0)
    parser.add_argument("--min-samples", type=int, default=100)
    parser.add_argument("--load", type=float, default=0.6, help="share of fleet capacity")
    parser.add_argument("--capacity-per-speed", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench_looplag.json"))
    args = parser.parse_args(argv)

    async def arms() -> list[dict[str, Any]]:
        out = []
        for arm in args.arms.split(","):
            print(f"running arm {arm} ...", file=sys.stderr)
            out.append(await run_arm(arm, args))
        return out

    loop = new_event_loop()
    try:
        results = loop.run_until_complete(arms())
    finally:
        loop.close()

    print("\nevent-loop lag of the gateway process (1 ms sleeps; oversleep in ms)")
    print(
        f"{'arm':<13}{'window':<18}{'samples':>8}{'p50':>8}{'p99':>8}{'p99.9':>8}{'max':>8}"
        f"{'runs':>6}{'req/s':>7}"
    )
    for res in results:
        rows = [("all", res["lag"])]
        if res["arm"] == "training":
            rows += [
                ("during training", res["lag_during_training"]),
                ("outside training", res["lag_outside_training"]),
            ]
        for window, lag in rows:
            print(
                f"{res['arm']:<13}{window:<18}{lag['n']:>8}{_ms(lag['p50_ms']):>8}"
                f"{_ms(lag['p99_ms']):>8}{_ms(lag['p999_ms']):>8}"
                f"{_ms(lag.get('max_ms', math.nan)):>8}"
                f"{res['training_runs']:>6}{res['client']['throughput_rps']:>7.1f}"
            )
    base = next((r for r in results if r["arm"] == "no-training"), None)
    for res in results:
        if res["arm"] == "training":
            p99 = res["lag"]["p99_ms"]
            verdict = "ok" if p99 <= TARGET_P99_MS else "MISS"
            ratio = f", {p99 / base['lag']['p99_ms']:.2f}x no-training" if base else ""
            walls = res["training_wall_s"]
            print(
                f"\ntraining arm: p99 {p99:.2f} ms (target <= {TARGET_P99_MS:g} ms: {verdict}"
                f"{ratio}); {res['training_runs']} training runs, wall "
                f"{min(walls, default=0):.2f}-{max(walls, default=0):.2f} s each"
            )
    print(f"workload: {results[0]['workload']}")
    write_report(
        args.out, "bench_looplag", args=vars(args) | {"out": str(args.out)}, results=results
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
