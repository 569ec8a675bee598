"""Benchmark: the cost of the latency prediction in one routing decision, and of the decision.

Two measurements, each for several pool sizes, after a warm-up, one sample per request
(``time.perf_counter_ns``; p50 and p99 in microseconds, the garbage collector's share included):

1. **prediction**: what the ``predicted-latency-producer`` adds per streamed request: the feature
   rows of all candidates (``LatencyPredictor.feature_rows``) plus ``LatencyPredictor.predict``
   (TTFT and TPOT, the targets a streamed request needs, for every candidate in one batched
   call per target; the e2e model exists and is skipped, as in the gateway). The predictor holds
   a model trained by the real training code (``train_generation``) at the configured size
   (``PredictorConfig`` defaults: 200 trees of depth 6 per target) on synthetic samples shaped
   like the simulator's latencies, with a learned offset for every pod. Candidates carry
   vLLM-like metrics, in-flight load and a prefix match, varied from request to request.
2. **decision**: the whole ``predicted-latency`` scheduling decision (prefix producer, latency
   producer, affinity filter, latency scorer, weighted-random picker, then ``pre_request``),
   timed exactly as ``loadtest/bench_scheduler.py`` times ``load-prefix`` (its simulated pool
   and ~2k-token prompt mix), with ``load-prefix`` measured in the same run for the ratio.

    .venv/bin/python -m loadtest.bench_prediction_cost [--pods 1,4,16,64,256] [--requests 4000]

Target: prediction p50 <= 100 us at 16 pods. Prints tables, writes
``results/bench_prediction_cost.json``; ``--check`` exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from config import PredictorConfig, load_preset
from gateway.trainer import gbdt_params
from loadtest.bench_scheduler import BreakdownTimer, time_scheduler
from loadtest.report import write_report
from scheduler.builder import build_scheduler
from scheduler.framework.attributes import PREFIX_MATCH, PrefixMatch
from scheduler.framework.plugins import Outcome, PluginHandle, RequestRecord
from scheduler.framework.types import (
    Api,
    Candidate,
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    InflightLoad,
    StepTiming,
)
from scheduler.plugins import builtin_registry
from scheduler.predictor.features import N_FEATURES, UNKNOWN
from scheduler.predictor.model import PredictorModel
from scheduler.predictor.runtime import LATENCY_PREDICTOR, LatencyPredictor
from scheduler.predictor.training import TrainingJob, train_generation
from scheduler.predictor.window import WindowArrays
from scheduler.profile import NullTimer, PluginTimer

TARGET_US = 100.0
TARGET_PODS = 16
MAX_PODS = 256


def pod_name(i: int) -> str:
    return f"pod-{i}"


# -- a realistic model ------------------------------------------------------------------------
def synthetic_window(rng: np.random.Generator, n: int, pods: int) -> dict[str, WindowArrays]:
    """Samples shaped like the simulator's latencies: prefill work and batch size over speed."""
    speed = rng.choice([0.5, 1.0, 1.5, 2.0], size=pods)
    endpoint = rng.integers(0, pods, size=n).astype(np.int32)
    running = rng.integers(0, 64, size=n).astype(float)
    waiting = np.where(rng.random(n) < 0.8, 0.0, rng.integers(1, 20, size=n).astype(float))
    kv = np.clip(running / 64 + rng.normal(0, 0.05, n), 0, 1)
    inflight = running + waiting
    inflight_prefill = np.where(rng.random(n) < 0.5, 0.0, rng.lognormal(7, 1, n))
    prompt = np.round(rng.lognormal(6.9, 0.8, n))
    prefix = np.where(rng.random(n) < 0.7, 0.0, rng.random(n))
    uncached = np.round(prompt * (1 - prefix))
    max_tokens = rng.integers(16, 1024, size=n).astype(float)
    prefill_wait = np.where(inflight_prefill > 0, rng.exponential(0.1, n), 0.0)
    # Engine steps: observable while something decodes; a new request waits out the one in
    # progress.
    step_interval = np.where(running > 0, (0.011 + 3e-4 * running) / speed[endpoint], UNKNOWN)
    step_phase = np.where(running > 0, rng.random(n) * np.maximum(step_interval, 0.0), UNKNOWN)
    step_remaining = np.maximum(step_interval - step_phase, 0.0)
    X = np.column_stack(
        [
            kv,
            waiting,
            running,
            inflight,
            inflight_prefill,
            prompt,
            prefix,
            uncached,
            max_tokens,
            prefill_wait,
            step_phase,
            step_interval,
        ]
    )
    assert X.shape[1] == N_FEATURES
    s = speed[endpoint]
    noise = rng.lognormal(0, 0.1, n)
    remaining = np.maximum(inflight_prefill - 10_000 * prefill_wait, 0.0)
    ttft = (0.011 + 8e-5 * (remaining + uncached) + 3e-4 * running) / s * noise + step_remaining
    tpot = (0.011 + 1e-4 * running + 2e-7 * running * prompt) / s * noise
    e2e = ttft + tpot * max_tokens
    names = tuple(pod_name(i) for i in range(pods))
    return {
        target: WindowArrays(X=X, y=y, endpoint=endpoint, endpoints=names)
        for target, y in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e))
    }


