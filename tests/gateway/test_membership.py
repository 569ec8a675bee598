"""Endpoints joining and leaving a running gateway: real sim pods, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from config import EndpointConfig, GatewayConfig, PoolConfig, SchedulingConfig
from gateway.backends.membership import PoolChange
from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import MakeGateway, served_by

FAST = SimConfig(time_scale=50.0)
PROMPT = [1, 2, 3, 4]

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(FAST) for _ in range(3)]
    yield servers
    for server in servers:
        await server.close()


def pool_of(*pods: tuple[str, SimServer]) -> tuple[EndpointConfig, ...]:
    return tuple(EndpointConfig(url=sim.url, name=name) for name, sim in pods)


def config(*pods: tuple[str, SimServer], preset: str = "round-robin") -> GatewayConfig:
    return GatewayConfig(
        pool=PoolConfig(endpoints=pool_of(*pods), scrape_interval_ms=20),
        scheduling=SchedulingConfig(preset=preset),
    )


async def until(predicate: object, what: str) -> None:
    assert callable(predicate)
    for _ in range(250):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_a_joining_endpoint_is_scraped_and_gets_traffic(
    sims: list[SimServer], make_gateway: MakeGateway
) -> None:
    a, b, c = sims
    gw = await make_gateway(config(("a", a), ("b", b)))
    gateway = gw.app[gateway_key]

    change = gateway.membership.apply(pool_of(("a", a), ("b", b), ("c", c)))

    assert change == PoolChange(joined=("c",))
    await until(lambda: gateway.scrape_status["c"].state == "up", "c scraped")
    served = {await served_by(gw, PROMPT, 4) for _ in range(9)}
    assert served == {"a", "b", "c"}
    ready = orjson.loads(await (await gw.get("/ready")).read())
    assert set(ready["endpoints"]) == {"a", "b", "c"}


async def test_a_leaving_endpoint_finishes_its_streams_and_gets_nothing_new(
    sims: list[SimServer], make_gateway: MakeGateway
) -> None:
    a, b, _ = sims
    slow = await start_sim_server(SimConfig(time_scale=2.0))
    try:
        gw = await make_gateway(config(("slow", slow)))
        gateway = gw.app[gateway_key]
        stream = asyncio.create_task(served_by(gw, PROMPT, 300))
        await until(lambda: gateway.store.inflight.load("slow").requests == 1, "stream on slow")

        change = gateway.membership.apply(pool_of(("a", a), ("b", b)))

        assert change == PoolChange(joined=("a", "b"), left=("slow",))
        assert "slow" not in gateway.store
        assert await stream == "slow"  # relayed to its end
        await until(lambda: "sim-llm" in gateway.store.models(), "a's and b's models known")
        served = {await served_by(gw, PROMPT, 4) for _ in range(8)}
        assert "slow" not in served
        # Nothing is kept about it: no in-flight record, no metric series.
        assert gateway.store.inflight.load("slow").requests == 0
        exposition = (await (await gw.get("/metrics")).read()).decode()
        assert 'endpoint="slow"' not in exposition
        assert "slow" not in gateway.scrape_status
        assert "slow" not in gateway.engines
    finally:
        await slow.close()


async def test_an_endpoint_with_a_new_address_is_replaced(
    sims: list[SimServer], make_gateway: MakeGateway
) -> None:
    a, b, c = sims
    gw = await make_gateway(config(("a", a), ("b", b)))
    gateway = gw.app[gateway_key]

    async def finished(sim: SimServer) -> int:
        resp = await gw.session.get(f"{sim.url}/sim/stats")
        return sum(orjson.loads(await resp.read())["finished"].values())

    for _ in range(4):
        await served_by(gw, PROMPT, 4)
    before = await finished(b)
    assert before > 0

    change = gateway.membership.apply(pool_of(("a", a), ("b", c)))

    assert change == PoolChange(changed=("b",))
    assert {e.name: e.url for e in gateway.store.endpoints}["b"] == c.url
    await until(lambda: gateway.store.serves("b", "sim-llm"), "the new b's models known")
    assert {await served_by(gw, PROMPT, 4) for _ in range(6)} == {"a", "b"}
    assert await finished(b) == before  # the old address got nothing more
    assert await finished(c) == 3


async def test_two_endpoints_with_one_name_change_nothing(
    sims: list[SimServer], make_gateway: MakeGateway
) -> None:
    a, b, c = sims
    gw = await make_gateway(config(("a", a), ("b", b)))
    gateway = gw.app[gateway_key]

    with pytest.raises(ValueError, match="'b'"):
        gateway.membership.apply(pool_of(("a", a), ("b", b), ("b", c)))

    assert [e.name for e in gateway.store.endpoints] == ["a", "b"]


async def test_an_emptied_pool_answers_503_and_recovers(
    sims: list[SimServer], make_gateway: MakeGateway
) -> None:
    a, _, _ = sims
    gw = await make_gateway(config(("a", a)))
    gateway = gw.app[gateway_key]

    gateway.membership.apply(())
    resp = await gw.post("/v1/completions", data=orjson.dumps({"model": "sim-llm", "prompt": "hi"}))
    body = orjson.loads(await resp.read())
    assert resp.status in (404, 503)
    assert set(body["error"]) >= {"message", "type", "code"}
    assert (await gw.get("/ready")).status == 503

    gateway.membership.apply(pool_of(("a", a)))
    await until(lambda: gateway.scrape_status["a"].state == "up", "a scraped again")
    await until(lambda: "sim-llm" in gateway.store.models(), "a's models known")
    assert await served_by(gw, PROMPT, 4) == "a"
