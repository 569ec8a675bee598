"""A sim under load, seen through /metrics: queueing, KV pressure, prefix hits, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from loadtest.sim import SIM_ENGINE_KEY, SimConfig, create_sim_app, start_sim_server

Client = TestClient[Request, Application]
MODEL = "sim-llm"

EXPECTED_METRICS = {
    "vllm:num_requests_waiting": "gauge",
    "vllm:num_requests_running": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:cache_config_info": "gauge",
    "vllm:prefix_cache_queries_total": "counter",
    "vllm:prefix_cache_hits_total": "counter",
    "vllm:prompt_tokens_total": "counter",
    "vllm:generation_tokens_total": "counter",
    "vllm:request_success_total": "counter",
    "vllm:num_preemptions_total": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}


async def scrape(client: Client) -> dict[str, float]:
    """Sample name (plus finished_reason, if any) -> value, for this sim's model."""
    response = await client.get("/metrics")
    assert response.status == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            assert sample.labels.get("model_name") == MODEL
            key = sample.name
            if "finished_reason" in sample.labels:
                key += f":{sample.labels['finished_reason']}"
            if "le" not in sample.labels:
                values[key] = sample.value
    return values


async def wait_until(
    client: Client, predicate: Callable[[dict[str, float]], bool], *, attempts: int = 500
) -> dict[str, float]:
    values: dict[str, float] = {}
    for _ in range(attempts):
        values = await scrape(client)
        if predicate(values):
            return values
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition never met; last scrape: {values}")


def stream_body(prompt: str, max_tokens: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


async def test_metric_names_and_types_are_vllms(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_sim_app(SimConfig(time_scale=1000.0)))
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    text = await (await client.get("/metrics")).text()
    exposed = {
        line.split(" ")[2]: line.split(" ")[3]
        for line in text.splitlines()
        if line.startswith("# TYPE ")
    }
    assert exposed == EXPECTED_METRICS
    assert not [line for line in text.splitlines() if "_created" in line]
    assert (
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",'
        'engine="0",gpu_memory_utilization="0.9",model_name="sim-llm",num_cpu_blocks="0",'
        'num_gpu_blocks="4096"} 1.0'
    ) in text
    values = await scrape(client)
    assert values["vllm:request_success_total:length"] == 1
    assert values["vllm:generation_tokens_total"] == 2
    assert values["vllm:time_to_first_token_seconds_count"] == 1
    assert values["vllm:inter_token_latency_seconds_count"] == 1
    assert values["vllm:e2e_request_latency_seconds_count"] == 1


async def test_waiting_queue_forms_when_the_batch_is_full(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_sim_app(SimConfig(max_num_seqs=2, time_scale=200.0)))

    async def one(i: int) -> int:
        response = await client.post("/v1/completions", json=stream_body(f"request {i}", 1000))
        return (await response.read()).count(b'"text":')

    tasks = [asyncio.create_task(one(i)) for i in range(6)]
    seen = await wait_until(client, lambda v: v["vllm:num_requests_waiting"] > 0)
    assert seen["vllm:num_requests_running"] == 2
    assert await asyncio.gather(*tasks) == [1000] * 6
    final = await scrape(client)
    assert final["vllm:num_requests_waiting"] == 0
    assert final["vllm:num_requests_running"] == 0
    assert final["vllm:request_success_total:length"] == 6


async def test_full_kv_cache_makes_requests_wait_or_preempts(aiohttp_client: AiohttpClient) -> None:
    config = SimConfig(kv_blocks=16, block_size=16, max_model_len=256, time_scale=1000.0)
    client = await aiohttp_client(create_sim_app(config))
    prompts = [list(range(i * 1000, i * 1000 + 100)) for i in range(3)]

    async def one(prompt: list[int]) -> int:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 150, "ignore_eos": True}
        return int(
            (await (await client.post("/v1/completions", json=body)).json())["usage"][
                "completion_tokens"
            ]
        )

    assert await asyncio.gather(*(one(p) for p in prompts)) == [150, 150, 150]
    values = await scrape(client)
    # Three sequences of 250 tokens need 48 blocks; 16 exist: someone had to give way.
    assert values["vllm:num_preemptions_total"] > 0
    assert values["vllm:kv_cache_usage_perc"] == 0


