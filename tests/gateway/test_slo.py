"""Latency objectives, priorities and shedding, end to end: real sim pods, real HTTP.

- bad SLO headers and unknown objectives get a 400 that names the header;
- with spare capacity, requests with objectives meet them and no violation is counted (and a
  request that cannot meet its objective is served and counted as a violation);
- with every pod busy, ``sheddable`` requests get 429 with ``x-llm-d-request-dropped-reason``
  while ``critical`` ones are served;
- a tight TPOT objective running on a pod keeps new streamed requests off it;
- ``x-slogate-explain`` shows every candidate and why it was removed, only when enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from config import (
    AdmissionQueueConfig,
    EndpointConfig,
    GatewayConfig,
    PoolConfig,
    PredictorConfig,
    SchedulingConfig,
    SloConfig,
)
from gateway.app import create_app
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from gateway.training_worker import TrainingWorker
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import MakeGateway, gateway_config, server_url, wait_for_status
from tests.support import training_faults

Client = TestClient[web.Request, web.Application]
MODEL = "sim-llm"


def slo_config(pods: list[SimServer], *, explain: bool = False, **predictor: Any) -> GatewayConfig:
    return GatewayConfig(
        pool=PoolConfig(endpoints=tuple(EndpointConfig(url=p.url) for p in pods)),
        scheduling=SchedulingConfig(preset="predicted-latency-slo"),
        predictor=PredictorConfig(**{"retrain_interval_s": 0.05, "min_samples": 10, **predictor}),
        slo=SloConfig(explain=explain),
    )


async def start(aiohttp_client: AiohttpClient, cfg: GatewayConfig) -> Client:
    worker = TrainingWorker(training_faults.train)
    client = await aiohttp_client(create_app(cfg, Dependencies(training_worker=worker)))
    await wait_for_status(client, "/ready", 200)
    return client


@contextlib.asynccontextmanager
async def sim_pods(n: int, config: SimConfig) -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(config) for _ in range(n)]
    try:
        yield servers
    finally:
        for server in servers:
            await server.close()


def completion(max_tokens: int = 4, prompt: str = "tell me something") -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }


async def post(
    client: Client, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    resp = await client.post("/v1/completions", data=orjson.dumps(body), headers=headers or {})
    data = await resp.read()
    return resp.status, data, resp.headers


def total(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` that carry ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def settled(client: Client, name: str, expected: float) -> str:
    """The gateway's metrics once ``name`` sums to ``expected`` (a request's bookkeeping ends
    just after its last byte leaves)."""
    for _ in range(200):
        metrics = await (await client.get("/metrics")).text()
        if total(metrics, name) >= expected:
            return metrics
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never reached {expected}")


async def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never became true")


# -- the request interface -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "param", "code"),
    [
        ({"x-llm-d-slo-ttft-ms": "fast"}, "x-llm-d-slo-ttft-ms", "invalid_slo_header"),
        ({"x-llm-d-slo-tpot-ms": "0"}, "x-llm-d-slo-tpot-ms", "invalid_slo_header"),
        ({"x-slo-ttft-ms": "-20"}, "x-slo-ttft-ms", "invalid_slo_header"),
        ({"x-slo-tpot-ms": "nan"}, "x-slo-tpot-ms", "invalid_slo_header"),
        ({"x-llm-d-slo-ttft-ms": "inf"}, "x-llm-d-slo-ttft-ms", "invalid_slo_header"),
        (
            {"x-llm-d-inference-objective": "vip"},
            "x-llm-d-inference-objective",
            "unknown_objective",
        ),
        (
            {"x-gateway-inference-objective": "vip"},
            "x-llm-d-inference-objective",
            "unknown_objective",
        ),
    ],
)
async def test_bad_slo_headers_and_unknown_objectives_are_400(
    instant_backend: TestServer,
    make_gateway: MakeGateway,
    headers: dict[str, str],
    param: str,
    code: str,
) -> None:
    client = await make_gateway(gateway_config(server_url(instant_backend)))
    status, body, _ = await post(client, completion(), headers)
    assert status == 400
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-llm-d-slo-ttft-ms": "250.5", "x-llm-d-slo-tpot-ms": "40"},
        {"x-slo-ttft-ms": "300", "x-gateway-inference-objective": "critical"},
        # The canonical name wins: its alias is not even read.
        {"x-llm-d-slo-ttft-ms": "300", "x-slo-ttft-ms": "garbage"},
        {"x-llm-d-inference-objective": "sheddable"},
    ],
)
async def test_good_slo_headers_are_served(
    instant_backend: TestServer, make_gateway: MakeGateway, headers: dict[str, str]
) -> None:
    client = await make_gateway(gateway_config(server_url(instant_backend)))
    status, _, _ = await post(client, completion(), headers)
    assert status == 200


# -- objectives met and missed, counted ------------------------------------------------------
async def test_with_spare_capacity_objectives_are_met_and_misses_are_counted(
    aiohttp_client: AiohttpClient,
) -> None:
    async with sim_pods(2, SimConfig(time_scale=20.0)) as pods:
        client = await start(aiohttp_client, slo_config(pods))
        generous = {"x-llm-d-slo-ttft-ms": "5000", "x-llm-d-slo-tpot-ms": "1000"}
        for _ in range(8):
            status, _, _ = await post(client, completion(8), generous)
            assert status == 200
        slo = "slogate_slo_requests_total"
        metrics = await settled(client, slo, 8)
        assert total(metrics, slo, objective="standard", met="true", model_name=MODEL) == 8
        assert total(metrics, "inference_objective_request_slo_violation_total") == 0
        assert total(metrics, "slogate_slo_request_ttft_seconds_count") == 8
        assert total(metrics, "slogate_slo_request_predicted_ttft_seconds_count") == 8
        assert total(metrics, "slogate_slo_request_tpot_seconds_count") == 8

        # Priority 0 is always admitted, even when no pod can meet its objective; the miss is
        # counted under both dashboards' names.
        impossible = {"x-llm-d-slo-ttft-ms": "0.001"}
        status, _, _ = await post(client, completion(8), impossible)
        assert status == 200
        metrics = await settled(client, slo, 9)
        assert total(metrics, slo, objective="standard", met="false") == 1
        violations = "inference_objective_request_slo_violation_total"
        assert total(metrics, violations, type="ttft", target_model_name=MODEL) == 1
        assert total(metrics, violations, type="tpot") == 0
        assert total(metrics, "inference_objective_request_ttft_slo_violation_total") == 1
        assert total(metrics, "inference_objective_request_tpot_slo_violation_total") == 0


# -- shedding ----------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def saturated(pods: list[SimServer], *clients: Client) -> AsyncIterator[None]:
    """Every pod kept busy by 7 long streams sent to it directly (not through a gateway), until
    each gateway has scraped a queue of at least 5 on every pod; cancelled on exit."""

    async def one(session: aiohttp.ClientSession, pod: SimServer) -> None:
        async with session.post(f"{pod.url}/v1/completions", json=completion(4000)) as resp:
            async for _ in resp.content.iter_any():
                pass

    def queues_full(client: Client) -> bool:
        store = client.app[gateway_key].store
        return all(
            (m := store.metrics(e.name)) is not None and m.waiting >= 5 for e in store.endpoints
        )

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(one(session, pod)) for pod in pods for _ in range(7)]
        try:
            await wait_for(lambda: all(queues_full(c) for c in clients))
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_when_every_pod_is_busy_sheddable_work_is_refused_and_critical_work_served(
    aiohttp_client: AiohttpClient,
) -> None:
    async with sim_pods(2, SimConfig(max_num_seqs=1, time_scale=1.0)) as pods:
        client = await start(aiohttp_client, slo_config(pods))
        async with saturated(pods, client):
            # With an objective no pod is predicted to meet, and no pod idle.
            tight = {"x-llm-d-slo-ttft-ms": "0.001"}
            shed = {**tight, "x-llm-d-inference-objective": "sheddable"}
            status, body, headers = await post(client, completion(), shed)
            assert status == 429
            assert headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
            assert headers["retry-after"] == "1"
            error = orjson.loads(body)["error"]
            assert error["type"] == "rate_limit_error"
            assert error["code"] == "rejected_saturated"
            # Without objectives: every pod's queue is past its depth.
            status, _, headers = await post(
                client, completion(), {"x-llm-d-inference-objective": "sheddable"}
            )
            assert status == 429
            assert headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
            metrics = await (await client.get("/metrics")).text()
            sheds = "slogate_requests_shed_total"
            assert total(metrics, sheds, objective="sheddable", reason="rejected-saturated") == 2
        # The critical request with the same objective is admitted (and served once the pods
        # have dropped the cancelled streams).
        critical = {**tight, "x-llm-d-inference-objective": "critical"}
        status, _, _ = await post(client, completion(), critical)
        assert status == 200


# -- running-request protection and explain ----------------------------------------------------
async def test_a_tight_tpot_objective_running_on_a_pod_keeps_new_streams_off_it(
    aiohttp_client: AiohttpClient,
) -> None:
    async with sim_pods(3, SimConfig(time_scale=5.0)) as pods:
        client = await start(aiohttp_client, slo_config(pods, explain=True, n_trees=20))
        gw = client.app[gateway_key]

        def has_tpot_model() -> bool:
            model = gw.predictor.model
            return model is not None and model.tpot is not None

        for _ in range(20):
            for _ in range(10):
                await post(client, completion(6))
            if has_tpot_model():
                break
        await wait_for(has_tpot_model)
        gw.predictor.enabled = False  # no new generation mid-test
        await wait_for(lambda: not gw.trainer.in_run)

        tight = {"x-llm-d-slo-tpot-ms": "0.01", "x-llm-d-inference-objective": "critical"}
        resp = await client.post(
            "/v1/completions", data=orjson.dumps(completion(4000)), headers=tight
        )
        assert resp.status == 200
        protected = resp.headers["x-slogate-endpoint"]
        await resp.content.readany()  # running: its first token came back
        try:
            served: list[str] = []
            removed: list[str | None] = []
            for i in range(20):
                # Each prompt its own (no prefix affinity), long enough to be heavy.
                heavy = completion(4, prompt=f"{i} " + "word " * 1500)
                status, _, headers = await post(client, heavy, {"x-slogate-explain": "1"})
                assert status == 200
                served.append(headers["x-slogate-endpoint"])
                explained = orjson.loads(headers["x-slogate-explain"])["candidates"]
                assert explained[0]["endpoint"] == headers["x-slogate-endpoint"]
                assert explained[0]["chosen"] is True
                assert len(explained) == 3
                entry = next(e for e in explained if e["endpoint"] == protected)
                assert entry["headroom_ms"]["tpot"] < 0
                removed.append(entry.get("removed_by"))
            # 1 % of requests probe the negative tier; 3 of 20 would happen once in 1,000 runs.
            assert served.count(protected) <= 2, served
            assert removed.count("slo-headroom-tier-filter") >= 18
        finally:
            resp.close()

        # Once it is gone, the pod is no longer protected.
        await wait_for(lambda: not gw.store.inflight.load(protected).requests)
        fresh = completion(4, prompt="fresh " + "word " * 1500)
        status, _, headers = await post(client, fresh, {"x-slogate-explain": "1"})
        assert status == 200
        entries = orjson.loads(headers["x-slogate-explain"])["candidates"]
        assert all("removed_by" not in e and "headroom_ms" not in e for e in entries)


async def test_explain_is_off_unless_the_operator_enables_it(
    aiohttp_client: AiohttpClient,
) -> None:
    async with sim_pods(2, SimConfig(time_scale=20.0)) as pods:
        client = await start(aiohttp_client, slo_config(pods))
        status, _, headers = await post(client, completion(), {"x-slogate-explain": "1"})
        assert status == 200
        assert "x-slogate-explain" not in headers
        cfg = dataclasses.replace(slo_config(pods), slo=SloConfig(explain=True))
        client = await start(aiohttp_client, cfg)
        status, _, headers = await post(client, completion(), {"x-slogate-explain": "1"})
        assert status == 200
        entries = orjson.loads(headers["x-slogate-explain"])["candidates"]
        assert {e["endpoint"] for e in entries} == {f"{p.host}:{p.port}" for p in pods}
        assert all("predicted_ms" in e and "score" in e for e in entries)
        status, _, headers = await post(client, completion())
        assert "x-slogate-explain" not in headers


async def test_with_flow_control_refused_work_waits_for_room(
    aiohttp_client: AiohttpClient,
) -> None:
    async with sim_pods(2, SimConfig(max_num_seqs=1, time_scale=1.0)) as pods:
        patient = dataclasses.replace(
            slo_config(pods), slo=SloConfig(queue=AdmissionQueueConfig(enabled=True))
        )
        impatient = dataclasses.replace(
            patient,
            slo=SloConfig(queue=AdmissionQueueConfig(enabled=True, max_wait_ms=200)),
        )
        client = await start(aiohttp_client, patient)
        hasty = await start(aiohttp_client, impatient)
        async with saturated(pods, client, hasty):
            sheddable = {"x-llm-d-inference-objective": "sheddable"}
            status, _, headers = await post(hasty, completion(), sheddable)
            assert status == 429
            assert headers["x-llm-d-request-dropped-reason"] == "rejected-ttl-expired"

            waiting = asyncio.create_task(post(client, completion(), sheddable))
            await settled(client, "inference_extension_flow_control_queue_size", 1)
            assert not waiting.done()
        status, _, _ = await waiting  # the pods drained: room
        assert status == 200
        metrics = await (await client.get("/metrics")).text()
        waited = "inference_extension_flow_control_request_queue_duration_seconds_count"
        assert total(metrics, waited, outcome="admitted", priority="-1") == 1
        assert total(metrics, "inference_extension_flow_control_queue_size") == 0
        assert total(metrics, "slogate_requests_shed_total") == 0
