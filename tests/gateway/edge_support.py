"""Helpers for tests of the gateway's edge: a real listener with production protocol settings,
raw sockets for what no well-behaved client sends, and a backend that records what reached it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer

from config import GatewayConfig
from gateway.app import create_app
from gateway.deps import Dependencies
from gateway.listener import listener_settings
from loadtest.instant_backend import create_instant_app


@dataclass
class Seen:
    """What a recording backend received: per request, its method, path and headers."""

    requests: list[tuple[str, str, CIMultiDict[str]]] = field(default_factory=list)

    def headers(self, path: str) -> list[CIMultiDict[str]]:
        return [h for _, p, h in self.requests if p == path]


def recording_backend(seen: Seen) -> web.Application:
    """The instant backend, plus ``GET /version``, recording every request it gets."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.requests.append((request.method, request.path, CIMultiDict(request.headers)))
        return await handler(request)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0-test"})

    app = create_instant_app()
    app.middlewares.append(record)
    app.router.add_get("/version", version)
    return app


async def start_gateway(
    aiohttp_server: AiohttpServer,
    cfg: GatewayConfig,
    *,
    environ: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl: ssl.SSLContext | None = None,
    deps: Dependencies | None = None,
    wait_ready: bool = True,
) -> TestServer:
    """The gateway on a loopback port, with the listener settings ``slogate serve`` uses
    (``ssl_context``: HTTPS, then ``client_ssl`` trusts it for the readiness wait)."""
    app = create_app(cfg, deps, environ={} if environ is None else environ)
    server = await aiohttp_server(app, ssl=ssl_context, **listener_settings(cfg.server))
    if wait_ready:
        await wait_ready_at(str(server.make_url("/ready")), ssl_context=client_ssl)
    return server


async def wait_ready_at(url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(250):
            async with session.get(url, ssl=ssl_context or True) as resp:
                await resp.read()
                if resp.status == 200:
                    return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never became ready")


async def raw_exchange(
    port: int, data: bytes, *, read_timeout_s: float = 5.0, pause_s: float = 0.0
) -> bytes:
    """Send ``data`` on a fresh connection (after ``pause_s``, keep it open without sending)
    and return everything the server sends until it closes or ``read_timeout_s`` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + read_timeout_s
        while (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                return out
            out += chunk
        return out + b"<still open>"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(raw: bytes) -> int:
    """The status code of the first response in ``raw``."""
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> bytes:
    """The body of the first (Content-Length framed) response in ``raw``."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return rest[: int(value)]
    return rest
