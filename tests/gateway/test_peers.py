"""Gateway replicas share their in-flight counts: two real gateways, real sim pods, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from config import (
    EndpointConfig,
    GatewayConfig,
    PeersConfig,
    PoolConfig,
    SchedulingConfig,
    ServerConfig,
)
from gateway.app import Gateway, create_app
from gateway.backends.peers import parse_report
from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.test_membership import until

PROMPT = [2, 7, 1, 8]


@pytest.fixture
async def pods() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(SimConfig(time_scale=2.0)) for _ in range(2)]
    yield servers
    for server in servers:
        await server.close()


def replica(pods: list[SimServer], peer_port: int, token: str = "") -> GatewayConfig:
    return GatewayConfig(
        server=ServerConfig(metrics_token=token),
        pool=PoolConfig(
            endpoints=(
                EndpointConfig(url=pods[0].url, name="pod-a"),
                EndpointConfig(url=pods[1].url, name="pod-b"),
            ),
            scrape_interval_ms=20,
            peers=PeersConfig(urls=(f"http://127.0.0.1:{peer_port}",), interval_ms=20),
        ),
        scheduling=SchedulingConfig(preset="least-request"),
    )


async def stream(server: TestServer, max_tokens: int) -> str:
    body = {"model": "sim-llm", "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/v1/completions"), json={**body, "ignore_eos": True}) as r,
    ):
        assert r.status == 200
        await r.read()
        return r.headers["x-slogate-endpoint"]


async def two_replicas(
    pods: list[SimServer],
    aiohttp_server: AiohttpServer,
    unused_port: Callable[[], int],
    token: str = "",
) -> tuple[TestServer, TestServer]:
    port_one, port_two = unused_port(), unused_port()
    one = await aiohttp_server(create_app(replica(pods, port_two, token)), port=port_one)
    two = await aiohttp_server(create_app(replica(pods, port_one, token)), port=port_two)
    for server in (one, two):
        gateway = server.app[gateway_key]
        await until(lambda g=gateway: len(g.store.usable(g.clock())) == 2, "both pods usable")
        await until(lambda g=gateway: g.store.serves("pod-b", "sim-llm"), "models known")
    return one, two


def gw(server: TestServer) -> Gateway:
    return server.app[gateway_key]


async def long_stream_heard(
    one: TestServer, two: TestServer, tokens: int
) -> tuple[asyncio.Task[str], str]:
    """A stream of ``tokens`` through replica one, once replica two counts it: the running
    stream and the pod it went to."""
    long = asyncio.create_task(stream(one, tokens))
    await until(lambda: len(gw(one).store.inflight) == 1, "the stream is running")
    busy = next(n for n in ("pod-a", "pod-b") if gw(one).store.inflight.local(n).requests)
    await until(lambda: gw(two).store.inflight.load(busy).requests == 1, "two hears of it")
    return long, busy


async def test_each_replica_routes_on_what_the_other_has_in_flight(
    pods: list[SimServer],
    aiohttp_server: AiohttpServer,
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    one, two = await two_replicas(pods, aiohttp_server, unused_tcp_port_factory)
    # Replica one puts a long stream on a pod; replica two has nothing in flight itself.
    long, busy = await long_stream_heard(one, two, 300)
    idle = "pod-b" if busy == "pod-a" else "pod-a"
    assert gw(two).store.inflight.local(busy).requests == 0

    # Least-request on replica two now avoids the pod replica one loaded.
    assert [await stream(two, 2) for _ in range(3)] == [idle] * 3

    # The report itself: replica one's own part only.
    async with (
        aiohttp.ClientSession() as session,
        session.get(one.make_url("/slogate/v1/inflight")) as resp,
    ):
        report = parse_report(await resp.read())
    assert report[busy].requests == 1
    assert report[busy].prefill_tokens >= 0

    assert await long == busy
    await until(lambda: gw(two).store.inflight.load(busy).requests == 0, "the end is heard")


async def test_a_peer_that_goes_away_stops_counting(
    pods: list[SimServer],
    aiohttp_server: AiohttpServer,
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    one, two = await two_replicas(pods, aiohttp_server, unused_tcp_port_factory)
    long, busy = await long_stream_heard(one, two, 400)

    long.cancel()
    await one.close()  # replica one is gone: its last report expires

    await until(lambda: gw(two).store.inflight.load(busy).requests == 0, "forgotten")


async def test_the_report_needs_the_metrics_token_when_one_is_set(
    pods: list[SimServer],
    aiohttp_server: AiohttpServer,
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    one, two = await two_replicas(pods, aiohttp_server, unused_tcp_port_factory, token="s3cret")
    async with (
        aiohttp.ClientSession() as session,
        session.get(one.make_url("/slogate/v1/inflight")) as resp,
    ):
        assert resp.status == 401
        assert "error" in orjson.loads(await resp.read())
    # The replicas present it to each other.
    long, _ = await long_stream_heard(one, two, 300)
    await long
