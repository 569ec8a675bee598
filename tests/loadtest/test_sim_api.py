"""The OpenAI endpoints of a real sim server: framing, usage, errors, limits."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient

from gateway.tokenizer import load_tokenizer
from loadtest.sim import SimConfig, create_sim_app

Client = TestClient[Request, Application]
MODEL = "sim-llm"
# A prompt of a few hundred tokens, so repeated requests have full blocks to share.
LONG_PROMPT = " ".join(f"word{i}" for i in range(200))
CHAT_MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture(params=["vllm", "slots"])
async def client(aiohttp_client: AiohttpClient, request: pytest.FixtureRequest) -> Client:
    """A sim of each engine: both serve the same HTTP surface."""
    config = SimConfig(engine=request.param, time_scale=1000.0)
    return await aiohttp_client(create_sim_app(config))


async def read_sse(response: ClientResponse) -> list[Any]:
    """All events of a stream; the ``[DONE]`` sentinel is returned as the string "[DONE]"."""
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    raw = await response.read()
    assert raw.endswith(b"\n\n")
    frames = raw.split(b"\n\n")[:-1]
    assert all(frame.startswith(b"data: ") for frame in frames)
    payloads = [frame[len(b"data: ") :] for frame in frames]
    assert payloads[-1] == b"[DONE]"
    assert payloads.count(b"[DONE]") == 1
    return [orjson.loads(p) for p in payloads[:-1]] + ["[DONE]"]


async def test_completion_stream_framing_and_exact_length(client: Client) -> None:
    response = await client.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Once",
            "max_tokens": 12,
            "ignore_eos": True,
            "stream": True,
        },
    )
    events = await read_sse(response)
    chunks = events[:-1]
    assert len(chunks) == 12
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 11 + ["length"]
    assert all(c["choices"][0]["text"] for c in chunks)
    assert all(c["choices"][0]["stop_reason"] is None for c in chunks)


async def test_chat_stream_role_first_content_per_token_and_usage(client: Client) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": CHAT_MESSAGES,
            "max_tokens": 7,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = await read_sse(response)
    role, *content, usage_chunk, done = events
    assert done == "[DONE]"
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(content) == 7
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_completion_non_stream(client: Client) -> None:
    response = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "Once", "max_tokens": 5, "ignore_eos": True},
    )
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length"
    assert len(load_tokenizer().encode(choice["text"])) == 5
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["prompt_tokens"] == len(load_tokenizer().encode("Once"))
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_chat_non_stream(client: Client) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": CHAT_MESSAGES,
            "max_completion_tokens": 3,
            "ignore_eos": True,
        },
    )
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_repeated_prompt_reports_cached_tokens(client: Client) -> None:
    request = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 2}
    first = await (await client.post("/v1/completions", json=request)).json()
    second = await (await client.post("/v1/completions", json=request)).json()
    prompt_tokens = first["usage"]["prompt_tokens"]
    assert prompt_tokens > 64
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (prompt_tokens - 1) // 16 * 16


async def test_output_length_without_ignore_eos_is_deterministic(client: Client) -> None:
    request = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 4000, "seed": 3}
    first = await (await client.post("/v1/completions", json=request)).json()
    second = await (await client.post("/v1/completions", json=request)).json()
    assert first["usage"]["completion_tokens"] == second["usage"]["completion_tokens"]
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["choices"][0]["finish_reason"] == "stop"


async def test_output_length_is_capped_by_max_tokens(client: Client) -> None:
    lengths = []
    for i in range(10):
        request = {"model": MODEL, "prompt": f"prompt {i}", "max_tokens": 40, "stream": True}
        events = await read_sse(await client.post("/v1/completions", json=request))
        chunks = events[:-1]
        lengths.append(len(chunks))
        reason = chunks[-1]["choices"][0]["finish_reason"]
        assert reason == ("length" if len(chunks) == 40 else "stop")
    assert max(lengths) <= 40


async def test_token_id_prompts(client: Client) -> None:
    for prompt in ([1, 2, 3, 4], [[5, 6, 7]]):
        response = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}
        )
        assert response.status == 200
        body = await response.json()
        assert body["usage"]["prompt_tokens"] == 3 + (prompt == [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type"),
    [
        ("/v1/completions", b'{"model": "nope", "prompt": "x"}', 404, "NotFoundError"),
        ("/v1/chat/completions", b'{"model": "nope", "messages": []}', 404, "NotFoundError"),
        ("/v1/completions", b'{"model": "sim-llm", "prompt": ', 400, "BadRequestError"),
        ("/v1/chat/completions", b"not json", 400, "BadRequestError"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}', 400, "BadRequestError"),
        ("/v1/completions", b'{"prompt": "x", "n": 17}', 400, "BadRequestError"),
    ],
    ids=["completion-model", "chat-model", "truncated-json", "chat-json", "type", "n-too-large"],
)
async def test_openai_style_errors(
    client: Client, path: str, body: bytes, status: int, error_type: str
) -> None:
    response = await client.post(path, data=body)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["type"] == error_type
    assert error["code"] == status
    assert error["message"]
    if status == 404:
        assert error["param"] == "model"


async def test_too_long_prompt_is_rejected(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_sim_app(SimConfig(max_model_len=64, kv_blocks=8)))
    long_ids = list(range(60))
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": long_ids, "max_tokens": 10}
    )
    assert response.status == 400
    assert "maximum context length is 64" in (await response.json())["error"]["message"]
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": list(range(64)), "max_tokens": 1}
    )
    assert response.status == 400


async def test_chat_default_max_tokens_fills_the_context(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(
        create_sim_app(SimConfig(max_model_len=128, kv_blocks=8, time_scale=1000.0))
    )
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": CHAT_MESSAGES, "ignore_eos": True}
    )
    usage = (await response.json())["usage"]
    assert usage["total_tokens"] == 128


async def test_large_prompt_is_tokenized_off_the_loop(client: Client) -> None:
    text = "lorem ipsum dolor " * 3000  # > 20k characters
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": text, "max_tokens": 1}
    )
    assert response.status == 200
    assert (await response.json())["usage"]["prompt_tokens"] == len(load_tokenizer().encode(text))


async def test_models_and_health(client: Client) -> None:
    response = await client.get("/v1/models")
    body = await response.json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == MODEL
    assert card["object"] == "model"
    assert card["owned_by"] == "slogate-sim"
    assert card["max_model_len"] == 32768
    assert isinstance(card["created"], int)
    health = await client.get("/health")
    assert health.status == 200
    assert await health.read() == b""


async def test_sim_stats_reports_step_timing(client: Client) -> None:
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3})
    stats = await (await client.get("/sim/stats")).json()
    # vllm: a step per token; slots: a wake-up may release several tokens at time_scale 1000.
    min_steps = 3 if stats["engine"] == "vllm" else 1
    assert stats["generation_tokens"] == 3
    assert stats["steps"] >= min_steps
    assert stats["simulated_s"] > 0
    if stats["engine"] == "vllm":
        assert stats["step_timing"]["steps"] >= min_steps
    else:
        # slots: the timing log counts timer wake-ups that ran to their end; at time_scale
        # 1000 a short request can finish on wake-ups that were cut short (its own arrival).
        assert 0 <= stats["step_timing"]["steps"] <= stats["steps"]
    assert (await client.post("/sim/stats/reset")).status == 204
    stats = await (await client.get("/sim/stats")).json()
    assert stats["step_timing"]["steps"] == 0
