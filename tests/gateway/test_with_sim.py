"""End to end: the official openai client through the gateway to simulated vLLM pods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from tests.gateway.conftest import MakeGateway, Recorder, gateway_config

FAST = SimConfig(time_scale=50.0)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_sim_server(FAST)
    yield server
    await server.close()


@pytest.fixture
async def gw(sim: SimServer, make_gateway: MakeGateway) -> TestClient[web.Request, web.Application]:
    return await make_gateway(gateway_config(sim.url))


def openai_client(gw: TestClient[web.Request, web.Application]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key="unused", max_retries=0)


async def test_openai_chat_stream(gw: TestClient[web.Request, web.Application]) -> None:
    async with openai_client(gw) as client:
        stream = await client.chat.completions.create(
            model="sim-llm",
            messages=[{"role": "user", "content": "Tell me about routers."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    assert len(text) == 12
    assert usage is not None
    assert usage.completion_tokens == 12


async def test_openai_chat_non_stream(gw: TestClient[web.Request, web.Application]) -> None:
    async with openai_client(gw) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="sim-llm",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            extra_body={"ignore_eos": True},
        )
        completion = reply.parse()
    assert reply.headers["x-slogate-endpoint"]
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


async def test_openai_completions_stream_and_non_stream(
    gw: TestClient[web.Request, web.Application],
) -> None:
    async with openai_client(gw) as client:
        stream = await client.completions.create(
            model="sim-llm", prompt="Once upon a time", max_tokens=8, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        pieces = [c.choices[0].text async for c in stream if c.choices and c.choices[0].text]
        whole = await client.completions.create(
            model="sim-llm", prompt="Once upon a time", max_tokens=8,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
    assert len(pieces) == 8
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 8


async def test_openai_models_and_unknown_model(
    gw: TestClient[web.Request, web.Application],
) -> None:
    async with openai_client(gw) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["sim-llm"]
        with pytest.raises(openai.NotFoundError) as info:
            await client.completions.create(model="nope", prompt="x")
    assert info.value.code == "model_not_found"


async def _running(sim: SimServer) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("vllm:num_requests_running missing")


async def test_client_disconnect_frees_the_pod(
    make_gateway: MakeGateway, recorder: Recorder
) -> None:
    slow = await start_sim_server(SimConfig(time_scale=1.0))
    try:
        client = await make_gateway(gateway_config(slow.url))
        body = {
            "model": "sim-llm",
            "prompt": "write forever",
            "max_tokens": 4000,
            "ignore_eos": True,
            "stream": True,
        }
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 200
        await resp.content.readany()  # the stream is flowing
        assert await _running(slow) == 1
        gateway = client.app[gateway_key]
        assert len(gateway.store.inflight) == 1
        resp.close()  # the client goes away mid-stream
        await asyncio.wait_for(recorder.ended.wait(), 5)
        assert recorder.records[0].outcome.value == "client_disconnected"
        for _ in range(100):
            if await _running(slow) == 0:
                break
            await asyncio.sleep(0.02)
        assert await _running(slow) == 0
        assert len(gateway.store.inflight) == 0
    finally:
        await slow.close()


async def test_metric_names_present(
    gw: TestClient[web.Request, web.Application],
) -> None:
    resp = await gw.post(
        "/v1/chat/completions",
        json={
            "model": "sim-llm",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
        },
    )
    await resp.read()
    await (await gw.post("/v1/nope", json={})).read()
    text = ""
    for _ in range(50):
        text = await (await gw.get("/metrics")).text()
        if "inference_objective_request_ttft_seconds_count" in text:
            break
        await asyncio.sleep(0.02)
    for name in (
        "inference_objective_request_ttft_seconds_bucket",
        "inference_objective_request_tpot_seconds_bucket",
        "inference_objective_request_total",
        "inference_objective_request_duration_seconds_bucket",
        "inference_objective_input_tokens_bucket",
        "inference_objective_output_tokens_bucket",
        'slogate_http_requests_total{code="200",route="/v1/chat/completions"}',
        'slogate_http_requests_total{code="404",route="unmatched"}',
        "slogate_http_request_duration_seconds_bucket",
        "slogate_request_dispatch_duration_seconds_bucket",
        "inference_extension_scheduler_e2e_duration_seconds_bucket",
        "inference_extension_plugin_duration_seconds_bucket",
        "slogate_endpoint_inflight_requests{endpoint=",
        "slogate_endpoint_inflight_prefill_tokens{endpoint=",
        "slogate_endpoint_up{endpoint=",
        "inference_pool_ready_pods 1.0",
        "inference_pool_average_kv_cache_utilization",
        "inference_pool_average_queue_size",
    ):
        assert name in text, name
    assert 'model_name="sim-llm"' in text
