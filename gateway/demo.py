"""``slogate demo``: the gateway in front of a simulated fleet of mixed speed, on localhost.

Starts N ``slogate sim`` pods (separate processes, speeds cycling 1.0, 2.0, 0.5, 1.5), the
gateway in this process, sends a short synthetic chat workload with a progress bar, prints what
each pod served, prints lines to try, and stays up until Ctrl-C or ``--duration`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
from aiohttp import web

from config import (
    EndpointConfig,
    GatewayConfig,
    PoolConfig,
    PredictorConfig,
    SchedulingConfig,
    ServerConfig,
)
from gateway.app import create_app
from gateway.cli import new_event_loop
from gateway.keys import gateway_key
from gateway.logs import configure_logging
from loadtest.client import ClientResult, percentile, send
from scheduler.predictor.runtime import LatencyPredictor

SPEEDS = (1.0, 2.0, 0.5, 1.5)
MODEL = "sim-llm"
ADAPTER = "sim-llm-lora"
"""A LoRA adapter the first two simulated pods serve (``--lora``)."""
SYSTEM_PROMPTS = tuple(
    f"You are assistant #{i}. " + "Answer carefully, cite sources and be concise. " * 40
    for i in range(4)
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(*, pods: int, duration_s: float | None, port: int, preset: str | None) -> None:
    configure_logging("warning", "text")
    started = time.monotonic()
    ports = [free_port() for _ in range(pods)]
    speeds = [SPEEDS[i % len(SPEEDS)] for i in range(pods)]
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "sim", "--port", str(p), "--speed", str(s)),
                *(("--lora", ADAPTER) if i < 2 else ()),
            ],
            stdout=subprocess.DEVNULL,
        )
        for i, (p, s) in enumerate(zip(ports, speeds, strict=True))
    ]
    loop = new_event_loop()
    try:
        loop.run_until_complete(_demo(ports, speeds, started, duration_s, port, preset))
    finally:
        loop.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _demo(
    ports: list[int],
    speeds: list[float],
    started: float,
    duration_s: float | None,
    port: int,
    preset: str | None,
) -> None:
    pods = len(ports)
    runner: web.AppRunner | None = None
    try:
        await _wait_healthy([f"http://127.0.0.1:{p}/health" for p in ports], timeout_s=30)
        cfg = GatewayConfig(
            server=ServerConfig(host="127.0.0.1", port=port),
            pool=PoolConfig(
                endpoints=tuple(
                    EndpointConfig(url=f"http://127.0.0.1:{p}", name=f"pod-{i}-x{s:g}")
                    for i, (p, s) in enumerate(zip(ports, speeds, strict=True))
                )
            ),
            scheduling=SchedulingConfig(preset=preset),
            # A short demo: retrain often so the predictor's learning shows within it.
            predictor=PredictorConfig(retrain_interval_s=3.0, min_samples=50),
        )
        app = create_app(cfg)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        await _wait_healthy([f"{base}/ready"], timeout_s=15)
        print(f"slogate gateway on {base} in front of {pods} simulated pods (speeds {speeds})")

        budget = 20.0 if duration_s is None else max(3.0, min(20.0, 0.6 * duration_s))
        results = await _workload(base, budget_s=budget)
        _print_table(results, [e.name for e in cfg.pool.endpoints])
        _print_predictor(app[gateway_key].predictor)
        _print_try(base)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        remaining = (
            None if duration_s is None else max(0.0, duration_s - (time.monotonic() - started))
        )
        print(
            "Serving until Ctrl-C" if remaining is None else f"Serving for {remaining:.0f} s more"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), remaining)
    finally:
        if runner is not None:
            await runner.cleanup()


async def _wait_healthy(urls: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        for url in urls:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not become healthy in {timeout_s:.0f} s")
                await asyncio.sleep(0.1)


async def _workload(base: str, *, budget_s: float, concurrency: int = 24) -> list[ClientResult]:
    rng = random.Random(7)
    results: list[ClientResult] = []
    started = time.monotonic()
    deadline = started + budget_s

    words = ("why", "how", "when", "explain", "list", "compare", "route", "cache", "token")

    def body() -> dict[str, Any]:
        # Half the conversations share one of a few system prompts (prefix-cache reuse), half
        # are one-off prompts of varied length, so load and cache affinity both matter.
        question = " ".join(rng.choice(words) for _ in range(rng.choice((20, 200, 800))))
        messages = [{"role": "user", "content": question}]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        return {
            "model": MODEL,
            "messages": messages,
            "max_tokens": rng.randint(16, 96),
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def user(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            results.append(await send(client, f"{base}/v1/chat/completions", body()))

    async def progress() -> None:
        while True:
            frac = min(1.0, (time.monotonic() - started) / budget_s)
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r  workload [{bar:<30}] {len(results)} requests")
            sys.stderr.flush()
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=concurrency)
    ticker = asyncio.create_task(progress())
    try:
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            await asyncio.gather(*(user(client) for _ in range(concurrency)))
    finally:
        ticker.cancel()
    sys.stderr.write(f"\r  workload [{'#' * 30}] {len(results)} requests\n")
    return results


def _print_table(results: list[ClientResult], pods: list[str]) -> None:
    by_pod: dict[str, list[ClientResult]] = {pod: [] for pod in pods}
    errors = 0
    for r in results:
        if r.error:
            errors += 1
        else:
            by_pod.setdefault(r.endpoint, []).append(r)
    print(f"\n{len(results)} requests, {errors} errors")
    print(f"{'pod':<16}{'requests':>9}{'TTFT p50':>11}{'TTFT p90':>11}{'TPOT p50':>11}")
    for pod in sorted(by_pod):
        rs = by_pod[pod]
        ttfts = [r.ttft_s for r in rs if r.ttft_s is not None]
        tpots = [r.tpot_s for r in rs if r.tpot_s is not None]
        print(f"{pod:<16}{len(rs):>9}{_ms(ttfts, 50):>11}{_ms(ttfts, 90):>11}{_ms(tpots, 50):>11}")


def _print_predictor(predictor: LatencyPredictor) -> None:
    if not predictor.enabled:
        return
    model = predictor.model
    if model is None or model.ttft is None:
        print("predictor: still collecting samples; routing with the load heuristic for now")
        return
    state = (
        "routing by predicted latency" if predictor.ready else "not yet better than the heuristic"
    )
    print(f"predictor: model v{model.version}, {state}")
    factors = ", ".join(
        f"{pod} x{math.exp(offset):.2f}" for pod, offset in sorted(model.ttft.offsets.items())
    )
    print(f"  learned TTFT factor per pod (1 = pool average; names carry true speed): {factors}")


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f} ms" if values else "-"


def _print_try(base: str) -> None:
    print(
        f"""
