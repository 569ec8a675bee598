"""Benchmark: can one sim process, on one core, keep its modelled timing under 300 streams?

Starts ``python -m loadtest.sim`` in a subprocess pinned to one CPU (``sched_setaffinity``),
pins this client process to the other CPUs, and drives ``--concurrency`` closed-loop streaming
completions (each worker sends its next request when the previous stream ends) while scraping
``/metrics`` every 50 ms like the gateway does. After a warm-up it resets the sim's step-timing
log and measures for ``--duration`` seconds:

- step timing: actual/modelled time between step completions (p50/p99) and how late steps
  released their tokens against the modelled timeline (p50/p99/max ms), plus timeline resyncs
  (the sim fell > 50 ms behind: it became the bottleneck),
- sim CPU: process CPU seconds per wall second (1.0 = the core is saturated),
- requests/s and tokens/s (from the sim's counters and from the client's event count),
- client-side TTFT and the engine's mean running/waiting counts.

Prints a table and writes JSON under ``results/``. Run::

    .venv/bin/python -m loadtest.bench_sim                  # 300 streams, real time
    .venv/bin/python -m loadtest.bench_sim --time-scale 4   # 4x the token rate
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtest.sim.stats import quantile

RESULTS_DIR = Path("results")
# fmt: off
VOCABULARY: tuple[str, ...] = (
    "alpha", "beta", "gamma", "delta", "river", "mountain", "cloud", "signal", "vector",
    "packet", "kernel", "queue", "token", "cache", "block", "latency", "router", "model",
    "server", "request", "stream", "batch", "prefill", "decode", "orange", "harbor", "window",
    "engine", "garden", "silver", "planet", "forest", "button", "letter", "number", "circle",
)
# fmt: on


@dataclass(slots=True)
class ClientStats:
    """What the load generator saw inside the measurement window."""

    measuring: bool = False
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    ttft_s: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)


def make_prompts(
    count: int,
    *,
    seed: int,
    num_prefixes: int,
    prefix_words: tuple[int, int],
    question_words: tuple[int, int],
) -> list[str]:
    """Prompts made of a shared "system prompt" (one of ``num_prefixes``) plus a unique
    question, so the prefix cache sees realistic partial reuse (one word ~ one token)."""
    rng = random.Random(seed)
    prefixes = [
        " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(*prefix_words)))
        for _ in range(num_prefixes)
    ]
    return [
        rng.choice(prefixes)
        + f" question {i}: "
        + " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(*question_words)))
        for i in range(count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(pid: int, cpus: set[int]) -> bool:
    """Pin ``pid`` (0 = this process) to ``cpus`` if the platform allows it."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


async def worker(
    session: aiohttp.ClientSession,
    prompts: Sequence[str],
    max_tokens: int,
    stats: ClientStats,
    stop: asyncio.Event,
    rng: random.Random,
) -> None:
    while not stop.is_set():
        body = {
            "model": "sim-llm",
            "prompt": rng.choice(prompts),
            "max_tokens": max_tokens,
            "stream": True,
        }
        started = time.perf_counter()
        first_token_s: float | None = None
        try:
            async with session.post("/v1/completions", json=body) as response:
                if response.status != 200:
                    stats.errors += 1
                    await response.read()
                    continue
                async for chunk in response.content.iter_any():
                    count = chunk.count(b"data: {")
                    if count and first_token_s is None:
                        first_token_s = time.perf_counter() - started
                    if stats.measuring:
                        # Counted on arrival: long streams span the window's edges.
                        stats.tokens += count
        except (aiohttp.ClientError, TimeoutError):
            stats.errors += 1
            continue
        if stats.measuring:
            stats.requests += 1
            if first_token_s is not None:
                stats.ttft_s.append(first_token_s)


