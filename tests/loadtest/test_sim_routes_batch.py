"""Batched prompts and ``n > 1`` on a real sim server: one choice per prompt and sample with
vLLM's indexing and usage, streamed interleaved, and each choice an engine request of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, ClientSession
from prometheus_client.parser import text_string_to_metric_families

from gateway.tokenizer import load_tokenizer
from loadtest.sim import SimConfig, SimServer, start_sim_server

MODEL = "sim-llm"
TOKENIZER = load_tokenizer()
# Several KV blocks long, so samples of it have full blocks to share.
LONG_PROMPT = " ".join(f"token{i}" for i in range(120))
MESSAGES = [{"role": "user", "content": "Say something."}]


@dataclass
class Sim:
    server: SimServer
    http: ClientSession

    async def post(self, path: str, body: object, status: int = 200) -> dict[str, Any]:
        response = await self.http.post(self.server.url + path, json=body)
        assert response.status == status, await response.text()
        payload: dict[str, Any] = await response.json()
        return payload

    async def stream(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of a stream, checked to end with exactly one ``[DONE]``."""
        response = await self.http.post(self.server.url + path, json={**body, "stream": True})
        return await read_sse(response)

    async def metrics(self) -> dict[tuple[str, str | None], float]:
        text = await (await self.http.get(self.server.url + "/metrics")).text()
        return {
            (sample.name, sample.labels.get("finished_reason")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "le" not in sample.labels
        }

    async def wait_for_metric(self, key: tuple[str, str | None], value: float) -> None:
        for _ in range(500):
            if (await self.metrics()).get(key) == value:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{key} never reached {value}: {(await self.metrics()).get(key)}")


async def read_sse(response: ClientResponse) -> list[dict[str, Any]]:
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    raw = await response.read()
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    payloads = [frame.removeprefix(b"data: ") for frame in frames[:-1]]
    assert payloads[-1] == b"[DONE]"
    assert payloads.count(b"[DONE]") == 1
    return [orjson.loads(payload) for payload in payloads[:-1]]


async def started(config: SimConfig) -> SimServer:
    return await start_sim_server(config, tokenizer=TOKENIZER)


@pytest.fixture(params=["vllm", "slots"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    server = await started(SimConfig(engine=request.param, time_scale=1000.0))
    try:
        async with ClientSession() as http:
            yield Sim(server, http)
    finally:
        await server.close()


def tokens(text: str) -> int:
    return len(TOKENIZER.encode(text))


def by_index(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Each choice's stream chunks (usage chunks left out), in the order they came."""
    choices: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        for choice in event["choices"]:
            choices.setdefault(choice["index"], []).append(choice)
    return choices


async def test_batched_prompts_get_one_choice_each(sim: Sim) -> None:
    prompts = ["The quick brown fox", "jumps over the lazy dog again"]
    body = await sim.post(
        "/v1/completions",
        {"model": MODEL, "prompt": prompts, "max_tokens": 3, "ignore_eos": True},
    )
    assert body["object"] == "text_completion"
    assert [choice["index"] for choice in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        assert tokens(choice["text"]) == 3
        assert choice["finish_reason"] == "length"
    prompt_tokens = sum(tokens(prompt) for prompt in prompts)
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == prompt_tokens + 6
    # Each prompt's choice is what the prompt alone gets.
    alone = await sim.post(
        "/v1/completions",
        {"model": MODEL, "prompt": prompts[1], "max_tokens": 3, "ignore_eos": True},
    )
    assert alone["choices"][0]["text"] == body["choices"][1]["text"]


async def test_batched_token_id_prompts_count_their_ids(sim: Sim) -> None:
    body = await sim.post(
        "/v1/completions", {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 2, "ignore_eos": True}
    )
    assert len(body["choices"]) == 2
    assert body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["completion_tokens"] == 4


async def test_n_samples_are_indexed_by_prompt_then_sample(sim: Sim) -> None:
    prompts = ["first prompt", "the second prompt"]
    request = {"prompt": prompts, "n": 3, "max_tokens": 64, "seed": 7}
    body = await sim.post("/v1/completions", request)
    choices = body["choices"]
    assert [choice["index"] for choice in choices] == list(range(6))
    generated = sum(tokens(choice["text"]) for choice in choices)
    # Each prompt counts once in usage, however many samples it had.
    assert body["usage"]["prompt_tokens"] == sum(tokens(prompt) for prompt in prompts)
    assert body["usage"]["completion_tokens"] == generated
    # Deterministic: the same request gets the same answers, sample by sample.
    again = await sim.post("/v1/completions", request)
    assert [choice["text"] for choice in again["choices"]] == [c["text"] for c in choices]
    # Sample 0 of prompt 1 is the n=1 answer to prompt 1.
    one = await sim.post("/v1/completions", {**request, "prompt": prompts[1], "n": 1})
    assert one["choices"][0]["text"] == choices[3]["text"]


async def test_chat_n_gets_n_messages_and_counts_the_prompt_once(sim: Sim) -> None:
    request = {"messages": MESSAGES, "max_tokens": 4, "ignore_eos": True}
    one = await sim.post("/v1/chat/completions", request)
    body = await sim.post("/v1/chat/completions", {**request, "n": 3})
    assert body["object"] == "chat.completion"
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    for choice in body["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert tokens(choice["message"]["content"]) == 4
    assert body["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 12


async def test_a_batched_stream_interleaves_choices_with_their_index(sim: Sim) -> None:
    events = await sim.stream(
        "/v1/completions",
        {
            "prompt": ["alpha beta", "gamma delta epsilon"],
            "n": 2,
            "max_tokens": 4,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        },
    )
    *chunks, usage = events
    assert {chunk["id"] for chunk in events} == {events[0]["id"]}
    assert all(len(chunk["choices"]) == 1 for chunk in chunks)
    choices = by_index(chunks)
    assert sorted(choices) == [0, 1, 2, 3]
    for index, parts in choices.items():
        assert len(parts) == 4, index
        assert [part["finish_reason"] for part in parts] == [None, None, None, "length"]
    assert usage["choices"] == []
    prompt_tokens = tokens("alpha beta") + tokens("gamma delta epsilon")
    assert usage["usage"]["prompt_tokens"] == prompt_tokens
    assert usage["usage"]["completion_tokens"] == 16


async def test_a_chat_stream_sends_every_role_chunk_first(sim: Sim) -> None:
    events = await sim.stream(
        "/v1/chat/completions",
        {"messages": MESSAGES, "n": 2, "max_tokens": 3, "ignore_eos": True},
    )
    first, second, *rest = events
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    assert second["choices"][0]["index"] == 1
    assert second["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    choices = by_index(rest)
    assert sorted(choices) == [0, 1]
    for parts in choices.values():
        assert [part["delta"].keys() for part in parts] == [{"content"}] * 3
        assert parts[-1]["finish_reason"] == "length"


async def test_each_choice_is_its_own_engine_request(sim: Sim) -> None:
    prompts = ["one prompt here", "and another one"]
    body = await sim.post(
        "/v1/completions", {"prompt": prompts, "n": 2, "max_tokens": 2, "ignore_eos": True}
    )
    values = await sim.metrics()
    assert values[("vllm:request_success_total", "length")] == 4
    assert values[("vllm:e2e_request_latency_seconds_count", None)] == 4
    assert values[("vllm:generation_tokens_total", None)] == 8
    # The engine counts every request's prompt; usage counts each prompt once.
    assert values[("vllm:prompt_tokens_total", None)] == 2 * body["usage"]["prompt_tokens"]


async def test_samples_of_a_prompt_share_its_prefill(sim: Sim) -> None:
    body = await sim.post(
        "/v1/completions", {"prompt": LONG_PROMPT, "n": 4, "max_tokens": 1, "ignore_eos": True}
    )
    prompt_tokens = body["usage"]["prompt_tokens"]
    assert prompt_tokens > 64
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    block_size = 16
    shared = (prompt_tokens - 1) // block_size * block_size  # all but the last block
    values = await sim.metrics()
    assert values[("vllm:prefix_cache_queries_total", None)] == 4 * prompt_tokens
    assert values[("vllm:prefix_cache_hits_total", None)] == 3 * shared


@pytest.mark.parametrize("engine", ["vllm", "slots"])
async def test_a_batch_loads_the_pod_with_one_request_per_prompt(engine: str) -> None:
    """A pod slowed to a crawl shows every prompt of a batch running at once."""
    server = await started(SimConfig(engine=engine, speed=0.0001, time_scale=1.0))
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            pending = asyncio.ensure_future(
                sim.post("/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 1})
            )
            await sim.wait_for_metric(("vllm:num_requests_running", None), 3)
            assert not pending.done()
            speed = await http.post(server.url + "/sim/speed", json={"speed": 10000.0})
            assert speed.status == 200
            assert len((await pending)["choices"]) == 3
            assert (await sim.metrics())[("vllm:num_requests_running", None)] == 0
    finally:
        await server.close()


@pytest.mark.parametrize("engine", ["vllm", "slots"])
async def test_a_client_that_leaves_aborts_every_choice(engine: str) -> None:
    server = await started(SimConfig(engine=engine, speed=0.0001, time_scale=1.0))
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            pending = asyncio.ensure_future(
                sim.post("/v1/completions", {"prompt": ["a", "b", "c"]})
            )
            await sim.wait_for_metric(("vllm:num_requests_running", None), 3)
            pending.cancel()
            await sim.wait_for_metric(("vllm:request_success_total", "abort"), 3)
            assert (await sim.metrics())[("vllm:num_requests_running", None)] == 0
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
        ("/v1/completions", {"prompt": "x", "n": 17}, "n"),
        ("/v1/completions", {"prompt": "x", "n": "2"}, "n"),
        ("/v1/completions", {"prompt": "x", "n": True}, "n"),
        ("/v1/chat/completions", {"messages": MESSAGES, "n": 17}, "n"),
        ("/v1/completions", {"prompt": ["a", ""]}, "prompt"),
        ("/v1/completions", {"prompt": ["a", 1]}, "prompt"),
        ("/v1/completions", {"prompt": [[1, 2], []]}, "prompt"),
        ("/v1/completions", {"prompt": [[1], [-1]]}, "prompt"),
        ("/v1/completions", {"prompt": [[1], "a"]}, "prompt"),
    ],
    ids=[
        "n-zero",
        "n-too-large",
        "n-string",
        "n-bool",
        "chat-n-too-large",
        "empty-string-in-batch",
        "mixed-batch",
        "empty-ids-in-batch",
        "negative-id-in-batch",
        "ids-and-string",
    ],
)
async def test_bad_batches_get_openai_errors(
    sim: Sim, path: str, body: dict[str, Any], param: str
) -> None:
    error = (await sim.post(path, body, 400))["error"]
    assert error["type"] == "BadRequestError"
    assert error["param"] == param
    assert error["code"] == 400
    assert error["message"]


async def test_one_prompt_over_the_context_rejects_the_batch() -> None:
    server = await started(SimConfig(time_scale=1000.0, max_model_len=32, kv_blocks=32))
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            request = {"prompt": [list(range(8)), list(range(30))], "max_tokens": 4}
            error = (await sim.post("/v1/completions", request, 400))["error"]
            assert "maximum context length is 32 tokens" in error["message"]
            assert (await sim.metrics())[("vllm:prompt_tokens_total", None)] == 0
    finally:
        await server.close()
