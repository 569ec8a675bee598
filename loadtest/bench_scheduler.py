"""Benchmark: the cost of scheduling one request with the ``load-prefix`` preset.

Builds the scheduler from the preset exactly as the gateway does and feeds it a realistic prompt
mix (8 shared 1k-token system prefixes plus random suffixes, 1.5k-2.5k tokens in all) on a
simulated pool whose load follows the scheduler's own decisions (each request runs on its pod for
a while; pods report vLLM-like metrics with block size 16 and 27k blocks, a few scraped per
request), so the prefix index fills up, evicts and spreads over the pods as in production. After
a warm-up it times ``schedule`` + ``pre_request`` per request for several pool sizes. Candidate
assembly (the endpoint store's job) and the gateway's timer are outside the timed region; prompt
hashing, prefix-index lookup and update, scorers, picker and the framework's own work are
inside, and so is the garbage collector's share.

    .venv/bin/python -m loadtest.bench_scheduler [--requests 5000] [--pods 4,16,64,256]

Prints a table, writes ``results/bench_scheduler.json`` and compares each pool size with the
target of 50 us + 1 us per pod; with ``--check`` it exits 1 if a p50 misses the target.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import random
import statistics
import time
from array import array
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config import load_preset
from loadtest.report import write_report
from scheduler.builder import build_scheduler
from scheduler.datalayer.prefix_index import block_hashes, hash_seed
from scheduler.framework.plugins import Plugin, PluginHandle
from scheduler.framework.types import (
    Api,
    Candidate,
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    InflightLoad,
)
from scheduler.plugins import builtin_registry
from scheduler.profile import NullTimer, PluginTimer
from scheduler.scheduler import Scheduler

VOCAB = 100_000
TARGET_BASE_US = 50.0
TARGET_PER_POD_US = 1.0


@dataclass(frozen=True, slots=True)
class PromptMix:
    """Prompts of a system prefix (one of ``prefixes``) + a random suffix, ~2k tokens in all."""

    prefixes: list[list[int]]
    noise: list[int]
    """Random tokens; suffixes are slices at random offsets (cheaper than drawing each token)."""
    min_len: int = 1536
    max_len: int = 2560

    @classmethod
    def build(cls, rng: random.Random, *, count: int = 8, prefix_len: int = 1024) -> PromptMix:
        return cls(
            prefixes=[[rng.randrange(VOCAB) for _ in range(prefix_len)] for _ in range(count)],
            noise=[rng.randrange(VOCAB) for _ in range(1 << 20)],
        )

    def prompt(self, rng: random.Random) -> array[int]:
        """Token ids as the gateway hands them to the scheduler: a uint32 array."""
        prefix = rng.choice(self.prefixes)
        length = rng.randint(self.min_len, self.max_len) - len(prefix)
        start = rng.randrange(len(self.noise) - length)
        return array("I", prefix + self.noise[start : start + length])


class BreakdownTimer:
    """Collects every plugin call's duration (for ``--breakdown``; it adds overhead itself)."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def observe(self, extension_point: str, plugin: Plugin, seconds: float) -> None:
        self.seconds[f"{extension_point} {plugin.name}"].append(seconds)


def make_scheduler(seed: int, timer: PluginTimer) -> Scheduler:
    handle = PluginHandle(clock=time.perf_counter, rng=random.Random(seed))
    return build_scheduler(
        load_preset("load-prefix"), registry=builtin_registry(), handle=handle, timer=timer
    )


BLOCK_SIZE = 16
NUM_GPU_BLOCKS = 27_000
MAX_RUNNING = 32


@dataclass(slots=True)
class SimulatedPod:
    """Load that follows the scheduler's own decisions, so affinity and balance both play."""

    endpoint: Endpoint
    active: int = 0
    tokens: int = 0
    metrics: EndpointMetrics | None = None

    def scrape(self, now: float) -> EndpointMetrics:
        return EndpointMetrics(
            waiting=max(0, self.active - MAX_RUNNING),
            running=min(self.active, MAX_RUNNING),
            kv_usage=min(1.0, self.tokens / (NUM_GPU_BLOCKS * BLOCK_SIZE)),
            scraped_at=now,
            block_size=BLOCK_SIZE,
            num_gpu_blocks=NUM_GPU_BLOCKS,
        )


def run(
    pods: int, *, requests: int, warmup: int, seed: int, breakdown: bool = False
) -> dict[str, float]:
    """The load-prefix preset's cost per request on a simulated pool of ``pods``."""
    timer = BreakdownTimer() if breakdown else NullTimer()
    row = time_scheduler(
        make_scheduler(seed, timer), timer, pods, requests=requests, warmup=warmup, seed=seed
    )
    row["target_us"] = TARGET_BASE_US + TARGET_PER_POD_US * pods
    return row


