"""Gateway overhead: what slogate adds to TTFT and e2e, and the rate one gateway process passes.

A/B interleaved in one run against a backend that answers instantly (``loadtest.instant_backend``,
its own process), so the gateway's own cost is what is measured:

    direct:  client -> backend
    gateway: client -> slogate (its own process) -> backend
    floor:   client -> loadtest.floor_proxy (the cheapest aiohttp relay) -> backend

The floor arm shows what aiohttp itself costs, so slogate's own share is the difference.

For each concurrency level, short rounds alternate direct / gateway several times; latencies are
pooled per arm, throughput is the mean over rounds. Every request is a streaming chat completion
of ``--tokens`` tokens. Run::

    .venv/bin/python -m loadtest.bench_overhead            # defaults: 1, 50, 200 streams
    .venv/bin/python -m loadtest.bench_overhead --rounds 5 --round-seconds 4 --preset round-robin
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from gateway.streaming import SseScanner
from loadtest.client import percentile


@dataclass
class Arm:
    name: str
    url: str
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    token_rates: list[float] = field(default_factory=list)
    errors: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready_post(url: str, timeout_s: float = 30.0) -> None:
    body = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json=body, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


async def one_round(
    session: aiohttp.ClientSession,
    arm: Arm,
    body: bytes,
    concurrency: int,
    seconds: float,
    record: bool,
) -> None:
    deadline = time.perf_counter() + seconds
    done = 0
    tokens = 0

    async def worker() -> None:
        nonlocal done, tokens
        while time.perf_counter() < deadline:
            scanner = SseScanner()
            started = time.perf_counter()
            try:
                async with session.post(
                    arm.url, data=body, headers={"content-type": "application/json"}
                ) as resp:
                    async for chunk in resp.content.iter_any():
                        scanner.feed(chunk, time.perf_counter())
                    ok = resp.status == 200 and scanner.done
            except aiohttp.ClientError:
                ok = False
            ended = time.perf_counter()
            if not ok:
                arm.errors += 1
                continue
            done += 1
            tokens += scanner.completion_tokens
            if record and scanner.first_token_at is not None:
                arm.ttft_s.append(scanner.first_token_at - started)
                arm.e2e_s.append(ended - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if record:
        arm.rates.append(done / elapsed)
        arm.token_rates.append(tokens / elapsed)


async def measure(
    arms: list[Arm], concurrency: int, rounds: int, seconds: float, tokens: int
) -> None:
    body = orjson.dumps(
        {
            "model": "sim-llm",
            "messages": [{"role": "user", "content": "Say something short about routers."}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    connector = aiohttp.TCPConnector(limit=concurrency * 2, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for arm in arms:  # warm connections and code paths, unrecorded
            await one_round(session, arm, body, concurrency, min(1.0, seconds), record=False)
        for i in range(rounds):
            order = arms if i % 2 == 0 else list(reversed(arms))
            for arm in order:
                await one_round(session, arm, body, concurrency, seconds, record=True)


def summarize(direct: Arm, gateway: Arm, floor: Arm, concurrency: int) -> dict[str, Any]:
    def stats(arm: Arm) -> dict[str, float]:
        return {
            "ttft_p50_ms": percentile(arm.ttft_s, 50) * 1000,
            "ttft_p99_ms": percentile(arm.ttft_s, 99) * 1000,
            "e2e_p50_ms": percentile(arm.e2e_s, 50) * 1000,
            "e2e_p99_ms": percentile(arm.e2e_s, 99) * 1000,
            "requests_per_s": sum(arm.rates) / len(arm.rates),
            "tokens_per_s": sum(arm.token_rates) / len(arm.token_rates),
            "samples": len(arm.e2e_s),
            "errors": arm.errors,
        }

    d, g, f = stats(direct), stats(gateway), stats(floor)
    return {
        "concurrency": concurrency,
        "direct": d,
        "gateway": g,
        "floor": f,
        "floor_added_ttft_p50_ms": f["ttft_p50_ms"] - d["ttft_p50_ms"],
        "floor_rate_ratio": f["requests_per_s"] / d["requests_per_s"],
        "added_ttft_p50_ms": g["ttft_p50_ms"] - d["ttft_p50_ms"],
        "added_ttft_p99_ms": g["ttft_p99_ms"] - d["ttft_p99_ms"],
        "added_e2e_p50_ms": g["e2e_p50_ms"] - d["e2e_p50_ms"],
        "added_e2e_p99_ms": g["e2e_p99_ms"] - d["e2e_p99_ms"],
        "rate_ratio": g["requests_per_s"] / d["requests_per_s"],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'streams':>7} {'arm':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'e2e p50':>9} "
        f"{'e2e p99':>9} {'req/s':>8} {'tok/s':>9}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        for arm in ("direct", "gateway", "floor"):
            s = row[arm]
            print(
                f"{row['concurrency']:>7} {arm:>8} {s['ttft_p50_ms']:>7.2f}ms "
                f"{s['ttft_p99_ms']:>7.2f}ms {s['e2e_p50_ms']:>7.2f}ms {s['e2e_p99_ms']:>7.2f}ms "
                f"{s['requests_per_s']:>8.0f} {s['tokens_per_s']:>9.0f}"
            )
        print(
            f"{'':>7} {'added':>8} {row['added_ttft_p50_ms']:>7.2f}ms "
            f"{row['added_ttft_p99_ms']:>7.2f}ms {row['added_e2e_p50_ms']:>7.2f}ms "
            f"{row['added_e2e_p99_ms']:>7.2f}ms {row['rate_ratio']:>8.0%}"
        )
        print(
            f"{'':>7} {'floor+':>8} {row['floor_added_ttft_p50_ms']:>7.2f}ms {'':>9} {'':>9} "
            f"{'':>9} {row['floor_rate_ratio']:>8.0%}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-seconds", type=float, default=3.0)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per streamed answer")
    parser.add_argument("--preset", default=None, help="gateway preset (default: the default)")
    parser.add_argument("--out", default="results/bench_overhead.json")
    args = parser.parse_args(argv)

    backend_port, gateway_port, floor_port = free_port(), free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    floor_url = f"http://127.0.0.1:{floor_port}"
    serve = [sys.executable, "-m", "gateway", "serve", "--endpoint", backend_url]
    serve += ["--host", "127.0.0.1", "--port", str(gateway_port), "--log-level", "warning"]
    if args.preset:
        serve += ["--preset", args.preset]
    floor_cmd = [sys.executable, "-m", "loadtest.floor_proxy", "--upstream", backend_url]
    floor_cmd += ["--port", str(floor_port)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "loadtest.instant_backend", "--port", str(backend_port)]
        ),
        subprocess.Popen(serve),
        subprocess.Popen(floor_cmd),
    ]
    try:
        wait_ready(f"{backend_url}/health")
        wait_ready(f"{gateway_url}/ready")
        wait_ready_post(f"{floor_url}/v1/chat/completions")
        from gateway.cli import new_event_loop

        rows = []
        for concurrency in args.concurrency:
            direct = Arm("direct", f"{backend_url}/v1/chat/completions")
            gateway = Arm("gateway", f"{gateway_url}/v1/chat/completions")
            floor = Arm("floor", f"{floor_url}/v1/chat/completions")
            loop = new_event_loop()
            try:
                loop.run_until_complete(
                    measure(
                        [direct, gateway, floor],
                        concurrency,
                        args.rounds,
                        args.round_seconds,
                        args.tokens,
                    )
                )
            finally:
                loop.close()
            rows.append(summarize(direct, gateway, floor, concurrency))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    print_table(rows)
    report = {
        "benchmark": "gateway_overhead",
        "command": "python -m loadtest.bench_overhead " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "tokens_per_request": args.tokens,
        "preset": args.preset or "default",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