def trained_model(cfg: PredictorConfig, seed: int, samples: int) -> PredictorModel:
    rng = np.random.default_rng(seed)
    train = synthetic_window(rng, samples, MAX_PODS)
    test = synthetic_window(rng, 500, MAX_PODS)
    outcome = train_generation(
        TrainingJob(
            version=1,
            train=train,
            test=test,
            params=gbdt_params(cfg),
            min_samples=cfg.min_samples,
            shapes={},
            previous=None,
            snapshot_at=0.0,
            seed=seed,
        )
    )
    if outcome.model is None:
        raise RuntimeError("training produced no model")
    # Timing needs a ready predictor whatever the synthetic ranking says.
    return replace(outcome.model, beats_heuristic=True)


def make_predictor(model: PredictorModel, seed: int, *, awaiting: int = 0) -> LatencyPredictor:
    """A ready predictor; the first ``awaiting`` pods each have a streamed request still
    waiting for its first token, so ``prefill_wait`` is computed as under load."""
    predictor = LatencyPredictor(clock=time.perf_counter, rng=random.Random(seed))
    predictor.install(model)
    row = np.zeros(N_FEATURES)
    for i in range(awaiting):
        predictor.dispatched(
            f"ahead-{i}", row, pod_name(i), model="m", stream=True, prediction=None
        )
    return predictor


# -- 1. the prediction ------------------------------------------------------------------------
def random_candidates(rng: random.Random, pods: int) -> list[Candidate]:
    out = []
    for i in range(pods):
        running = rng.randint(0, 64)
        waiting = 0 if rng.random() < 0.8 else rng.randint(1, 20)
        c = Candidate(
            Endpoint(name=pod_name(i), url=f"http://10.0.{i // 250}.{i % 250}:8000"),
            EndpointMetrics(
                waiting=waiting,
                running=running,
                kv_usage=min(1.0, running / 64),
                scraped_at=0.0,
                block_size=16,
                num_gpu_blocks=27_000,
            ),
            InflightLoad(running + waiting, rng.choice((0, 0, rng.randint(100, 8000)))),
            # Steps are timed while something decodes (as the gateway sees them).
            StepTiming(time.perf_counter() - rng.random() * 0.02, 0.011 + 3e-4 * running)
            if running
            else None,
        )
        c.attributes.put(PREFIX_MATCH, PrefixMatch(rng.choice((0, 0, 0, 16, 32)), 32, 64))
        out.append(c)
    return out