def time_scheduler(
    scheduler: Scheduler,
    timer: PluginTimer,
    pods: int,
    *,
    requests: int,
    warmup: int,
    seed: int,
    on_end: Callable[[InferenceRequest, str], None] | None = None,
) -> dict[str, float]:
    """Time ``schedule`` + ``pre_request`` per request on a pool whose load follows the picks.

    ``on_end(request, endpoint)`` is called when a request finishes (not timed), for schedulers
    that keep per-request state until then.
    """
    rng = random.Random(seed)
    mix = PromptMix.build(rng)
    pool = [
        SimulatedPod(Endpoint(name=f"pod-{i}", url=f"http://10.0.{i // 250}.{i % 250}:8000"))
        for i in range(pods)
    ]
    for pod in pool:
        pod.metrics = pod.scrape(0.0)
    # (request number it ends at, pod, tokens, request)
    finishing: list[tuple[int, int, int, InferenceRequest]] = []
    samples: list[float] = []
    pre_request: list[float] = []
    # Warm up until requests finish as fast as they start (each lasts 8-24 requests per pod).
    warmup = max(warmup, 24 * pods)
    for n in range(warmup + requests):
        # Not timed: requests finish, a few endpoints get scraped, the store builds candidates.
        while finishing and finishing[0][0] <= n:
            _, i, tokens, done = heapq.heappop(finishing)
            pool[i].active -= 1
            pool[i].tokens -= tokens
            if on_end is not None:
                on_end(done, pool[i].endpoint.name)
        for _ in range(max(1, pods // 8)):
            pod = pool[rng.randrange(pods)]
            pod.metrics = pod.scrape(float(n))
        candidates = [Candidate(p.endpoint, p.metrics, InflightLoad(p.active, 0)) for p in pool]
        prompt = mix.prompt(rng)
        request = InferenceRequest(
            request_id=f"r{n}",
            model="bench-model",
            api=Api.CHAT,
            prompt_tokens=prompt,
            stream=True,
        )
        if n == warmup and isinstance(timer, BreakdownTimer):
            timer.seconds.clear()
        started = time.perf_counter_ns()
        result = scheduler.schedule(request, candidates)
        scheduled = time.perf_counter_ns()
        scheduler.pre_request(request, result)
        elapsed = time.perf_counter_ns() - started
        if n >= warmup:
            samples.append(elapsed / 1000)
            pre_request.append((time.perf_counter_ns() - scheduled) / 1000)
        # The request runs for the next 8-24 requests per pod: ~16 running per pod on average.
        i = int(result.target.name.removeprefix("pod-"))
        tokens = len(prompt) + rng.randint(100, 800)
        pool[i].active += 1
        pool[i].tokens += tokens
        heapq.heappush(finishing, (n + rng.randint(8 * pods, 24 * pods), i, tokens, request))
    samples.sort()
    row: dict[str, float] = {
        "pods": pods,
        "requests": requests,
        "p50_us": samples[len(samples) // 2],
        "p99_us": samples[int(len(samples) * 0.99)],
        "mean_us": statistics.fmean(samples),
    }
    if isinstance(timer, BreakdownTimer):
        for key, values in timer.seconds.items():
            row[f"p50_us {key}"] = statistics.median(values) * 1e6
        row["p50_us pre_request (all hooks)"] = statistics.median(pre_request)
    return row


def hashing_cost_us(tokens: int, block_size: int, *, repeat: int = 200) -> float:
    rng = random.Random(1)
    prompt = [rng.randrange(VOCAB) for _ in range(tokens)]
    seed = hash_seed("bench-model", block_size)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        block_hashes(prompt, block_size=block_size, seed=seed, max_blocks=2048)
        best = min(best, (time.perf_counter_ns() - started) / 1000)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Cost of scheduling one request with the load-prefix preset."
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--pods", default="4,16,64,256")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/bench_scheduler.json"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a p50 misses the target")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print the median time of each plugin call (timed runs get slower)",
    )
    args = parser.parse_args(argv)

    gc.collect()
    rows = [
        run(int(p), requests=args.requests, warmup=args.warmup, seed=args.seed)
        for p in args.pods.split(",")
    ]
    breakdowns = (
        [
            run(int(p), requests=args.requests, warmup=args.warmup, seed=args.seed, breakdown=True)
            for p in args.pods.split(",")
        ]
        if args.breakdown
        else []
    )
    hashing = {
        f"{tokens}_tokens_block_{bs}_us": hashing_cost_us(tokens, bs)
        for tokens in (2048, 8192)
        for bs in (16, 64)
    }

    print("load-prefix preset: schedule + pre_request per request (prompts ~2k tokens)")
    print(f"{'pods':>6} {'p50 us':>9} {'p99 us':>9} {'mean us':>9} {'target us':>10}  verdict")
    ok = True
    for row in rows:
        passed = row["p50_us"] <= row["target_us"]
        ok = ok and passed
        print(
            f"{row['pods']:>6} {row['p50_us']:>9.1f} {row['p99_us']:>9.1f} "
            f"{row['mean_us']:>9.1f} {row['target_us']:>10.0f}  {'ok' if passed else 'MISS'}"
        )
    for row in breakdowns:
        print(f"breakdown, {row['pods']} pods (p50 us per call):")
        for key, value in row.items():
            if key.startswith("p50_us "):
                print(f"  {key.removeprefix('p50_us '):<45} {value:8.1f}")
    print("prompt hashing alone (best of 200):")
    for name, value in hashing.items():
        print(f"  {name}: {value:.1f}")

    write_report(
        args.out,
        "bench_scheduler",
        preset="load-prefix",
        rows=rows,
        breakdowns=breakdowns,
        hashing=hashing,
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
