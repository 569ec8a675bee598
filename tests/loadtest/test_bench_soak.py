"""The soak benchmark: how a request is classified (completed / explicit error / lost / hung) on
hand-made streams, over HTTP against hand-made servers, the fault plan, the summary math, and
one short run of the command (a kill and a stall)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from loadtest.routers import free_port
from loadtest.soak_classify import Observed, Outcome, StreamWatch, classify
from loadtest.soak_drive import Exchange, client_timeout, exchange
from loadtest.soak_faults import KILL, RELOAD, STALL, FaultSchedule, fault_plan
from loadtest.soak_procs import fd_kinds, proc_sample
from loadtest.soak_report import (
    dispatch_summary,
    histogram_quantile,
    read_metrics,
    slope_per_min,
)

TOKEN = b'data: {"id":"cmpl-1","choices":[{"index":0,"text":" hi"}]}\n\n'
USAGE = b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"
COMPLETE = TOKEN + TOKEN + USAGE + DONE
ERROR_EVENT = (
    b'data: {"error": {"message": "the model server broke the stream", '
    b'"type": "upstream_error", "param": null, "code": "upstream_stream_error"}}\n\n'
)
OPENAI_502 = (
    b'{"error": {"message": "could not connect", "type": "upstream_error", '
    b'"param": null, "code": "bad_gateway"}}'
)


def watched(*chunks: bytes) -> StreamWatch:
    watch = StreamWatch()
    for i, chunk in enumerate(chunks):
        watch.feed(chunk, float(i))
    return watch


def verdict_of(watch: StreamWatch, **observed: object) -> tuple[Outcome, str]:
    seen = Observed(
        status=int(observed.pop("status", 200)),  # type: ignore[call-overload]
        done=watch.done,
        error_event=watch.error_code if watch.error_event else None,
        **observed,  # type: ignore[arg-type]
    )
    verdict = classify(seen)
    return verdict.outcome, verdict.reason


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- classification of hand-made streams ---------------------------------------------------------
@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
def test_a_stream_ending_with_done_is_completed(split: bool) -> None:
    watch = watched(*(byte_by_byte(COMPLETE) if split else [COMPLETE]))
    assert verdict_of(watch) == (Outcome.COMPLETED, "ok")
    assert watch.first_token_at is not None
    assert watch.completion_tokens == 2
    assert watch.bytes_received == len(COMPLETE)


@pytest.mark.parametrize(
    "stream",
    [
        TOKEN + ERROR_EVENT,  # the gateway's cut: the error event, then the end
        TOKEN + b'data: {"id":"x","choices":[{"text":" h' + b"\n\n" + ERROR_EVENT,  # mid-event
        TOKEN + ERROR_EVENT + DONE,  # vLLM's way: the error, then [DONE]
        ERROR_EVENT,
    ],
    ids=["after-token", "mid-event", "then-done", "alone"],
)
def test_an_sse_error_event_is_an_explicit_error_whatever_follows(stream: bytes) -> None:
    for chunks in ([stream], byte_by_byte(stream)):
        assert verdict_of(watched(*chunks)) == (Outcome.ERROR, "sse upstream_stream_error")


def test_generated_text_that_mentions_error_is_not_an_error_event() -> None:
    token = b'data: {"choices":[{"text":" \\"error\\": {\\"code\\": 1}"}]}\n\n'
    assert verdict_of(watched(token, DONE)) == (Outcome.COMPLETED, "ok")


def test_a_stream_without_done_or_error_is_lost() -> None:
    outcome, reason = verdict_of(watched(TOKEN, TOKEN))
    assert outcome is Outcome.LOST
    assert "truncated" in reason
    # An empty 200 answer too.
    assert verdict_of(watched())[0] is Outcome.LOST


def test_non_2xx_answers_are_explicit_errors_and_a_body_that_is_not_openai_is_flagged() -> None:
    ok = classify(Observed(status=502, body=OPENAI_502))
    assert (ok.outcome, ok.reason, ok.openai_body) == (Outcome.ERROR, "HTTP 502 bad_gateway", True)
    plain = classify(Observed(status=502, body=b"502: Bad Gateway"))
    assert (plain.outcome, plain.openai_body) == (Outcome.ERROR, False)
    assert "no OpenAI body" in plain.reason
    # The error body cut short by a dropped connection is lost, not an answer.
    cut = classify(Observed(status=503, transport_error="ClientPayloadError"))
    assert cut.outcome is Outcome.LOST


def test_a_dropped_connection_is_lost_and_silence_is_hung() -> None:
    assert classify(Observed(transport_error="ServerDisconnectedError")).outcome is Outcome.LOST
    assert classify(Observed(status=200, transport_error="ClientPayloadError")).outcome is (
        Outcome.LOST
    )
    assert classify(Observed()).outcome is Outcome.LOST  # no answer, no reason: never silent
    hung = classify(Observed(status=200, silent_for_s=6.0))
    assert (hung.outcome, hung.reason) == (Outcome.HUNG, "no byte for 6 s (stream)")
    assert classify(Observed(silent_for_s=6.0)).reason == "no byte for 6 s (answer)"
    assert classify(Observed(status=200, unfinished=True)).outcome is Outcome.HUNG
    # An error event came before the silence: the client was told.
    told = classify(Observed(status=200, error_event="upstream_timeout", silent_for_s=6.0))
    assert told.outcome is Outcome.ERROR


# -- the same over HTTP, against hand-made servers -----------------------------------------------
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    b"x-slogate-endpoint: pod7\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[str]:
    """A TCP server that reads a request's head and body, then follows ``script``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/completions"
    finally:
        server.close()


