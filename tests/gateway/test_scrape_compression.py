"""The scraper reads /metrics as real model servers send it, and survives what they get wrong.

vLLM and SGLang serve /metrics through prometheus_client, Go servers through promhttp: both
gzip the answer when the client accepts gzip. Here prometheus_client's own WSGI app (the same
code path as its ASGI app: ``_bake_output``) and a promhttp look-alike (chunked gzip stream,
``Vary: Accept-Encoding``) serve a real vLLM exposition; the gateway must end up with its load.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from gateway.backends.control_session import ACCEPT_ENCODING
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from tests.gateway.conftest import gateway_config, server_url
from tests.gateway.scrape_support import (
    VLLM_EXPOSITION,
    Client,
    background_task,
    eventually,
    gateway_sample,
    ready_detail,
)

DECODABLE = {"gzip", "deflate", "identity"}
"""What aiohttp decodes without optional packages: all the gateway may ask for."""


@dataclass
class Seen:
    """What a metrics server was asked for and what it answered."""

    accept_encodings: list[str] = field(default_factory=list)
    gzipped: int = 0


def gzip_accepted(header: str) -> bool:
    return any(part.split(";")[0].strip().lower() == "gzip" for part in header.split(","))


# -- prometheus_client, for real --------------------------------------------------------------
class _FixtureCollector:
    """Re-exposes a recorded exposition, so prometheus_client itself renders and gzips it."""

    def __init__(self, text: str) -> None:
        self._families = list(text_string_to_metric_families(text))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class MetricsServer:
    url: str
    seen: Seen


async def _serve_prometheus_client() -> AsyncIterator[MetricsServer]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FixtureCollector(VLLM_EXPOSITION.decode()))
    app = make_wsgi_app(registry)
    seen = Seen()

    def recording_app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.accept_encodings.append(environ.get("HTTP_ACCEPT_ENCODING", ""))

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if ("Content-Encoding", "gzip") in headers:
                seen.gzipped += 1
            return start_response(status, headers, exc_info)

        return app(environ, start)

    server: WSGIServer = make_server("127.0.0.1", 0, recording_app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield MetricsServer(f"http://127.0.0.1:{server.server_port}", seen)
    finally:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, server.shutdown)
        server.server_close()
        await loop.run_in_executor(None, thread.join)


# -- a promhttp look-alike ----------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def promhttp_handler(seen: Seen, body: bytes = VLLM_EXPOSITION) -> Handler:
    """Like Go's promhttp: gzip when accepted, streamed in chunks, ``Vary: Accept-Encoding``."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        accept = request.headers.get("Accept-Encoding", "")
        seen.accept_encodings.append(accept)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/plain; version=0.0.4; charset=utf-8; escaping=underscores",
                "Vary": "Accept-Encoding",
            }
        )
        compress = gzip_accepted(accept)
        if compress:
            resp.headers["Content-Encoding"] = "gzip"
            seen.gzipped += 1
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        compressor = zlib.compressobj(wbits=31)  # a gzip stream
        for start in range(0, len(body), 4096):
            piece = body[start : start + 4096]
            if compress:
                piece = compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)
            await resp.write(piece)
        if compress:
            await resp.write(compressor.flush())
        await resp.write_eof()
        return resp

    return metrics


def metrics_app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


@pytest.fixture(params=["prometheus_client", "promhttp"])
async def metrics_server(
    request: pytest.FixtureRequest, aiohttp_server: AiohttpServer
) -> AsyncIterator[MetricsServer]:
    if request.param == "prometheus_client":
        async for served in _serve_prometheus_client():
            yield served
    else:
        seen = Seen()
        server = await aiohttp_server(metrics_app(promhttp_handler(seen)))
        yield MetricsServer(server_url(server), seen)


async def start_gateway(aiohttp_client: AiohttpClient, *urls: str) -> Client:
    # Static models: these servers answer /metrics only.
    cfg = gateway_config(*urls, models=("sim-llm",))
    return await aiohttp_client(create_app(cfg, Dependencies()))


