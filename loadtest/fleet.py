"""A benchmark fleet: simulated pods, the real gateway and a trace-replaying driver.

Three kinds of process, so the gateway's event loop does only the gateway's work:

- ``python -m loadtest.fleet sims``: one simulated vLLM pod per ``--speeds`` entry, all on one
  event loop; prints its URLs as one JSON line and serves until its stdin closes
  (:func:`sim_fleet` starts it and stops it);
- the gateway, built by ``create_app`` in the calling process (:func:`start_gateway`), with
  the preset and predictor settings under test;
- ``python -m loadtest.fleet drive``: replays a :class:`WorkloadSpec` against the gateway open
  loop (each request leaves at its arrival time, whatever is still in flight), streaming with
  ``stream_options.include_usage``, and writes what the client saw per request
  (:func:`run_driver`).

Workloads come from the real traces in ``../shared/workloads`` (read in place, never copied):
requests in trace order with their lengths, and per :class:`Phase` the trace's own arrival
times stretched or compressed so that the phase gets exactly its stated mean rate (bursts keep
their shape; the scaling is printed by :meth:`WorkloadSpec.describe`). Prompts are token-id
lists, so every layer sees exactly the trace's length: random ids per request, or, for the
Mooncake trace, one fixed block of ids per ``hash_id`` so that equal ids share a KV prefix at
the sims and in the gateway's prefix index.

:class:`PredictionLog` records, on the gateway side, each prediction for the endpoint that was
used next to the latency measured there (the predictor's own samples).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp import web

from config import (
    EndpointConfig,
    GatewayConfig,
    PoolConfig,
    PredictorConfig,
    SchedulingConfig,
)
from gateway.app import Gateway, create_app
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from gateway.streaming import SseScanner
from loadtest.client import percentile
from scheduler.datalayer.store import Health
from scheduler.framework.plugins import RequestRecord
from scheduler.framework.types import InferenceRequest
from scheduler.predictor.runtime import PredictorHooks

MODEL = "sim-llm"
WORKLOADS_ENV = "SLOGATE_WORKLOADS"
TRACES = {
    "azure-conv": "azure-llm-2023-conv.csv",
    "azure-code": "azure-llm-2023-code.csv",
    "mooncake": "mooncake-synthetic.jsonl",
}
MOONCAKE_BLOCK_TOKENS = 512
_VOCAB = (1000, 100_000)


def workloads_dir() -> Path:
    """``$SLOGATE_WORKLOADS``, else ``shared/workloads`` beside the project root."""
    env = os.environ.get(WORKLOADS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "workloads"


# -- traces and workloads ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TraceRow:
    at_s: float
    """Arrival, seconds after the trace's first request."""
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def load_trace(name: str) -> list[TraceRow]:
    path = workloads_dir() / TRACES[name]
    if path.suffix == ".jsonl":
        rows = []
        with path.open() as f:
            for line in f:
                obj = json.loads(line)
                rows.append(
                    TraceRow(
                        at_s=obj["timestamp"] / 1000,
                        prompt_tokens=int(obj["input_length"]),
                        output_tokens=int(obj["output_length"]),
                        hash_ids=tuple(obj["hash_ids"]),
                    )
                )
        return rows
    with path.open(newline="") as f:
        raw = [
            (_timestamp(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
            for r in csv.DictReader(f)
        ]
    start = raw[0][0]
    return [TraceRow(at_s=t - start, prompt_tokens=p, output_tokens=o) for t, p, o in raw]


def _timestamp(text: str) -> float:
    """``2023-11-16 18:15:46.6805900`` (7 fractional digits) as POSIX seconds."""
    whole, _, frac = text.partition(".")
    return datetime.fromisoformat(whole).timestamp() + (float(f"0.{frac}") if frac else 0.0)


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    duration_s: float
    rate_rps: float


@dataclass(frozen=True, slots=True)
class Arrival:
    index: int
    at_s: float
    """Seconds after the workload's start."""
    phase: str
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    trace: str = "azure-conv"
    phases: tuple[Phase, ...]
    seed: int = 0
    start_row: int = 0
    length_scale: float = 1.0
    """Multiplies prompt and output lengths (and the Mooncake block size)."""
    max_prompt_tokens: int = 8192
    max_output_tokens: int = 1024
    min_output_tokens: int = 2
    """At least two tokens, so every request yields a TPOT."""

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def phase_bounds(self) -> list[tuple[str, float, float]]:
        """``(name, start_s, end_s)`` of each phase, from the workload's start."""
        bounds, t = [], 0.0
        for p in self.phases:
            bounds.append((p.name, t, t + p.duration_s))
            t += p.duration_s
        return bounds

    def arrivals(self) -> list[Arrival]:
        """Per phase, the next ``rate x duration`` trace rows, their arrival times stretched
        (or compressed) together so they fill the phase: its mean rate is exact, the trace's
        bursts keep their shape."""
        trace = load_trace(self.trace)
        out: list[Arrival] = []
        row, phase_start = self.start_row % len(trace), 0.0
        for phase in self.phases:
            count = max(1, round(phase.rate_rps * phase.duration_s))
            rows = [trace[(row + i) % len(trace)] for i in range(count + 1)]
            offsets = [0.0]
            for prev, cur in itertools.pairwise(rows):
                gap = cur.at_s - prev.at_s
                offsets.append(offsets[-1] + (gap if gap > 0 else 0.0))
            span = offsets[-1] or 1.0
            for i, r in enumerate(rows[:-1]):
                out.append(
                    Arrival(
                        index=len(out),
                        at_s=phase_start + offsets[i] / span * phase.duration_s,
                        phase=phase.name,
                        prompt_tokens=self._scaled(r.prompt_tokens, 1, self.max_prompt_tokens),
                        output_tokens=self._scaled(
                            r.output_tokens, self.min_output_tokens, self.max_output_tokens
                        ),
                        hash_ids=r.hash_ids,
                    )
                )
            row = (row + count) % len(trace)
            phase_start += phase.duration_s
        return out

    def _scaled(self, tokens: int, low: int, high: int) -> int:
        return max(low, min(round(tokens * self.length_scale), high))

    def describe(self) -> str:
        trace = load_trace(self.trace)
        trace_rate = len(trace) / max(trace[-1].at_s - trace[0].at_s, 1e-9)
        phases = ", ".join(
            f"{p.name} {p.duration_s:g} s at {p.rate_rps:g} req/s" for p in self.phases
        )
        block = (
            f"; Mooncake prefix blocks of {round(MOONCAKE_BLOCK_TOKENS * self.length_scale)} tokens"
            if self.trace == "mooncake"
            else "; unique random prompts (no shared prefixes)"
        )
        return (
            f"trace {TRACES[self.trace]} from row {self.start_row} (mean {trace_rate:.2f} req/s "
            f"over its {trace[-1].at_s / 60:.0f} min), in order; per phase the next rate x "
            f"duration rows, their arrival times scaled to fill it: {phases}; "
            f"lengths x{self.length_scale:g}, "
            f"prompts capped at {self.max_prompt_tokens}, outputs in "
            f"[{self.min_output_tokens}, {self.max_output_tokens}] tokens (ignore_eos){block}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkloadSpec:
        obj = json.loads(text)
        obj["phases"] = tuple(Phase(**p) for p in obj["phases"])
        return cls(**obj)


class PromptMaker:
    """Token ids for an arrival: deterministic per (seed, request) or per (seed, prefix block)."""

    def __init__(self, spec: WorkloadSpec) -> None:
        self._seed = spec.seed
        self._block = max(1, round(MOONCAKE_BLOCK_TOKENS * spec.length_scale))
        self._blocks: dict[int, list[int]] = {}

    def ids(self, arrival: Arrival) -> list[int]:
        if not arrival.hash_ids:
            rng = np.random.default_rng((self._seed, arrival.index))
            ids: list[int] = rng.integers(*_VOCAB, size=arrival.prompt_tokens).tolist()
            return ids
        out: list[int] = []
        for block_id in arrival.hash_ids:
            if len(out) >= arrival.prompt_tokens:
                break
            out += self._block_ids(block_id)
        if len(out) < arrival.prompt_tokens:
            rng = np.random.default_rng((self._seed, arrival.index, 1))
            out += rng.integers(*_VOCAB, size=arrival.prompt_tokens - len(out)).tolist()
        return out[: arrival.prompt_tokens]

    def _block_ids(self, block_id: int) -> list[int]:
        block = self._blocks.get(block_id)
        if block is None:
            rng = np.random.default_rng((self._seed, 1 << 40, block_id))
            block = self._blocks[block_id] = rng.integers(*_VOCAB, size=self._block).tolist()
        return block


def request_body(arrival: Arrival, prompt: list[int]) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": arrival.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# -- the driver (its own process) ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientRecord:
    index: int
    phase: str
    sent_at: float
    """``time.monotonic()`` (system-wide on Linux, so comparable with the gateway's clock)."""
    status: int
    endpoint: str
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    cut: bool = False
    """Still running at the driver's drain deadline and cancelled: ``e2e_s`` (and ``ttft_s``
    when no token had come) are lower bounds; ``error`` says so."""


CUT_ERROR = "cut: unfinished at the drain deadline"
JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    arrival: Arrival,
    body: bytes,
    deadline: float | None = None,
    headers: Mapping[str, str] = JSON_HEADERS,
) -> ClientRecord:
    scanner = SseScanner(expect_usage=True)
    sent = time.monotonic()
    status, endpoint, error, cut = 0, "", None, False
    try:
        async with asyncio.timeout(None if deadline is None else deadline - sent):
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    status = resp.status
                    endpoint = resp.headers.get("x-slogate-endpoint", "")
                    async for chunk in resp.content.iter_any():
                        scanner.feed(chunk, time.monotonic())
                    if status >= 400:
                        error = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
    except TimeoutError:  # the drain deadline, not the session's own read timeout
        error, cut = CUT_ERROR, True
    ended = time.monotonic()
    first, tokens = scanner.first_token_at, scanner.completion_tokens
    return ClientRecord(
        index=arrival.index,
        phase=arrival.phase,
        sent_at=sent,
        status=status,
        endpoint=endpoint,
        ttft_s=None if first is None else first - sent,
        tpot_s=None if first is None or tokens < 2 else (ended - first) / (tokens - 1),
        e2e_s=ended - sent,
        prompt_tokens=arrival.prompt_tokens,
        completion_tokens=tokens,
        error=error,
        cut=cut,
    )


def target_of(index: int, targets: int) -> int:
    """Which of ``targets`` URLs arrival ``index`` goes to: in turn (round robin by request, a
    stand-in for a Service spreading many clients over gateway replicas)."""
    return index % targets


async def drive(
    url: str | Sequence[str],
    spec: WorkloadSpec,
    start_at: float,
    drain_s: float | None = None,
    headers: Sequence[Mapping[str, str]] | None = None,
) -> list[ClientRecord]:
    """Send every arrival at ``start_at + at_s`` (monotonic) and wait for all of them, or,
    with ``drain_s``, until ``drain_s`` after the workload's end, cancelling what still runs
    then (recorded with ``cut``). ``headers``, one mapping per arrival (by index), are sent
    with it besides the content type (e.g. latency objectives). Several URLs: arrival ``i``
    goes to ``url[target_of(i, len(url))]``."""
    urls = [url] if isinstance(url, str) else list(url)
    arrivals = spec.arrivals()
    if headers is not None and len(headers) != len(arrivals):
        raise ValueError(f"{len(headers)} header sets for {len(arrivals)} arrivals")
    per_arrival = [
        JSON_HEADERS if headers is None else {**JSON_HEADERS, **headers[a.index]} for a in arrivals
    ]
    prompts = PromptMaker(spec)
    bodies = [orjson.dumps(request_body(a, prompts.ids(a))) for a in arrivals]
    deadline = None if drain_s is None else start_at + spec.duration_s + drain_s
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    tasks: list[asyncio.Task[ClientRecord]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for arrival, body, sent_headers in zip(arrivals, bodies, per_arrival, strict=True):
            delay = start_at + arrival.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            target = urls[target_of(arrival.index, len(urls))]
            tasks.append(
                asyncio.create_task(_send(session, target, arrival, body, deadline, sent_headers))
            )
        return list(await asyncio.gather(*tasks))


async def run_driver(
    url: str | Sequence[str],
    spec: WorkloadSpec,
    *,
    start_at: float,
    drain_s: float | None = None,
    headers: Sequence[Mapping[str, str]] | None = None,
) -> list[ClientRecord]:
    """Run the driver subprocess against ``url`` (or several base URLs, as for :func:`drive`)
    and return its records (``headers``: extra request headers per arrival)."""
    urls = [url] if isinstance(url, str) else list(url)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.json"
        options = [] if drain_s is None else ["--drain-s", repr(drain_s)]
        if headers is not None:
            headers_path = Path(tmp) / "headers.json"
            headers_path.write_text(json.dumps([dict(h) for h in headers]))
            options += ["--headers", str(headers_path)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtest.fleet",
            "drive",
            *(flag for u in urls for flag in ("--url", u)),
            "--spec",
            spec.to_json(),
            "--start-at",
            repr(start_at),
            "--out",
            str(out),
            *options,
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"the driver exited with {proc.returncode}")
        return [ClientRecord(**r) for r in json.loads(out.read_text())]


# -- the sims (their own process) ----------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SimSpec:
    speeds: tuple[float, ...]
    max_num_seqs: int = 256
    kv_blocks: int = 4096
    time_scale: float = 1.0
    seed: int = 0
    engine: str = "vllm"
    """The sim's engine model (``SimConfig.engine``): ``vllm`` or ``slots``."""
    engine_params: tuple[tuple[str, float], ...] = ()
    """Further ``SimConfig`` fields by name, e.g. ``(("itl_ms", 20.0),)`` for ``slots``."""

    def describe(self) -> str:
        params = "".join(f", {name} {value:g}" for name, value in self.engine_params)
        return (
            f"{len(self.speeds)} sims, speeds {', '.join(f'{s:g}' for s in self.speeds)}; "
            f"engine {self.engine}{params}; "
            f"max_num_seqs {self.max_num_seqs}, kv_blocks {self.kv_blocks}, "
            f"time_scale {self.time_scale:g}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SimSpec:
        obj = json.loads(text)
        obj["speeds"] = tuple(obj["speeds"])
        obj["engine_params"] = tuple((str(k), float(v)) for k, v in obj["engine_params"])
        return cls(**obj)

    def sim_config_fields(self) -> dict[str, Any]:
        """The ``SimConfig`` fields beyond the basic ones; raises ``ValueError`` when this
        checkout's simulator lacks one (the ``engine`` option is newer than the sim)."""
        from loadtest.sim.config import SimConfig

        wanted: dict[str, Any] = dict(self.engine_params)
        if self.engine != "vllm" or "engine" in SimConfig.__dataclass_fields__:
            wanted["engine"] = self.engine
        missing = sorted(set(wanted) - set(SimConfig.__dataclass_fields__))
        if missing:
            raise ValueError(f"this simulator's SimConfig has no {', '.join(missing)}")
        return wanted


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    url: str
    speed: float


@contextlib.asynccontextmanager
async def sim_fleet(spec: SimSpec) -> AsyncIterator[list[Pod]]:
    """Freshly started sims (empty caches and queues) for the duration of the block."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.fleet",
        "sims",
        "--spec",
        spec.to_json(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the sim fleet did not start")
        urls = json.loads(line)["urls"]
        yield [
            Pod(name=f"pod{i}-x{speed:g}", url=url, speed=speed)
            for i, (url, speed) in enumerate(zip(urls, spec.speeds, strict=True))
        ]
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _serve_sims(spec: SimSpec) -> None:
    from gateway.tokenizer import load_tokenizer
    from loadtest.sim.config import SimConfig
    from loadtest.sim.server import start_sim_server

    tokenizer = load_tokenizer()
    extra = spec.sim_config_fields()
    servers = [
        await start_sim_server(
            SimConfig(
                speed=speed,
                time_scale=spec.time_scale,
                max_num_seqs=spec.max_num_seqs,
                kv_blocks=spec.kv_blocks,
                seed=spec.seed + i,
                **extra,
            ),
            tokenizer=tokenizer,
        )
        for i, speed in enumerate(spec.speeds)
    ]
    sys.stdout.write(json.dumps({"urls": [s.url for s in servers]}) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    for server in servers:
        await server.close()


# -- the gateway (this process) ------------------------------------------------------------------
@dataclass(slots=True)
class RunningGateway:
    runner: web.AppRunner
    gateway: Gateway
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_gateway(
    pods: Sequence[Pod],
    *,
    preset: str,
    predictor: PredictorConfig | None = None,
    seed: int = 0,
    observers: Sequence[Any] = (),
) -> RunningGateway:
    """The real gateway app on a free port in front of ``pods``, once every pod is scraped."""
    cfg = GatewayConfig(
        pool=PoolConfig(
            endpoints=tuple(
                EndpointConfig(url=p.url, name=p.name, labels={"speed": f"{p.speed:g}"})
                for p in pods
            ),
            models=(MODEL,),
        ),
        scheduling=SchedulingConfig(preset=preset),
        predictor=predictor or PredictorConfig(),
    )
    deps = Dependencies(rng=random.Random(seed), observers=tuple(observers))
    app = create_app(cfg, deps)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    gateway = app[gateway_key]
    deadline = time.monotonic() + 30
    while any(gateway.store.health(p.name, time.monotonic()) is not Health.UP for p in pods):
        if time.monotonic() > deadline:
            await runner.cleanup()
            raise RuntimeError("the gateway did not see every pod up within 30 s")
        await asyncio.sleep(0.05)
    return RunningGateway(runner=runner, gateway=gateway, url=f"http://127.0.0.1:{port}")


# -- prediction accounting (gateway side) --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PredictionRecord:
    at: float
    target: str
    endpoint: str
    predicted_s: float
    actual_s: float


@dataclass(slots=True)
class PredictionLog:
    """Each prediction for the endpoint used, next to the latency the gateway measured.

    Installed both as the predictor's hooks (which see predicted and actual values, chained to
    the gateway's own metrics hooks) and as a request observer (which sees the endpoint):
    the predictor scores a sample inside the scheduler's observer call, and the gateway calls
    extra observers right after it for the same request, so the two halves pair up.
    """

    inner: PredictorHooks | None = None
    records: list[PredictionRecord] = field(default_factory=list)
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)

    def attach(self, gateway: Gateway) -> None:
        self.inner = gateway.predictor.hooks
        gateway.predictor.hooks = self

    # PredictorHooks
    def prediction_timed(self, seconds: float) -> None:
        if self.inner is not None:
            self.inner.prediction_timed(seconds)

    def outcome(self, target: str, model: str, predicted_s: float, actual_s: float) -> None:
        self._last[target] = (predicted_s, actual_s)
        if self.inner is not None:
            self.inner.outcome(target, model, predicted_s, actual_s)

    # RequestObserver
    def on_first_token(self, request: InferenceRequest, endpoint: str, now: float) -> None:
        self._take("ttft", endpoint, now)

    def on_end(self, request: InferenceRequest, record: RequestRecord) -> None:
        self._take("tpot", record.endpoint, record.ended_at)

    def _take(self, target: str, endpoint: str, now: float) -> None:
        pair = self._last.pop(target, None)
        if pair is not None:
            self.records.append(PredictionRecord(now, target, endpoint, *pair))


def mape(records: Sequence[PredictionRecord]) -> float:
    if not records:
        return math.nan
    return sum(abs(r.predicted_s - r.actual_s) / max(r.actual_s, 1e-9) for r in records) / len(
        records
    )


def coverage(records: Sequence[PredictionRecord]) -> float:
    if not records:
        return math.nan
    return sum(r.actual_s <= r.predicted_s for r in records) / len(records)


# -- summaries -----------------------------------------------------------------------------------
def latency_summary(records: Sequence[ClientRecord], duration_s: float) -> dict[str, float]:
    ok = [r for r in records if r.error is None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
    e2e = [r.e2e_s for r in ok]

    def q(values: list[float], p: float) -> float:
        return percentile(values, p) if values else math.nan

    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "ttft_p50_s": q(ttft, 50),
        "ttft_p90_s": q(ttft, 90),
        "ttft_p99_s": q(ttft, 99),
        "tpot_p50_s": q(tpot, 50),
        "tpot_p90_s": q(tpot, 90),
        "e2e_p50_s": q(e2e, 50),
        "e2e_p90_s": q(e2e, 90),
        "throughput_rps": len(ok) / duration_s if duration_s > 0 else math.nan,
        "tokens_per_s": sum(r.completion_tokens for r in ok) / duration_s if duration_s else 0.0,
    }


def pin_to_cpus(cpus: set[int]) -> None:
    """Best effort (Linux only)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, cpus)


# -- entry points of the subprocesses ------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    from gateway.cli import new_event_loop

    parser = argparse.ArgumentParser(prog="python -m loadtest.fleet")
    sub = parser.add_subparsers(dest="command", required=True)
    sims = sub.add_parser("sims", help="serve simulated pods until stdin closes")
    sims.add_argument("--spec", required=True, help="SimSpec as JSON")
    drv = sub.add_parser("drive", help="replay a workload and write client records")
    drv.add_argument(
        "--url", action="append", required=True, help="the gateway's base URL (repeatable)"
    )
    drv.add_argument("--spec", required=True, help="WorkloadSpec as JSON")
    drv.add_argument("--start-at", type=float, required=True, help="time.monotonic() of t=0")
    drv.add_argument("--out", type=Path, required=True)
    drv.add_argument("--drain-s", type=float, help="cancel what still runs this long after")
    drv.add_argument("--headers", type=Path, help="JSON list of extra headers, one per arrival")
    args = parser.parse_args(argv)
    loop = new_event_loop()
    try:
        if args.command == "sims":
            loop.run_until_complete(_serve_sims(SimSpec.from_json(args.spec)))
        else:
            spec = WorkloadSpec.from_json(args.spec)
            urls = [f"{u}/v1/completions" for u in args.url]
            headers = None if args.headers is None else json.loads(args.headers.read_text())
            records = loop.run_until_complete(
                drive(urls, spec, args.start_at, args.drain_s, headers)
            )
            args.out.write_text(json.dumps([asdict(r) for r in records]))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