async def scraper(
    session: aiohttp.ClientSession, stats: ClientStats, stop: asyncio.Event, interval_s: float
) -> None:
    """Scrape /metrics like the gateway (every 50 ms) and sample the queue gauges."""
    while not stop.is_set():
        async with session.get("/metrics") as response:
            text = await response.text()
        if stats.measuring:
            for line in text.splitlines():
                if line.startswith("vllm:num_requests_running{"):
                    stats.running.append(float(line.rsplit(" ", 1)[1]))
                elif line.startswith("vllm:num_requests_waiting{"):
                    stats.waiting.append(float(line.rsplit(" ", 1)[1]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def sim_stats(session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get("/sim/stats") as response:
        result: dict[str, Any] = orjson.loads(await response.read())
        return result


async def wait_healthy(session: aiohttp.ClientSession, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"sim exited with code {process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get("/health") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("sim did not become healthy")


async def drive(
    args: argparse.Namespace, base_url: str, process: subprocess.Popen[bytes]
) -> dict[str, Any]:
    prompts = make_prompts(
        2000,
        seed=args.seed,
        num_prefixes=32,
        prefix_words=(args.prefix_words // 2, args.prefix_words * 3 // 2),
        question_words=(args.question_words // 2, args.question_words * 3 // 2),
    )
    stats = ClientStats()
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=args.concurrency + 8)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        await wait_healthy(session, process)
        tasks = [
            asyncio.create_task(
                worker(session, prompts, args.max_tokens, stats, stop, random.Random(i))
            )
            for i in range(args.concurrency)
        ]
        tasks.append(asyncio.create_task(scraper(session, stats, stop, args.scrape_interval)))
        await asyncio.sleep(args.warmup)
        async with session.post("/sim/stats/reset"):
            pass
        before = await sim_stats(session)
        started = time.perf_counter()
        stats.measuring = True
        await asyncio.sleep(args.duration)
        stats.measuring = False
        wall_s = time.perf_counter() - started
        after = await sim_stats(session)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finished_before = sum(before["finished"][r] for r in ("stop", "length"))
    finished_after = sum(after["finished"][r] for r in ("stop", "length"))
    ttft = sorted(stats.ttft_s)
    timing = after["step_timing"]
    return {
        "wall_s": wall_s,
        "sim_cpu_fraction": (after["process_cpu_s"] - before["process_cpu_s"]) / wall_s,
        "requests_per_s": (finished_after - finished_before) / wall_s,
        "tokens_per_s": (after["generation_tokens"] - before["generation_tokens"]) / wall_s,
        "prompt_tokens_per_s": (after["prompt_tokens"] - before["prompt_tokens"]) / wall_s,
        "client_requests_per_s": stats.requests / wall_s,
        "client_tokens_per_s": stats.tokens / wall_s,
        "client_errors": stats.errors,
        "simulated_per_wall": (after["simulated_s"] - before["simulated_s"]) / wall_s,
        "steps_per_s": timing["steps"] / wall_s,
        "step_ratio_p50": timing["ratio_p50"],
        "step_ratio_p99": timing["ratio_p99"],
        "step_late_ms_p50": timing["late_ms_p50"],
        "step_late_ms_p99": timing["late_ms_p99"],
        "step_late_ms_max": timing["late_ms_max"],
        "timeline_resyncs": timing["resyncs"],
        "preemptions": after["preemptions"] - before["preemptions"],
        "mean_running": sum(stats.running) / max(1, len(stats.running)),
        "mean_waiting": sum(stats.waiting) / max(1, len(stats.waiting)),
        "client_ttft_p50_s": quantile(ttft, 0.5),
        "client_ttft_p99_s": quantile(ttft, 0.99),
    }


def print_table(results: dict[str, Any]) -> None:
    width = max(len(key) for key in results)
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown:>12}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--concurrency", type=int, default=300, help="concurrent streams")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--time-scale", type=float, default=1.0, help="sim --time-scale")
    parser.add_argument("--max-tokens", type=int, default=1024, help="max_tokens per request")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="sim --max-num-seqs")
    parser.add_argument(
        "--kv-blocks",
        type=int,
        default=16384,
        help="sim --kv-blocks (default: room for the whole batch, to load the hot path fully)",
    )
    parser.add_argument("--prefix-words", type=int, default=200, help="mean shared-prefix words")
    parser.add_argument("--question-words", type=int, default=150, help="mean unique words")
    parser.add_argument("--sim-cpu", type=int, default=0, help="CPU to pin the sim to")
    parser.add_argument("--scrape-interval", type=float, default=0.05, help="/metrics period (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default results/)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    port = free_port()
    command = [
        sys.executable, "-m", "loadtest.sim", "--port", str(port),
        "--time-scale", str(args.time_scale), "--max-num-seqs", str(args.max_num_seqs),
        "--kv-blocks", str(args.kv_blocks),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    all_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    sim_pinned = pin(process.pid, {args.sim_cpu})
    client_pinned = pin(0, all_cpus - {args.sim_cpu})
    try:
        results = asyncio.run(drive(args, f"http://127.0.0.1:{port}", process))
    finally:
        process.terminate()
        process.wait(timeout=10)
    report = {
        "command": " ".join(["python -m loadtest.bench_sim", *(argv or sys.argv[1:])]),
        "when_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": len(all_cpus),
        "sim_pinned_to_cpu": args.sim_cpu if sim_pinned else None,
        "client_pinned": client_pinned,
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "results": results,
    }
    print_table(results)
    output = args.output or RESULTS_DIR / (
        f"bench_sim-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-x{args.time_scale:g}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