async def test_kv_usage_is_reported_while_running(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(
        create_sim_app(SimConfig(kv_blocks=512, max_model_len=8192, time_scale=50.0))
    )
    response = await client.post("/v1/completions", json=stream_body("x " * 500, 5000))
    await response.content.readline()
    values = await scrape(client)
    # ~500 prompt tokens in 16-token blocks, out of 512 blocks.
    assert 0.05 < values["vllm:kv_cache_usage_perc"] < 0.2
    response.close()


async def test_prefix_cache_metrics_move_on_a_repeated_prompt(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_sim_app(SimConfig(time_scale=1000.0)))
    body = {"model": MODEL, "prompt": "shared system prompt " * 40, "max_tokens": 1}
    await client.post("/v1/completions", json=body)
    before = await scrape(client)
    assert before["vllm:prefix_cache_hits_total"] == 0
    await client.post("/v1/completions", json=body)
    after = await scrape(client)
    assert after["vllm:prefix_cache_hits_total"] > 0
    assert after["vllm:prefix_cache_queries_total"] == 2 * before["vllm:prefix_cache_queries_total"]


async def test_disconnect_mid_stream_aborts_and_frees_blocks(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_sim_app(SimConfig(time_scale=100.0)))
    response = await client.post("/v1/completions", json=stream_body("a long story", 20_000))
    assert (await response.content.readline()).startswith(b"data: ")
    running = await scrape(client)
    assert running["vllm:num_requests_running"] == 1
    assert running["vllm:kv_cache_usage_perc"] > 0
    response.close()
    values = await wait_until(client, lambda v: v["vllm:num_requests_running"] == 0)
    assert values["vllm:kv_cache_usage_perc"] == 0
    assert values["vllm:request_success_total:abort"] == 1
    assert client.app[SIM_ENGINE_KEY].kv.num_in_use == 0


async def test_disconnect_while_waiting_leaves_the_queue(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_sim_app(SimConfig(max_num_seqs=1, time_scale=100.0)))
    running = await client.post("/v1/completions", json=stream_body("first", 20_000))
    await running.content.readline()
    waiting = await client.post("/v1/completions", json=stream_body("second", 20_000))
    await wait_until(client, lambda v: v["vllm:num_requests_waiting"] == 1)
    waiting.close()
    values = await wait_until(client, lambda v: v["vllm:num_requests_waiting"] == 0)
    assert values["vllm:num_requests_running"] == 1
    running.close()
    await wait_until(client, lambda v: v["vllm:num_requests_running"] == 0)


async def test_non_stream_client_gone_aborts(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_sim_app(SimConfig(time_scale=100.0)))
    body = {"model": MODEL, "prompt": "x", "max_tokens": 20_000, "ignore_eos": True}
    task = asyncio.create_task(client.post("/v1/completions", json=body))
    await wait_until(client, lambda v: v["vllm:num_requests_running"] == 1)
    task.cancel()
    values = await wait_until(client, lambda v: v["vllm:num_requests_running"] == 0)
    assert values["vllm:request_success_total:abort"] == 1


async def test_speed_two_halves_simulated_time_end_to_end(aiohttp_client: AiohttpClient) -> None:
    simulated = []
    for speed in (1.0, 2.0):
        app = create_sim_app(SimConfig(speed=speed, time_scale=1000.0))
        client = await aiohttp_client(app)
        for prompt in ("alpha " * 300, "beta " * 50):
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 30, "ignore_eos": True}
            assert (await client.post("/v1/completions", json=body)).status == 200
        simulated.append(app[SIM_ENGINE_KEY].stats.simulated_s)
    assert abs(simulated[1] - simulated[0] / 2) < 1e-9


async def test_start_sim_server_cancels_handlers_on_disconnect() -> None:
    server = await start_sim_server(SimConfig(time_scale=100.0))
    try:
        assert server.port > 0
        async with ClientSession(base_url=server.url) as session:
            response = await session.post("/v1/completions", json=stream_body("x", 20_000))
            await response.content.readline()
            engine = server.app[SIM_ENGINE_KEY]
            assert engine.num_running == 1
            response.close()
            for _ in range(500):
                if engine.num_running == 0:
                    break
                await asyncio.sleep(0.01)
            assert engine.num_running == 0
    finally:
        await server.close()
