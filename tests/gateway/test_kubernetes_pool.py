"""The gateway's pool from the Kubernetes API: a fake API server, real sim pods, real HTTP.

Pods share one port, as the model servers of an InferencePool do; each sim listens on its own
loopback address (127.0.0.2, .3, ...), which is the pod's IP in the fake API server.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from config import GatewayConfig, KubernetesDiscoveryConfig, PoolConfig, SchedulingConfig
from gateway.app import create_app
from gateway.backends.kube_access import KubeApi
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import served_by, wait_for_status
from tests.gateway.fake_kube_api import FakeKubeApi, make_pod
from tests.gateway.test_membership import until

PROMPT = [9, 8, 7]
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def shared_port() -> int:
    """A port free on every address of ``ADDRESSES``."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((ADDRESSES[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in ADDRESSES:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback address")


@pytest.fixture
async def pods() -> AsyncIterator[tuple[int, dict[str, SimServer]]]:
    port = shared_port()
    sims = {
        ADDRESSES[0]: await start_sim_server(
            SimConfig(time_scale=2.0), host=ADDRESSES[0], port=port
        ),
        **{
            host: await start_sim_server(SimConfig(time_scale=50.0), host=host, port=port)
            for host in ADDRESSES[1:]
        },
    }
    yield port, sims
    for sim in sims.values():
        await sim.close()


@pytest.fixture
async def fake(aiohttp_server: AiohttpServer) -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    server = await aiohttp_server(api.app)
    api.url = str(server.make_url("")).rstrip("/")
    yield api
    api.end_watches()  # the gateway is gone by now; its watch would hold the server open


async def finished(sim: SimServer) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/sim/stats") as resp:
        return sum(orjson.loads(await resp.read())["finished"].values())


async def test_pods_join_leave_and_move_while_requests_run(
    pods: tuple[int, dict[str, SimServer]], fake: FakeKubeApi, aiohttp_client: AiohttpClient
) -> None:
    port, sims = pods
    first, second, third = ADDRESSES
    cfg = GatewayConfig(
        pool=PoolConfig(
            kubernetes=KubernetesDiscoveryConfig(
                selector={"llm-d.ai/guide": "optimized-baseline"}, port=port, namespace="llm"
            ),
            scrape_interval_ms=20,
        ),
        scheduling=SchedulingConfig(preset="round-robin"),
    )
    labels = {"llm-d.ai/guide": "optimized-baseline"}
    fake.put(make_pod("vllm-0", first, labels=labels, namespace="llm"))
    fake.put(make_pod("other", second, labels={"app": "else"}, namespace="llm"))
    gw = await aiohttp_client(create_app(cfg, Dependencies(kube_api=KubeApi(server=fake.url))))
    gateway = gw.app[gateway_key]
    await wait_for_status(gw, "/ready", 200)
    assert [e.name for e in gateway.store.endpoints] == ["vllm-0"]  # the selector's only

    # A second pod turns ready: it joins and gets traffic.
    fake.put(make_pod("vllm-1", second, labels=labels, namespace="llm", ready=False))
    fake.put(make_pod("vllm-1", second, labels=labels, namespace="llm"))
    await until(lambda: gateway.store.serves("vllm-1", "sim-llm"), "vllm-1 joined")

    # vllm-0 turns unready while a stream runs on it: the stream finishes, nothing new goes.
    stream = asyncio.create_task(served_by(gw, PROMPT, 200))
    await until(lambda: gateway.store.inflight.load("vllm-0").requests == 1, "a stream on vllm-0")
    fake.put(make_pod("vllm-0", first, labels=labels, namespace="llm", ready=False))
    await until(lambda: "vllm-0" not in gateway.store, "vllm-0 left")
    assert await stream == "vllm-0"
    assert {await served_by(gw, PROMPT, 2) for _ in range(4)} == {"vllm-1"}

    # vllm-1 is rescheduled with a new IP: its old address gets nothing more.
    before = await finished(sims[second])
    fake.put(make_pod("vllm-1", third, labels=labels, namespace="llm"))
    await until(
        lambda: any(e.url.startswith(f"http://{third}") for e in gateway.store.endpoints),
        "vllm-1 moved",
    )
    await until(lambda: gateway.store.serves("vllm-1", "sim-llm"), "vllm-1's models again")
    assert {await served_by(gw, PROMPT, 2) for _ in range(3)} == {"vllm-1"}
    assert await finished(sims[second]) == before
    assert await finished(sims[third]) == 3

    # The last pod is deleted: nothing is usable, /ready says so.
    fake.delete("vllm-1", namespace="llm")
    await until(lambda: not gateway.store.endpoints, "the pool emptied")
    await wait_for_status(gw, "/ready", 503)
    exposition = (await (await gw.get("/metrics")).read()).decode()
    assert 'endpoint="vllm-0"' not in exposition
    assert 'slogate_background_task_errors_total{task="kubernetes"} 0.0' in exposition


async def test_ready_waits_for_the_first_list(
    fake: FakeKubeApi, aiohttp_client: AiohttpClient
) -> None:
    cfg = GatewayConfig(
        pool=PoolConfig(kubernetes=KubernetesDiscoveryConfig(selector={"app": "llm"})),
    )
    fake.fail(503)  # the API server is not answering yet
    gw = await aiohttp_client(create_app(cfg, Dependencies(kube_api=KubeApi(server=fake.url))))
    resp = await gw.get("/ready")
    assert resp.status == 503
    assert orjson.loads(await resp.read())["status"] == "pods not listed yet"
    gateway = gw.app[gateway_key]
    await until(
        lambda: gateway.metrics.background_task_errors.labels("kubernetes").value >= 1,
        "the failure counted",
    )
