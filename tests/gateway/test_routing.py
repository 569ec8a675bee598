"""Routing decisions through the real gateway in front of simulated vLLM pods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import MakeGateway, gateway_config

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def pods() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(SimConfig(max_num_seqs=2, time_scale=20.0)) for _ in range(2)]
    yield servers
    for server in servers:
        await server.close()


def name_of(pod: SimServer) -> str:
    return f"{pod.host}:{pod.port}"


async def served_by(gw: Client, body: dict[str, Any]) -> str:
    resp = await gw.post("/v1/completions", json=body)
    await resp.read()
    assert resp.status == 200
    return resp.headers["x-slogate-endpoint"]


async def test_load_prefix_avoids_the_loaded_pod(
    pods: list[SimServer], make_gateway: MakeGateway
) -> None:
    busy, idle = pods
    gw = await make_gateway(gateway_config(busy.url, idle.url, preset="load-prefix"))
    store = gw.app[gateway_key].store
    long_request = {
        "model": "sim-llm", "prompt": "a long job", "max_tokens": 3000, "ignore_eos": True,
    }  # fmt: skip
    async with aiohttp.ClientSession() as direct:
        # Six long jobs straight to one pod: two run, four wait (max_num_seqs=2).
        jobs = [
            asyncio.create_task(direct.post(f"{busy.url}/v1/completions", json=long_request))
            for _ in range(6)
        ]
        try:
            for _ in range(200):
                metrics = store.metrics(name_of(busy))
                if metrics is not None and metrics.waiting >= 3:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the busy pod's queue never showed up in scraped metrics")
            short = {"model": "sim-llm", "prompt": "quick question", "max_tokens": 4}
            served = [await served_by(gw, short) for _ in range(8)]
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
    assert served == [name_of(idle)] * 8


async def test_shared_prefix_sticks_to_the_pod_that_holds_it(
    pods: list[SimServer], make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(gateway_config(*(p.url for p in pods), preset="load-prefix"))
    system = "You are a meticulous assistant for the routing team. " * 120  # ~1.3k tokens
    first = await served_by(gw, {"model": "sim-llm", "prompt": system + "Q0?", "max_tokens": 2})
    followers = [
        await served_by(gw, {"model": "sim-llm", "prompt": system + f"Q{i}?", "max_tokens": 2})
        for i in range(1, 7)
    ]
    assert followers == [first] * 6


async def test_round_robin_ignores_prefix(pods: list[SimServer], make_gateway: MakeGateway) -> None:
    gw = await make_gateway(gateway_config(*(p.url for p in pods), preset="round-robin"))
    system = "You are a meticulous assistant for the routing team. " * 120
    served = [
        await served_by(gw, {"model": "sim-llm", "prompt": system + f"Q{i}?", "max_tokens": 2})
        for i in range(4)
    ]
    assert sorted(set(served)) == sorted(name_of(p) for p in pods)