async def run_exchange(url: str, hung_s: float = 0.3) -> Exchange:
    got: list[Exchange] = []
    async with aiohttp.ClientSession(timeout=client_timeout(hung_s)) as session:
        await exchange(session, url, b"{}", hung_s=hung_s, record=got.append)
    [one] = got
    return one


async def test_over_http_a_full_stream_is_completed(aiohttp_server: AiohttpServer) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"x-slogate-endpoint": "pod1"})
        await resp.prepare(request)
        for part in (TOKEN, TOKEN, USAGE, DONE):
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", stream)
    server = await aiohttp_server(app)
    one = await run_exchange(str(server.make_url("/v1/completions")))
    assert one.verdict.outcome is Outcome.COMPLETED
    assert one.endpoint == "pod1"
    assert one.watch.completion_tokens == 2


async def test_over_http_an_openai_error_answer_is_an_explicit_error() -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(OPENAI_502)}\r\n\r\n".encode()
            + OPENAI_502
        )
        await writer.drain()

    async with raw_server(answer) as url:
        one = await run_exchange(url)
    assert (one.verdict.outcome, one.verdict.reason) == (Outcome.ERROR, "HTTP 502 bad_gateway")


async def test_over_http_an_error_event_then_a_clean_end_is_an_explicit_error() -> None:
    async def cut(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(TOKEN) + chunk(ERROR_EVENT) + b"0\r\n\r\n")
        await writer.drain()

    async with raw_server(cut) as url:
        one = await run_exchange(url)
    assert (one.verdict.outcome, one.verdict.reason) == (Outcome.ERROR, "sse upstream_stream_error")
    assert one.endpoint == "pod7"


async def test_over_http_a_connection_dropped_mid_stream_is_lost() -> None:
    async def drop(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(TOKEN))
        await writer.drain()

    async with raw_server(drop) as url:
        one = await run_exchange(url)
    assert one.verdict.outcome is Outcome.LOST
    assert one.verdict.reason == "ClientPayloadError"


async def test_over_http_a_clean_end_without_done_is_lost() -> None:
    async def short(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(TOKEN) + b"0\r\n\r\n")
        await writer.drain()

    async with raw_server(short) as url:
        one = await run_exchange(url)
    assert one.verdict.outcome is Outcome.LOST
    assert "truncated" in one.verdict.reason


