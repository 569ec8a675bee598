"""A sound cold start: before any model exists, `predicted-latency` routes on what the gateway
knows exactly (its own in-flight requests and prompt work per pod) and on how fast each pod
has answered, so it never keeps feeding a pod that is slower than its peers.

Two pods, one four times as fast as the other, on both engine models; the gateway starts with
no model and none is trained during the test (the retrain interval is longer than the test).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from config import EndpointConfig, GatewayConfig, PoolConfig, PredictorConfig, SchedulingConfig
from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import MakeGateway, served_by, wait_all_up

SPEEDS = {"fast": 4.0, "slow": 1.0}


@pytest.fixture(params=["vllm", "slots"])
async def pods(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, SimServer]]:
    servers = {
        name: await start_sim_server(
            SimConfig(engine=request.param, speed=speed, time_scale=5.0, max_num_seqs=8, seed=2)
        )
        for name, speed in SPEEDS.items()
    }
    yield servers
    for server in servers.values():
        await server.close()


async def completion(client: TestClient[web.Request, web.Application], i: int) -> str:
    return await served_by(client, list(range(10_000 + 512 * i, 10_000 + 512 * (i + 1))), 8)


async def test_the_slow_pod_is_found_out_before_any_model(
    pods: dict[str, SimServer], make_gateway: MakeGateway
) -> None:
    cfg = GatewayConfig(
        pool=PoolConfig(
            endpoints=tuple(EndpointConfig(url=p.url, name=n) for n, p in pods.items())
        ),
        scheduling=SchedulingConfig(preset="predicted-latency"),
        predictor=PredictorConfig(retrain_interval_s=3600),
    )
    client = await make_gateway(cfg)
    gateway = client.app[gateway_key]
    await wait_all_up(client)
    served: Counter[str] = Counter()
    for wave in range(12):  # two at a time: one pod could take both
        served.update(await asyncio.gather(*(completion(client, 2 * wave + j) for j in (0, 1))))
    assert gateway.predictor.model is None
    assert gateway.predictor.predicted_decisions == 0  # every decision was the estimate's
    units = {n: gateway.predictor.units.get(n) for n in SPEEDS}
    assert units["fast"] is not None
    assert units["slow"] is not None
    assert units["fast"] < units["slow"]  # learned from first tokens alone
    # Least-request would split two-at-a-time traffic evenly; the estimate sends the slow pod
    # work only when the fast one is busier than the speed difference is worth.
    assert served["fast"] >= 2 * served["slow"], served
