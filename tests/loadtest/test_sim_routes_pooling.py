"""vLLM's pooling routes on a real sim server (``/score``, ``/rerank``, ``/pooling``,
``/classify``): shapes, deterministic numbers, errors, each input or pair a prefill on the
engine; and unknown routes answered as vLLM's FastAPI server answers them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from gateway.tokenizer import load_tokenizer
from loadtest.sim import SimConfig, SimServer, start_sim_server
from loadtest.sim.embeddings import EMBEDDING_DIM
from loadtest.sim.pooling import NUM_CLASSES

MODEL = "sim-llm"
TOKENIZER = load_tokenizer()
SCORE_PATHS = ("/score", "/v1/score")
RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
DOCUMENTS = ["Paris is the capital of France.", "Berlin has many museums.", "Cats sleep a lot."]
QUERY = "What is the capital of France?"


@dataclass
class Sim:
    server: SimServer
    http: ClientSession

    async def post(self, path: str, body: object, status: int = 200) -> dict[str, Any]:
        response = await self.http.post(self.server.url + path, json=body)
        assert response.status == status, await response.text()
        assert response.headers["Content-Type"].startswith("application/json")
        payload: dict[str, Any] = await response.json()
        return payload

    async def metrics(self) -> dict[str, float]:
        text = await (await self.http.get(self.server.url + "/metrics")).text()
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "le" not in sample.labels and "finished_reason" not in sample.labels
        }


async def started(config: SimConfig) -> SimServer:
    return await start_sim_server(config, tokenizer=TOKENIZER)


@pytest.fixture(params=["vllm", "slots"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    config = SimConfig(engine=request.param, time_scale=1000.0, lora_adapters=("tuned",))
    server = await started(config)
    try:
        async with ClientSession() as http:
            yield Sim(server, http)
    finally:
        await server.close()


def tokens(text: str) -> int:
    return len(TOKENIZER.encode(text))


def pair_tokens(first: str, second: str) -> int:
    return tokens(first) + tokens(second)


async def test_score_one_to_many(sim: Sim) -> None:
    body = await sim.post("/v1/score", {"model": MODEL, "text_1": QUERY, "text_2": DOCUMENTS})
    assert body["id"].startswith("score-")
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert {item["object"] for item in body["data"]} == {"score"}
    assert all(0.0 < item["score"] < 1.0 for item in body["data"])
    prompt_tokens = sum(pair_tokens(QUERY, document) for document in DOCUMENTS)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


async def test_scores_are_deterministic_per_pair(sim: Sim) -> None:
    many = await sim.post("/score", {"text_1": QUERY, "text_2": DOCUMENTS})
    scores = [item["score"] for item in many["data"]]
    assert len(set(scores)) == 3
    for path in SCORE_PATHS:
        one = await sim.post(path, {"text_1": QUERY, "text_2": DOCUMENTS[1]})
        assert [item["score"] for item in one["data"]] == [scores[1]]
    pairs = await sim.post("/score", {"text_1": [QUERY, "other"], "text_2": DOCUMENTS[:2]})
    assert pairs["data"][0]["score"] == scores[0]
    assert len(pairs["data"]) == 2


async def test_rerank_sorts_by_relevance_and_keeps_document_indexes(sim: Sim) -> None:
    scores = [
        item["score"]
        for item in (await sim.post("/score", {"text_1": QUERY, "text_2": DOCUMENTS}))["data"]
    ]
    for path in RERANK_PATHS:
        body = await sim.post(path, {"model": MODEL, "query": QUERY, "documents": DOCUMENTS})
        assert body["id"].startswith("rerank-")
        assert body["model"] == MODEL
        results = body["results"]
        assert sorted(result["index"] for result in results) == [0, 1, 2]
        relevance = [result["relevance_score"] for result in results]
        assert relevance == sorted(relevance, reverse=True)
        for result in results:
            assert result["document"] == {"text": DOCUMENTS[result["index"]]}
            # A rerank pair is scored as the same pair through /score.
            assert result["relevance_score"] == scores[result["index"]]
        total = sum(pair_tokens(QUERY, document) for document in DOCUMENTS)
        assert body["usage"] == {"total_tokens": total}


async def test_rerank_top_n(sim: Sim) -> None:
    full = (await sim.post("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS}))["results"]
    top = await sim.post("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert top["results"] == full[:2]
    # Every document still ran: usage counts all of them.
    assert top["usage"]["total_tokens"] == sum(pair_tokens(QUERY, d) for d in DOCUMENTS)
    for top_n in (0, 3, 10, -1):
        body = await sim.post(
            "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": top_n}
        )
        assert body["results"] == full


async def test_pooling_returns_the_embedding_vectors(sim: Sim) -> None:
    body = await sim.post("/pooling", {"model": MODEL, "input": ["alpha", "beta"]})
    assert body["id"].startswith("pool-")
    assert body["object"] == "list"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert {item["object"] for item in body["data"]} == {"pooling"}
    vector = body["data"][0]["data"]
    assert len(vector) == EMBEDDING_DIM
    assert math.sqrt(sum(value * value for value in vector)) == pytest.approx(1.0, abs=1e-5)
    embedding = await sim.post("/v1/embeddings", {"input": "alpha"})
    assert embedding["data"][0]["embedding"] == vector
    assert body["usage"]["prompt_tokens"] == tokens("alpha") + tokens("beta")
    ids = await sim.post("/pooling", {"input": [[1, 2, 3], [4, 5]]})
    assert ids["usage"]["prompt_tokens"] == 5
    short = await sim.post("/pooling", {"input": "alpha", "dimensions": 4})
    assert len(short["data"][0]["data"]) == 4
    encoded = await sim.post("/pooling", {"input": "alpha", "encoding_format": "base64"})
    assert isinstance(encoded["data"][0]["data"], str)


async def test_classify_gives_probabilities_and_the_likeliest_label(sim: Sim) -> None:
    inputs = ["great movie", "terrible movie", "great movie"]
    body = await sim.post("/classify", {"model": MODEL, "input": inputs})
    assert body["id"].startswith("classify-")
    assert body["object"] == "list"
    items = body["data"]
    assert [item["index"] for item in items] == [0, 1, 2]
    for item in items:
        probs = item["probs"]
        assert item["num_classes"] == NUM_CLASSES == len(probs)
        assert sum(probs) == pytest.approx(1.0)
        assert item["label"] == f"LABEL_{probs.index(max(probs))}"
    assert items[0]["probs"] == items[2]["probs"]
    assert body["usage"]["prompt_tokens"] == sum(tokens(text) for text in inputs)
    single = await sim.post("/classify", {"input": "great movie"})
    assert single["data"][0]["probs"] == items[0]["probs"]


async def test_classify_of_an_empty_list_is_an_empty_list(sim: Sim) -> None:
    body = await sim.post("/classify", {"input": []})
    assert body["data"] == []
    assert body["usage"]["prompt_tokens"] == 0


async def test_an_adapter_serves_the_pooling_routes(sim: Sim) -> None:
    assert (await sim.post("/score", {"model": "tuned", "text_1": "a", "text_2": "b"}))[
        "model"
    ] == "tuned"
    assert (await sim.post("/rerank", {"model": "tuned", "query": "a", "documents": ["b"]}))[
        "model"
    ] == "tuned"
    assert (await sim.post("/classify", {"model": "tuned", "input": "a"}))["model"] == "tuned"
    assert (await sim.post("/pooling", {"model": "tuned", "input": "a"}))["model"] == "tuned"


async def test_each_pair_is_a_prefill_on_the_engine(sim: Sim) -> None:
    body = await sim.post("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
    values = await sim.metrics()
    assert values["vllm:prompt_tokens_total"] == body["usage"]["total_tokens"]
    assert values["vllm:time_to_first_token_seconds_count"] == 3
    assert values["vllm:inter_token_latency_seconds_count"] == 0
    assert values["vllm:e2e_request_latency_seconds_count"] == 3
    assert values["vllm:num_requests_running"] == 0
    # The query opens every pair: after the first, its full blocks come from the cache.
    long_query = " ".join(f"term{i}" for i in range(60))
    await sim.post("/v1/rerank", {"query": long_query, "documents": ["a", "b"]})
    await sim.post("/v1/rerank", {"query": long_query, "documents": ["c"]})
    hits = (await sim.metrics())["vllm:prefix_cache_hits_total"]
    assert hits >= tokens(long_query) // 16 * 16


@pytest.mark.parametrize("engine", ["vllm", "slots"])
async def test_pairs_load_the_pod_while_they_run(engine: str) -> None:
    server = await started(SimConfig(engine=engine, speed=0.0001, time_scale=1.0))
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            pending = asyncio.ensure_future(
                sim.post("/score", {"text_1": "query", "text_2": ["one", "two"]})
            )
            for _ in range(500):
                if (await sim.metrics())["vllm:num_requests_running"] == 2:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the pairs never showed as running")
            assert not pending.done()
            speed = await http.post(server.url + "/sim/speed", json={"speed": 10000.0})
            assert speed.status == 200
            assert len((await pending)["data"]) == 2
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/score", {"text_2": "b"}, 400, "text_1"),
        ("/score", {"text_1": "a", "text_2": 3}, 400, "text_2"),
        ("/score", {"text_1": "a", "text_2": ["b", ""]}, 400, "text_2"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, None),
        ("/v1/score", {"text_1": [], "text_2": ["c"]}, 400, None),
        ("/v1/score", {"text_1": "a", "text_2": []}, 400, None),
        ("/rerank", {"documents": ["a"]}, 400, "query"),
        ("/rerank", {"query": "", "documents": ["a"]}, 400, "query"),
        ("/v1/rerank", {"query": "q"}, 400, "documents"),
        ("/v1/rerank", {"query": "q", "documents": "a"}, 400, "documents"),
        ("/v1/rerank", {"query": "q", "documents": [{"text": "a"}]}, 400, "documents"),
        ("/v2/rerank", {"query": "q", "documents": []}, 400, None),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, 400, "top_n"),
        ("/classify", {"input": ""}, 400, "input"),
        ("/classify", {}, 400, "input"),
        ("/classify", {"input": ["a", 1]}, 400, "input"),
        ("/pooling", {"input": []}, 400, "input"),
        ("/pooling", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ("/score", {"model": "nope", "text_1": "a", "text_2": "b"}, 404, "model"),
        ("/rerank", {"model": "nope", "query": "a", "documents": ["b"]}, 404, "model"),
        ("/classify", {"model": "nope", "input": "a"}, 404, "model"),
        ("/pooling", {"model": "nope", "input": "a"}, 404, "model"),
    ],
    ids=[
        "score-no-text-1",
        "score-text-2-number",
        "score-empty-text",
        "score-2-to-3",
        "score-no-text-1-items",
        "score-no-text-2-items",
        "rerank-no-query",
        "rerank-empty-query",
        "rerank-no-documents",
        "rerank-documents-string",
        "rerank-document-objects",
        "rerank-empty-documents",
        "rerank-top-n-string",
        "classify-empty-string",
        "classify-missing",
        "classify-mixed",
        "pooling-empty-list",
        "pooling-bad-format",
        "score-unknown-model",
        "rerank-unknown-model",
        "classify-unknown-model",
        "pooling-unknown-model",
    ],
)
async def test_bad_requests_get_openai_errors(
    sim: Sim, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    error = (await sim.post(path, body, status))["error"]
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert error["param"] == param
    assert error["code"] == status
    assert error["message"]


async def test_vllms_messages_for_mismatched_score_inputs(sim: Sim) -> None:
    error = (await sim.post("/score", {"text_1": ["a", "b"], "text_2": ["c"]}, 400))["error"]
    assert error["message"] == "Input lengths must be either 1:1, 1:N or N:N"
    error = (await sim.post("/classify", {"input": ""}, 400))["error"]
    assert error["message"] == "Input cannot be empty for classification"


@pytest.mark.parametrize(
    ("path", "body", "operation"),
    [
        # A pair is over the context when both texts together are.
        ("/score", {"text_1": " word" * 20, "text_2": " more" * 20}, "score"),
        ("/classify", {"input": list(range(33))}, "classification"),
        ("/pooling", {"input": list(range(33))}, "embedding generation"),
    ],
    ids=["score", "classify", "pooling"],
)
async def test_an_input_over_the_context_is_rejected(
    path: str, body: dict[str, Any], operation: str
) -> None:
    config = SimConfig(time_scale=1000.0, max_model_len=32, kv_blocks=32)
    server = await started(config)
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            error = (await sim.post(path, body, 400))["error"]
            assert "maximum context length is 32 tokens" in error["message"]
            assert f"in the input for {operation}" in error["message"]
            assert (await sim.metrics())["vllm:prompt_tokens_total"] == 0
    finally:
        await server.close()


async def test_unknown_routes_are_fastapis_json_404_and_405(sim: Sim) -> None:
    response = await sim.http.post(sim.server.url + "/v1/nothing", json={})
    assert response.status == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert await response.json() == {"detail": "Not Found"}
    response = await sim.http.get(sim.server.url + "/v1/score")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert await response.json() == {"detail": "Method Not Allowed"}
    # Errors of a served route stay OpenAI-style.
    error = await sim.post("/v1/score", {"model": "nope", "text_1": "a", "text_2": "b"}, 404)
    assert error["error"]["type"] == "NotFoundError"