def time_prediction(
    predictor: LatencyPredictor, pods: int, *, requests: int, warmup: int, seed: int
) -> dict[str, float]:
    rng = random.Random(seed)
    pools = [random_candidates(rng, pods) for _ in range(32)]
    prompts = [rng.randint(100, 4000) for _ in range(64)]
    total: list[float] = []
    rows_only: list[float] = []
    for n in range(warmup + requests):
        candidates = pools[n % len(pools)]
        request = InferenceRequest(
            request_id=f"r{n}",
            model="bench-model",
            api=Api.COMPLETIONS,
            prompt_tokens=range(prompts[n % len(prompts)]),
            stream=True,
            max_tokens=rng.randint(16, 1024),
        )
        started = time.perf_counter_ns()
        rows = predictor.feature_rows(request, candidates)
        built = time.perf_counter_ns()
        predictions = predictor.predict(rows, candidates, stream=request.stream)
        ended = time.perf_counter_ns()
        if predictions is None:
            raise RuntimeError("the predictor fell back; the timing would be meaningless")
        if n >= warmup:
            total.append((ended - started) / 1000)
            rows_only.append((built - started) / 1000)
    total.sort()
    rows_only.sort()
    return {
        "pods": pods,
        "requests": requests,
        "p50_us": total[len(total) // 2],
        "p99_us": total[int(len(total) * 0.99)],
        "mean_us": statistics.fmean(total),
        "feature_rows_p50_us": rows_only[len(rows_only) // 2],
        "predict_p50_us": total[len(total) // 2] - rows_only[len(rows_only) // 2],
    }


# -- 2. the whole decision --------------------------------------------------------------------
def make_scheduler(preset: str, predictor: LatencyPredictor, seed: int, timer: PluginTimer) -> Any:
    handle = PluginHandle(clock=time.perf_counter, rng=random.Random(seed))
    handle.services.put(LATENCY_PREDICTOR, predictor)
    return build_scheduler(
        load_preset(preset), registry=builtin_registry(), handle=handle, timer=timer
    )


def time_decision(
    preset: str,
    predictor: LatencyPredictor,
    pods: int,
    *,
    requests: int,
    warmup: int,
    seed: int,
    breakdown: bool = False,
) -> dict[str, float]:
    """``bench_scheduler``'s timing with a preset argument and requests that end (so the
    predictor's per-request state is released as in the gateway)."""
    timer = BreakdownTimer() if breakdown else NullTimer()
    scheduler = make_scheduler(preset, predictor, seed, timer)
    return time_scheduler(
        scheduler,
        timer,
        pods,
        requests=requests,
        warmup=warmup,
        seed=seed,
        on_end=lambda request, endpoint: scheduler.on_end(request, _record(request, endpoint)),
    )


def _record(request: InferenceRequest, endpoint: str) -> RequestRecord:
    # Not a success: the end releases the request's state without adding a training sample.
    return RequestRecord(
        request_id=request.request_id,
        model=request.model,
        endpoint=endpoint,
        stream=True,
        outcome=Outcome.CLIENT_DISCONNECTED,
        status=200,
        prompt_tokens=request.prompt_len,
        dispatched_at=0.0,
        ended_at=0.0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cost of latency prediction per routing decision.")
    parser.add_argument("--pods", default="1,4,16,64,256")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--decision-requests", type=int, default=3000)
    parser.add_argument("--train-samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--breakdown", action="store_true", help="per-plugin medians too")
    parser.add_argument("--out", type=Path, default=Path("results/bench_prediction_cost.json"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)
    pod_counts = [int(p) for p in args.pods.split(",")]
    cfg = PredictorConfig()

    started = time.perf_counter()
    model = trained_model(cfg, args.seed, args.train_samples)
    train_s = time.perf_counter() - started
    gc.collect()
    prediction = [
        time_prediction(
            make_predictor(model, args.seed, awaiting=(pods + 1) // 2),
            pods,
            requests=args.requests,
            warmup=args.warmup,
            seed=args.seed,
        )
        for pods in pod_counts
    ]
    decisions: list[dict[str, Any]] = []
    for pods in pod_counts:
        row: dict[str, Any] = {"pods": pods}
        for preset in ("predicted-latency", "load-prefix"):
            timed = time_decision(
                preset,
                make_predictor(model, args.seed),
                pods,
                requests=args.decision_requests,
                warmup=500,
                seed=args.seed,
                breakdown=args.breakdown,
            )
            row[preset] = timed
        decisions.append(row)

    ttft = model.ttft
    size = "-" if ttft is None else f"{ttft.gbdt.n_trees} trees x depth {ttft.gbdt.depth}"
    print(
        f"model: ttft/tpot/e2e, {size} each, trained on {args.train_samples} synthetic samples "
        f"in {train_s:.1f} s; {MAX_PODS} pods with offsets"
    )
    print("\nprediction per streamed request: feature rows + batched TTFT and TPOT (us)")
    print(f"{'pods':>6}{'p50':>9}{'p99':>9}{'mean':>9}{'rows p50':>10}{'predict p50':>13}  target")
    ok = True
    for r in prediction:
        verdict = ""
        if r["pods"] == TARGET_PODS:
            passed = r["p50_us"] <= TARGET_US
            ok = ok and passed
            verdict = f"<= {TARGET_US:.0f}: {'ok' if passed else 'MISS'}"
        print(
            f"{r['pods']:>6}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}{r['mean_us']:>9.1f}"
            f"{r['feature_rows_p50_us']:>10.1f}{r['predict_p50_us']:>13.1f}  {verdict}"
        )
    print("\nwhole decision: schedule + pre_request, bench_scheduler's pool and prompts (us)")
    print(
        f"{'pods':>6}{'predicted p50':>15}{'p99':>9}{'load-prefix p50':>17}{'p99':>9}"
        f"{'ratio p50':>11}"
    )
    for d in decisions:
        a, b = d["predicted-latency"], d["load-prefix"]
        print(
            f"{d['pods']:>6}{a['p50_us']:>15.1f}{a['p99_us']:>9.1f}{b['p50_us']:>17.1f}"
            f"{b['p99_us']:>9.1f}{a['p50_us'] / b['p50_us']:>11.2f}"
        )
    if args.breakdown:
        for d in decisions:
            print(f"breakdown, {d['pods']} pods, predicted-latency (p50 us per call):")
            for key, value in d["predicted-latency"].items():
                if key.startswith("p50_us "):
                    print(f"  {key.removeprefix('p50_us '):<45} {value:8.1f}")

    write_report(
        args.out,
        "bench_prediction_cost",
        numpy=np.__version__,
        model={"size": size, "train_samples": args.train_samples, "train_s": train_s},
        prediction=prediction,
        decision=decisions,
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
