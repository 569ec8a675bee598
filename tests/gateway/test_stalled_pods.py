"""A pod that stalls (alive, answering its metrics, but sending nothing on its streams) is
passed over as soon as its silence passes ``upstream.silent_after_s``, long before a read-idle
timeout ends its streams; it gets requests again once it speaks. Real sim pods, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from config import EndpointConfig, GatewayConfig, PoolConfig, SchedulingConfig, UpstreamConfig
from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import MakeGateway, served_by
from tests.gateway.test_membership import until

PROMPT = [3, 1, 4, 1, 5]


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(SimConfig(time_scale=5.0)) for _ in range(2)]
    yield servers
    for server in servers:
        await server.close()


async def set_speed(sim: SimServer, speed: float) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.url}/sim/speed", json={"speed": speed}) as resp,
    ):
        assert resp.status == 200


async def test_a_silent_pod_gets_no_new_requests_until_it_speaks(
    sims: list[SimServer], make_gateway: MakeGateway
) -> None:
    fast, stalling = sims
    gw = await make_gateway(
        GatewayConfig(
            pool=PoolConfig(
                endpoints=(
                    EndpointConfig(url=fast.url, name="fast"),
                    EndpointConfig(url=stalling.url, name="stalling"),
                ),
                scrape_interval_ms=20,
            ),
            upstream=UpstreamConfig(silent_after_s=0.3, read_idle_timeout_s=30),
            scheduling=SchedulingConfig(preset="round-robin"),
        )
    )
    gateway = gw.app[gateway_key]
    streams = [asyncio.create_task(served_by(gw, PROMPT, 400)) for _ in range(2)]
    await until(lambda: gateway.store.inflight.load("stalling").requests == 1, "a stream there")
    await set_speed(stalling, 1e-6)  # it stalls mid-stream; its /metrics still answers
    await until(lambda: gateway.store.stalled("stalling", gateway.clock()), "seen as stalled")

    ready = orjson.loads(await (await gw.get("/ready")).read())
    assert ready["detail"]["stalling"]["stalled"] is True
    assert ready["detail"]["stalling"]["state"] == "up"  # scrapes alone would not tell
    served = [await served_by(gw, PROMPT, 2) for _ in range(4)]
    assert served == ["fast"] * 4
    exposition = (await (await gw.get("/metrics")).read()).decode()
    silent = next(
        line
        for line in exposition.splitlines()
        if line.startswith('slogate_endpoint_silent_seconds{endpoint="stalling"}')
    )
    assert float(silent.split()[-1]) >= 0.3

    await set_speed(stalling, 1.0)  # it recovers: its stream speaks again
    await until(lambda: not gateway.store.stalled("stalling", gateway.clock()), "heard again")
    assert set(await asyncio.gather(*streams)) == {"fast", "stalling"}  # both streams finished
    assert {await served_by(gw, PROMPT, 2) for _ in range(4)} == {"fast", "stalling"}