async def test_compressed_metrics_are_decoded_and_the_endpoint_is_up(
    aiohttp_client: AiohttpClient, metrics_server: MetricsServer
) -> None:
    gw = await start_gateway(aiohttp_client, metrics_server.url)
    store = gw.app[gateway_key].store
    name = store.endpoints[0].name

    async def has_metrics() -> bool:
        return store.metrics(name) is not None

    await eventually(has_metrics, what="a parsed scrape")
    metrics = store.metrics(name)
    assert metrics is not None
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (3, 17, 0.4172)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (16, 27153)

    seen = metrics_server.seen
    assert seen.gzipped >= 1, "the server never compressed: the test proves nothing"
    for header in seen.accept_encodings:
        assert header == ACCEPT_ENCODING
        assert {c.split(";")[0].strip() for c in header.split(",")} <= DECODABLE

    detail = await ready_detail(gw)
    assert detail["status"] == "ready"
    assert detail["detail"] == {name: {"state": "up"}}
    assert await gateway_sample(gw, "slogate_endpoint_up", endpoint=name) == 1.0
    assert await gateway_sample(gw, "slogate_endpoint_metrics_known", endpoint=name) == 1.0
    assert await gateway_sample(gw, "slogate_endpoint_scrape_errors_total", endpoint=name) == 0.0
    assert await gateway_sample(gw, "slogate_background_task_errors_total", task="scrape") == 0.0


# -- answers that are wrong, then right -----------------------------------------------------
def _corrupt_gzip() -> bytes:
    data = bytearray(gzip.compress(VLLM_EXPOSITION))
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    return bytes(data)


BAD_ANSWERS: dict[str, tuple[bytes, dict[str, str]]] = {
    # What the gateway saw before the fix: gzip bytes it had not asked to decode.
    "undeclared-gzip": (gzip.compress(VLLM_EXPOSITION), {}),
    "garbage-bytes": (bytes(range(256)) * 16, {}),
    "invalid-utf8": (VLLM_EXPOSITION.replace(b"# HELP", b"# HELP \xc3\x28", 1), {}),
    "broken-gzip-stream": (_corrupt_gzip(), {"Content-Encoding": "gzip"}),
    "not-gzip-at-all": (VLLM_EXPOSITION, {"Content-Encoding": "gzip"}),
    "unasked-encoding": (b"\x1b\x00\xf8\xa5\x00", {"Content-Encoding": "br"}),
}


@pytest.mark.parametrize("bad", sorted(BAD_ANSWERS))
async def test_a_bad_answer_is_a_failed_scrape_and_the_endpoint_recovers(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, bad: str
) -> None:
    body, headers = BAD_ANSWERS[bad]
    fixed = asyncio.Event()
    good = promhttp_handler(Seen())

    async def answer(request: web.Request) -> web.StreamResponse:
        if fixed.is_set():
            return await good(request)
        return web.Response(body=body, headers={"Content-Type": "text/plain", **headers})

    server = await aiohttp_server(metrics_app(answer))
    gw = await start_gateway(aiohttp_client, server_url(server))
    store = gw.app[gateway_key].store
    name = store.endpoints[0].name

    async def failed_twice() -> bool:
        errors = await gateway_sample(gw, "slogate_endpoint_scrape_errors_total", endpoint=name)
        return (errors or 0) >= 2

    await eventually(failed_twice, what="two failed scrapes")
    detail = await ready_detail(gw)
    assert detail["detail"][name]["state"] == "metrics_unknown"
    assert detail["detail"][name]["error"]
    assert await gateway_sample(gw, "slogate_endpoint_metrics_known", endpoint=name) == 0.0
    assert not background_task(f"scrape:{name}").done()

    fixed.set()

    async def up() -> bool:
        return bool((await ready_detail(gw))["detail"][name] == {"state": "up"})

    await eventually(up, what="the endpoint up again")
    metrics = store.metrics(name)
    assert metrics is not None
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (3, 17, 0.4172)
    assert await gateway_sample(gw, "slogate_endpoint_metrics_known", endpoint=name) == 1.0
    # An answer that does not decode is an ordinary failed scrape, not a crash of the task.
    assert await gateway_sample(gw, "slogate_background_task_errors_total", task="scrape") == 0.0