@pytest.mark.parametrize("headers_sent", [False, True], ids=["no-answer", "mid-stream"])
async def test_over_http_silence_longer_than_the_bound_is_hung(headers_sent: bool) -> None:
    async def stall(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if headers_sent:
            writer.write(SSE_HEAD + chunk(TOKEN))
            await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(stall) as url:
        one = await run_exchange(url, hung_s=0.3)
    assert one.verdict.outcome is Outcome.HUNG
    assert one.ended - one.sent == pytest.approx(0.3, abs=0.25)
    assert one.verdict.reason.endswith("(stream)" if headers_sent else "(answer)")


async def test_over_http_a_refused_connection_is_lost() -> None:
    one = await run_exchange(f"http://127.0.0.1:{free_port()}/v1/completions")
    assert one.verdict.outcome is Outcome.LOST
    assert one.verdict.reason.startswith("connect:")


async def test_a_request_cancelled_at_the_drain_deadline_is_recorded_as_unfinished() -> None:
    async def stall(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(TOKEN))
        await writer.drain()
        await asyncio.sleep(5)

    got: list[Exchange] = []
    async with raw_server(stall) as url, aiohttp.ClientSession() as session:
        task = asyncio.create_task(exchange(session, url, b"{}", hung_s=10, record=got.append))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    [one] = got
    assert (one.verdict.outcome, one.verdict.reason) == (
        Outcome.HUNG,
        "unfinished at the drain deadline",
    )


# -- the fault plan ------------------------------------------------------------------------------
def test_the_default_plan_kills_each_pod_in_turn_and_never_stalls_a_pod_that_is_down() -> None:
    schedule = FaultSchedule(window_s=300, pods=4, reload_every_s=20)
    plan = fault_plan(schedule)
    kills = [f for f in plan if f.kind == KILL]
    stalls = [f for f in plan if f.kind == STALL]
    reloads = [f for f in plan if f.kind == RELOAD]
    assert [f.at_s for f in kills] == [30 * k for k in range(1, 10)]
    assert [f.pod for f in kills] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [f.at_s for f in stalls] == [15 + 30 * j for j in range(10)]
    assert [f.at_s for f in reloads] == [20 * k for k in range(1, 15)]
    for stall in stalls:
        # The stalled pod is not down when its stall starts, nor killed while it lasts.
        for kill in kills:
            if kill.pod == stall.pod:
                assert not kill.at_s <= stall.at_s < kill.at_s + schedule.down_s
                assert not stall.at_s <= kill.at_s < stall.at_s + schedule.stall_s
    # Nothing outlasts the window; a short window gets what fits.
    short = fault_plan(
        FaultSchedule(
            window_s=10, pods=3, kill_every_s=5, down_s=2, stall_at_s=1, stall_every_s=100,
            stall_s=3,
        )
    )  # fmt: skip
    assert [(f.at_s, f.kind, f.pod) for f in short] == [(1, STALL, 1), (5, KILL, 0)]
    assert fault_plan(FaultSchedule(window_s=60, pods=4, kill_every_s=0, stall_every_s=0)) == []


# -- resources -----------------------------------------------------------------------------------
def test_fds_are_told_apart_by_the_connections_they_hold() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        before = fd_kinds(os.getpid(), listen_port=port, peer_ports={port})
        with socket.create_connection(("127.0.0.1", port)) as outgoing:
            accepted, _ = listener.accept()
            with accepted:
                during = fd_kinds(os.getpid(), listen_port=port, peer_ports={port})
                assert outgoing.fileno() > 0
    assert during["client"] == before["client"] + 1  # the accepted end
    assert during["upstream"] == before["upstream"] + 1  # the end that connected
    assert during["other"] == before["other"]  # the listener was already there
    sample = proc_sample(os.getpid())
    assert sample is not None
    assert sample.rss_kib > 0
    assert sample.fds >= 3
    assert proc_sample(2**22 + 1) is None  # no such process


# -- summary math --------------------------------------------------------------------------------
METRICS = """\
# HELP slogate_request_dispatch_duration_seconds Gateway time from receipt to dispatch.
# TYPE slogate_request_dispatch_duration_seconds histogram
slogate_request_dispatch_duration_seconds_bucket{le="0.0005"} 90.0
slogate_request_dispatch_duration_seconds_bucket{le="0.001"} 98.0
slogate_request_dispatch_duration_seconds_bucket{le="0.002"} 100.0
slogate_request_dispatch_duration_seconds_bucket{le="+Inf"} 100.0
slogate_request_dispatch_duration_seconds_count 100.0
slogate_request_dispatch_duration_seconds_sum 0.05
# HELP slogate_upstream_errors_total Failures.
# TYPE slogate_upstream_errors_total counter
slogate_upstream_errors_total{endpoint="pod0",reason="reset"} 7.0
"""


def test_dispatch_percentiles_interpolate_within_buckets_as_prometheus_does() -> None:
    counts = read_metrics(METRICS)
    assert counts["slogate_upstream_errors_total{endpoint=pod0,reason=reset}"] == 7
    summary = dispatch_summary(counts)
    assert summary["requests"] == 100
    assert summary["p50_ms"] == pytest.approx(0.5 * 50 / 90, abs=1e-3)
    assert summary["p99_ms"] == pytest.approx(1.5)
    assert summary["mean_ms"] == pytest.approx(0.5)
    assert math.isnan(histogram_quantile({}, 0.5))
    assert histogram_quantile({1.0: 0.0, math.inf: 4.0}, 0.99) == 1.0


def test_slope_is_per_minute() -> None:
    assert slope_per_min([(0, 100.0), (30, 101.0), (60, 102.0)]) == pytest.approx(2.0)
    assert math.isnan(slope_per_min([(0, 1.0)]))


# -- the command ---------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_the_command_end_to_end_with_a_kill_and_a_stall(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [
        "--pods=3",
        "--concurrency=30",
        "--warmup-s=2",
        "--duration-s=8",
        "--kill-every-s=4",
        "--down-s=2",
        "--stall-at-s=0.5",
        "--stall-every-s=100",
        "--stall-s=2",
        "--read-idle-timeout-s=1",
        "--drain-s=5",
        "--idle-s=0.5",
        "--ramp-s=1",
        "--sample-every-s=1",
        "--time-scale=1",
        "--max-tokens=16",
        "--calibration-rounds=1",
        "--calibration-warmup-rounds=0",
        "--calibration-s=1.5",
        "--calibration-concurrency=10",
        f"--out={out}",
        f"--log-dir={tmp_path / 'logs'}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_soak", *argv],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "zero hung: yes" in done.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_soak"
    counts = report["counts"]
    assert set(counts) == {"completed", "error", "lost", "hung", "total"}
    assert counts["total"] == sum(counts[k] for k in ("completed", "error", "lost", "hung"))
    assert counts["completed"] > 0
    assert counts["hung"] == 0  # lost is reported, not asserted: retries are being reworked
    assert report["claims"]["zero_hung"] is True
    assert report["claims"]["zero_lost"] is (counts["lost"] == 0)
    kinds = [(e["kind"], e["target"]) for e in report["events"]]
    assert ("stall", "pod1") in kinds
    assert ("unstalled", "pod1") in kinds
    assert ("kill", "pod0") in kinds
    assert ("restarted", "pod0") in kinds
    assert report["fault_failures"] == []
    # The pod killed mid-stream: its streams were cut with an explicit error, not dropped.
    assert counts["error"] > 0
    resources = report["resources"]
    for key in ("start", "end", "max"):
        assert resources["rss_mib"][key] > 0
        assert resources["fds"][key] > 0
    assert resources["after_idle"]["fds"] > 0
    assert resources["fds_by_kind"]["start"]["client"] > 0
    assert resources["fds_by_kind"]["start"]["upstream"] > 0
    assert report["dispatch"]["window"]["requests"] > 0
    assert report["calibration"]["direct"]["requests"] > 0
    assert report["calibration"]["gateway"]["requests"] > 0
    assert report["gateway_exit"] == "exited with 0"
    assert (tmp_path / "logs" / "pod0.log").exists()
