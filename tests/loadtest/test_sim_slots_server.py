"""A sim running the slots engine, seen over HTTP: streams, vLLM metrics, disconnects."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from loadtest.sim import SIM_ENGINE_KEY, SimConfig, SimServer, start_sim_server
from loadtest.sim.cli import add_sim_arguments, config_from_args
from loadtest.sim.slots import SlotsEngine

MODEL = "sim-llm"


def stream_body(prompt: str, max_tokens: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


async def scrape(session: ClientSession) -> dict[str, float]:
    async with session.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if "finished_reason" in sample.labels:
                key += f":{sample.labels['finished_reason']}"
            if "le" not in sample.labels:
                values[key] = sample.value
    return values


async def wait_until(
    session: ClientSession, predicate: Callable[[dict[str, float]], bool]
) -> dict[str, float]:
    values: dict[str, float] = {}
    for _ in range(500):
        values = await scrape(session)
        if predicate(values):
            return values
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition never met; last scrape: {values}")


Serve = Callable[[SimConfig], Awaitable[SimServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start real sims on free ports; all are closed after the test."""
    servers: list[SimServer] = []

    async def start(config: SimConfig) -> SimServer:
        server = await start_sim_server(config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def test_server_started_with_engine_slots_streams_a_completion(
    serve: Serve,
) -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    args = parser.parse_args(
        ["--engine", "slots", "--time-scale", "100", "--itl-ms", "2", "--port", "0"]
    )
    server = await serve(config_from_args(args))
    assert isinstance(server.app[SIM_ENGINE_KEY], SlotsEngine)
    body = {**stream_body("Once upon a time", 20), "stream_options": {"include_usage": True}}
    async with ClientSession(base_url=server.url) as session:
        async with session.post("/v1/completions", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            raw = await response.read()
        frames = [frame[len(b"data: ") :] for frame in raw.split(b"\n\n")[:-1]]
        assert frames[-1] == b"[DONE]"
        events = [orjson.loads(frame) for frame in frames[:-1]]
        tokens = [e for e in events if e["choices"]]
        assert len(tokens) == 20
        assert tokens[-1]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["usage"]["completion_tokens"] == 20
        async with session.get("/sim/stats") as response:
            stats = await response.json()
        assert stats["engine"] == "slots"
        assert stats["generation_tokens"] == 20


async def test_both_engines_expose_the_same_metric_families(
    serve: Serve,
) -> None:
    exposed: dict[str, dict[str, str]] = {}
    for engine in ("vllm", "slots"):
        server = await serve(SimConfig(engine=engine, time_scale=1000.0))
        async with ClientSession(base_url=server.url) as session:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "ignore_eos": True}
            async with session.post("/v1/completions", json=body) as response:
                assert response.status == 200
            async with session.get("/metrics") as response:
                text = await response.text()
            values = await scrape(session)
        exposed[engine] = {
            family.name: family.type for family in text_string_to_metric_families(text)
        }
        assert values["vllm:generation_tokens_total"] == 3
        assert values["vllm:prompt_tokens_total"] == 1
        assert values["vllm:time_to_first_token_seconds_count"] == 1
        assert values["vllm:inter_token_latency_seconds_count"] == 2
        assert values["vllm:e2e_request_latency_seconds_count"] == 1
        assert values["vllm:cache_config_info"] == 1
    assert exposed["slots"] == exposed["vllm"]
    assert len(exposed["slots"]) == 13


async def test_metrics_report_running_waiting_and_kv_usage(
    serve: Serve,
) -> None:
    config = SimConfig(engine="slots", max_num_seqs=1, time_scale=100.0)
    server = await serve(config)
    async with ClientSession(base_url=server.url) as session:
        first = await session.post("/v1/completions", json=stream_body("first", 20_000))
        await first.content.readline()
        second = await session.post("/v1/completions", json=stream_body("second", 20_000))
        values = await wait_until(session, lambda v: v["vllm:num_requests_waiting"] == 1)
        assert values["vllm:num_requests_running"] == 1
        # The running request holds its whole sequence: ~20,001 tokens of 65,536.
        assert 0.25 < values["vllm:kv_cache_usage_perc"] < 0.35
        first.close()  # a client that goes away frees its slot for the next in line
        values = await wait_until(session, lambda v: v["vllm:num_requests_waiting"] == 0)
        assert values["vllm:num_requests_running"] == 1
        assert (await second.content.readline()).startswith(b"data: ")
        second.close()
        values = await wait_until(session, lambda v: v["vllm:num_requests_running"] == 0)
        assert values["vllm:kv_cache_usage_perc"] == 0
    assert server.app[SIM_ENGINE_KEY].kv.num_in_use == 0


async def test_a_waiting_request_whose_client_leaves_leaves_the_queue(
    serve: Serve,
) -> None:
    server = await serve(SimConfig(engine="slots", max_num_seqs=1, time_scale=100.0))
    async with ClientSession(base_url=server.url) as session:
        running = await session.post("/v1/completions", json=stream_body("first", 20_000))
        await running.content.readline()
        body = {"model": MODEL, "prompt": "second", "max_tokens": 10, "ignore_eos": True}
        waiting = asyncio.ensure_future(session.post("/v1/completions", json=body))
        await wait_until(session, lambda v: v["vllm:num_requests_waiting"] == 1)
        waiting.cancel()
        values = await wait_until(session, lambda v: v["vllm:num_requests_waiting"] == 0)
        assert values["vllm:num_requests_running"] == 1
        running.close()
        values = await wait_until(session, lambda v: v["vllm:num_requests_running"] == 0)
    assert values["vllm:request_success_total:abort"] == 2
    assert values["vllm:request_success_total:length"] == 0
