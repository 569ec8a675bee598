"""Fixtures for gateway tests: real backends and a real gateway on loopback ports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from config import (
    EndpointConfig,
    GatewayConfig,
    PoolConfig,
    SchedulingConfig,
    ServerConfig,
    UpstreamConfig,
)
from gateway.app import create_app
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from loadtest.instant_backend import create_instant_app
from scheduler.datalayer.store import Health
from scheduler.framework.plugins import RequestRecord
from scheduler.framework.types import InferenceRequest


@dataclass
class Recorder:
    """A RequestObserver that keeps what the gateway published."""

    first_tokens: list[tuple[str, str]] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def on_first_token(self, request: InferenceRequest, endpoint: str, now: float) -> None:
        self.first_tokens.append((request.request_id, endpoint))

    def on_end(self, request: InferenceRequest, record: RequestRecord) -> None:
        self.records.append(record)
        self.ended.set()


def gateway_config(
    *urls: str,
    preset: str = "round-robin",
    models: tuple[str, ...] = (),
    server: ServerConfig | None = None,
    upstream: UpstreamConfig | None = None,
    scrape_interval_ms: int = 50,
) -> GatewayConfig:
    return GatewayConfig(
        server=server or ServerConfig(),
        upstream=upstream or UpstreamConfig(),
        pool=PoolConfig(
            endpoints=tuple(EndpointConfig(url=u) for u in urls),
            models=models,
            scrape_interval_ms=scrape_interval_ms,
        ),
        scheduling=SchedulingConfig(preset=preset),
    )


MakeGateway = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def instant_backend(aiohttp_server: AiohttpServer) -> TestServer:
    return await aiohttp_server(create_instant_app())


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_gateway(aiohttp_client: AiohttpClient, recorder: Recorder) -> MakeGateway:
    async def make(
        cfg: GatewayConfig, *, wait_ready: bool = True
    ) -> TestClient[web.Request, web.Application]:
        client = await aiohttp_client(create_app(cfg, Dependencies(observers=(recorder,))))
        if wait_ready:
            await wait_for_status(client, "/ready", 200)
        return client

    return make


async def wait_for_status(
    client: TestClient[web.Request, web.Application], path: str, status: int
) -> None:
    for _ in range(200):
        resp = await client.get(path)
        await resp.read()
        if resp.status == status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never answered {status}")


def server_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def wait_all_up(client: TestClient[web.Request, web.Application]) -> None:
    """Until the gateway has scraped every endpoint of its pool (load metrics known)."""
    gateway = client.app[gateway_key]
    for _ in range(200):
        if all(
            gateway.store.health(e.name, time.monotonic()) is Health.UP
            for e in gateway.store.endpoints
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not every endpoint was scraped")


async def served_by(
    client: TestClient[web.Request, web.Application], prompt: list[int], max_tokens: int
) -> str:
    """Stream a token-id completion through the gateway to its end; the pod that served it."""
    body = {
        "model": "sim-llm",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    resp = await client.post("/v1/completions", data=orjson.dumps(body))
    await resp.read()
    assert resp.status == 200
    return resp.headers["x-slogate-endpoint"]
