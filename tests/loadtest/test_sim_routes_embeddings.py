"""``/v1/embeddings`` on a real sim server: shapes, vectors, encodings, errors, and that each
input is a prefill on the engine."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from gateway.tokenizer import load_tokenizer
from loadtest.sim import SimConfig, SimServer, start_sim_server
from loadtest.sim.embeddings import EMBEDDING_DIM

MODEL = "sim-llm"
TOKENIZER = load_tokenizer()


@dataclass
class Sim:
    server: SimServer
    http: ClientSession

    async def embed(self, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        response = await self.http.post(self.server.url + "/v1/embeddings", json=body)
        assert response.status == status
        payload: dict[str, Any] = await response.json()
        return payload

    async def metrics(self) -> dict[tuple[str, str | None], float]:
        text = await (await self.http.get(self.server.url + "/metrics")).text()
        return {
            (sample.name, sample.labels.get("finished_reason")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "le" not in sample.labels
        }


@pytest.fixture(params=["vllm", "slots"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    config = SimConfig(engine=request.param, time_scale=1000.0, lora_adapters=("tuned",))
    server = await start_sim_server(config, tokenizer=TOKENIZER)
    try:
        async with ClientSession() as http:
            yield Sim(server, http)
    finally:
        await server.close()


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


async def test_one_string_gets_one_unit_vector(sim: Sim) -> None:
    body = await sim.embed({"model": MODEL, "input": "The quick brown fox"})
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert body["id"].startswith("embd-")
    (item,) = body["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert len(item["embedding"]) == EMBEDDING_DIM
    assert norm(item["embedding"]) == pytest.approx(1.0, abs=1e-5)
    tokens = len(TOKENIZER.encode("The quick brown fox"))
    assert body["usage"] == {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


async def test_vectors_are_deterministic_per_text(sim: Sim) -> None:
    body = await sim.embed({"input": ["alpha", "beta", "alpha"]})
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    first, second, third = (item["embedding"] for item in body["data"])
    assert first == third
    assert first != second
    again = await sim.embed({"input": "alpha"})
    assert again["data"][0]["embedding"] == first


async def test_token_id_inputs_count_their_ids(sim: Sim) -> None:
    single = await sim.embed({"input": [101, 102, 103, 104]})
    assert single["usage"]["prompt_tokens"] == 4
    assert len(single["data"]) == 1
    batch = await sim.embed({"input": [[1, 2], [3, 4, 5]]})
    assert batch["usage"]["prompt_tokens"] == 5
    assert len(batch["data"]) == 2


async def test_base64_is_little_endian_float32_of_the_same_vector(sim: Sim) -> None:
    floats = (await sim.embed({"input": "encode me"}))["data"][0]["embedding"]
    encoded = (await sim.embed({"input": "encode me", "encoding_format": "base64"}))["data"][0][
        "embedding"
    ]
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert len(raw) == 4 * EMBEDDING_DIM
    assert list(struct.unpack(f"<{EMBEDDING_DIM}f", raw)) == floats


async def test_dimensions_cut_and_renormalize_the_vector(sim: Sim) -> None:
    full = (await sim.embed({"input": "short me"}))["data"][0]["embedding"]
    short = (await sim.embed({"input": "short me", "dimensions": 8}))["data"][0]["embedding"]
    assert len(short) == 8
    assert norm(short) == pytest.approx(1.0, abs=1e-5)
    scale = norm(full[:8])
    assert short == pytest.approx([value / scale for value in full[:8]], rel=1e-4)


async def test_an_adapter_serves_embeddings(sim: Sim) -> None:
    body = await sim.embed({"model": "tuned", "input": "hello"})
    assert body["model"] == "tuned"


async def test_each_input_is_a_prefill_on_the_engine(sim: Sim) -> None:
    texts = ["first input text", "second, longer input text for the pod"]
    body = await sim.embed({"input": texts})
    values = await sim.metrics()
    assert values[("vllm:prompt_tokens_total", None)] == body["usage"]["prompt_tokens"]
    assert values[("vllm:prefix_cache_queries_total", None)] == body["usage"]["prompt_tokens"]
    assert values[("vllm:time_to_first_token_seconds_count", None)] == 2
    assert values[("vllm:inter_token_latency_seconds_count", None)] == 0
    assert values[("vllm:e2e_request_latency_seconds_count", None)] == 2
    assert values[("vllm:num_requests_running", None)] == 0


async def test_an_embedding_loads_the_pod_while_it_runs() -> None:
    """A pod slowed to a crawl shows the embedding running; speeding it up lets it finish."""
    config = SimConfig(speed=0.0001, time_scale=1.0)
    server = await start_sim_server(config, tokenizer=TOKENIZER)
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            pending = asyncio.ensure_future(sim.embed({"input": "slow prefill"}))
            for _ in range(500):
                if (await sim.metrics())[("vllm:num_requests_running", None)] == 1:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the embedding never showed as running")
            assert not pending.done()
            speed = await http.post(server.url + "/sim/speed", json={"speed": 10000.0})
            assert speed.status == 200
            body = await pending
            assert len(body["data"]) == 1
            assert (await sim.metrics())[("vllm:num_requests_running", None)] == 0
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ""}, 400, "input"),
        ({"input": ["a", ""]}, 400, "input"),
        ({"input": ["a", 1]}, 400, "input"),
        ({"input": [[1, 2], []]}, 400, "input"),
        ({"input": [-1]}, 400, "input"),
        ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"input": "x", "dimensions": EMBEDDING_DIM + 1}, 400, "dimensions"),
        ({"input": "x", "model": "nope"}, 404, "model"),
    ],
    ids=[
        "missing",
        "empty-list",
        "empty-string",
        "empty-string-in-list",
        "mixed",
        "empty-id-list",
        "negative-id",
        "bad-format",
        "zero-dimensions",
        "too-many-dimensions",
        "unknown-model",
    ],
)
async def test_bad_requests_get_openai_errors(
    sim: Sim, body: dict[str, Any], status: int, param: str
) -> None:
    error = (await sim.embed(body, status))["error"]
    assert error["param"] == param
    assert error["code"] == status


async def test_an_input_over_the_context_is_rejected() -> None:
    config = SimConfig(time_scale=1000.0, max_model_len=32, kv_blocks=32)
    server = await start_sim_server(config, tokenizer=TOKENIZER)
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            fits = await sim.embed({"input": list(range(32))})
            assert fits["usage"]["prompt_tokens"] == 32
            error = (await sim.embed({"input": list(range(33))}, 400))["error"]
            assert "maximum context length is 32 tokens" in error["message"]
    finally:
        await server.close()