Try it:
  curl -N {base}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{MODEL}", "stream": true,
         "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='none'); \\
print(c.chat.completions.create(model='{MODEL}', messages=[{{'role': 'user', 'content': 'Hi'}}]))"

  # the Responses API, embeddings, a LoRA adapter (served by the first two pods only)
  curl -s {base}/v1/responses -H 'content-type: application/json' \\
    -d '{{"model": "{MODEL}", "input": "Hello", "max_output_tokens": 16}}'
  curl -s {base}/v1/embeddings -H 'content-type: application/json' \\
    -d '{{"model": "{MODEL}", "input": ["a", "b"]}}' | head -c 200; echo
  curl -si {base}/v1/completions -H 'content-type: application/json' \\
    -d '{{"model": "{ADAPTER}", "prompt": "Hi", "max_tokens": 8}}' | grep -i x-slogate-endpoint

  # a latency objective (any preset parses it; --preset predicted-latency-slo routes by it)
  curl -s {base}/v1/completions -H 'content-type: application/json' \\
    -H 'x-llm-d-slo-ttft-ms: 500' -H 'x-llm-d-inference-objective: sheddable' \\
    -d '{{"model": "{MODEL}", "prompt": "Hi", "max_tokens": 8}}'

  curl -s {base}/metrics | grep inference_objective_request_ttft
"""
    )
