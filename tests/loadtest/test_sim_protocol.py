"""Request parsing and the SSE bytes the encoder builds (no server)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.tokenizer import load_tokenizer
from loadtest.sim.protocol import (
    FILLER_WORDS,
    ApiError,
    StreamEncoder,
    filler_text,
    parse_chat_request,
    parse_completion_request,
    resolve_max_tokens,
)

MODEL = "sim-llm"


def events(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n\n")
    frames = raw.split(b"\n\n")[:-1]
    assert all(frame.startswith(b"data: ") for frame in frames)
    return [orjson.loads(frame[len(b"data: ") :]) for frame in frames]


def test_filler_words_are_one_token_each_and_retokenize_exactly() -> None:
    tokenizer = load_tokenizer()
    assert all(len(tokenizer.encode(word)) == 1 for word in FILLER_WORDS)
    assert len(tokenizer.encode(filler_text(5, 0, 300))) == 300


@pytest.mark.parametrize("chat", [False, True], ids=["completion", "chat"])
def test_token_events_are_valid_json_with_finish_reason_on_the_last(chat: bool) -> None:
    encoder = StreamEncoder(chat=chat, request_id="id-1", created=7, model=MODEL, word_offset=3)
    parsed = events(encoder.tokens(0, 3, None) + encoder.tokens(3, 5, "length"))
    assert len(parsed) == 5
    assert [e["choices"][0]["finish_reason"] for e in parsed] == [None] * 4 + ["length"]
    key = "delta" if chat else "text"
    texts = [e["choices"][0][key]["content"] if chat else e["choices"][0][key] for e in parsed]
    assert "".join(texts) == filler_text(3, 0, 5)
    first = parsed[0]
    assert first["id"] == "id-1"
    assert first["object"] == ("chat.completion.chunk" if chat else "text_completion")
    assert first["created"] == 7
    assert first["model"] == MODEL
    assert first["choices"][0]["index"] == 0
    assert first["choices"][0]["logprobs"] is None
    assert parsed[-1]["choices"][0]["stop_reason"] is None


def test_role_and_usage_chunks() -> None:
    encoder = StreamEncoder(chat=True, request_id="c", created=1, model=MODEL, word_offset=0)
    (role,) = events(encoder.role_chunk())
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    (usage,) = events(encoder.usage_chunk(10, 5, 4))
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_empty_token_range_encodes_nothing() -> None:
    encoder = StreamEncoder(chat=False, request_id="c", created=1, model=MODEL, word_offset=0)
    assert encoder.tokens(4, 4, None) == b""


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("hello", ["hello"]),
        (["hello"], ["hello"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[4, 5]], [[4, 5]]),
        (["a", "b"], ["a", "b"]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
    ids=["string", "one-string-list", "ids", "one-ids-list", "batched-strings", "batched-ids"],
)
def test_completion_prompt_forms(prompt: object, prompts: list[str | list[int]]) -> None:
    parsed = parse_completion_request(orjson.dumps({"model": MODEL, "prompt": prompt}), MODEL)
    assert parsed.prompts == prompts
    assert parsed.n == 1
    assert parsed.max_tokens is None
    assert not parsed.stream


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "other", "prompt": "x"}', 404, "model"),
        (b'{"prompt": ["a", ""]}', 400, "prompt"),
        (b'{"prompt": [[1], []]}', 400, "prompt"),
        (b'{"prompt": [1, "a"]}', 400, "prompt"),
        (b'{"prompt": ""}', 400, "prompt"),
        (b'{"prompt": []}', 400, "prompt"),
        (b"{}", 400, "prompt"),
        (b'{"prompt": "x", "max_tokens": "5"}', 400, "max_tokens"),
        (b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
        (b'{"prompt": "x", "max_tokens": true}', 400, "max_tokens"),
        (b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
        (b'{"prompt": "x", "stream_options": {"include_usage": true}}', 400, "stream_options"),
        (b'{"prompt": "x", "n": 17}', 400, "n"),
        (b'{"prompt": "x", "n": 0}', 400, "n"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "unknown-model",
        "empty-string-in-batch",
        "empty-ids-in-batch",
        "mixed-list",
        "empty-string",
        "empty-list",
        "missing-prompt",
        "max-tokens-string",
        "max-tokens-zero",
        "max-tokens-bool",
        "stream-string",
        "stream-options-without-stream",
        "n-too-large",
        "n-zero",
    ],
)
def test_completion_errors(body: bytes, status: int, param: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse_completion_request(body, MODEL)
    assert caught.value.status == status
    assert caught.value.param == param
    error = orjson.loads(caught.value.body())["error"]
    assert error["code"] == status
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert error["message"]


def test_chat_renders_messages_and_prefers_max_completion_tokens() -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "max_completion_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parsed = parse_chat_request(orjson.dumps(body), MODEL)
    assert parsed.chat
    (prompt,) = parsed.prompts
    assert isinstance(prompt, str)
    assert "be brief" in prompt
    assert parsed.max_tokens == 4
    assert parsed.include_usage


@pytest.mark.parametrize(
    "body",
    [b'{"messages": []}', b'{"messages": [{"content": "x"}]}', b'{"messages": "hi"}'],
    ids=["empty", "no-role", "not-list"],
)
def test_chat_errors(body: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body, MODEL)
    assert caught.value.status == 400


def test_max_tokens_defaults_and_context_limit() -> None:
    completion = parse_completion_request(b'{"prompt": "x"}', MODEL)
    chat = parse_chat_request(b'{"messages": [{"role": "user", "content": "x"}]}', MODEL)
    assert resolve_max_tokens(completion, 10, 100) == 16
    assert resolve_max_tokens(chat, 10, 100) == 90
    explicit = parse_completion_request(b'{"prompt": "x", "max_tokens": 50}', MODEL)
    assert resolve_max_tokens(explicit, 50, 100) == 50
    with pytest.raises(ApiError, match="maximum context length is 100 tokens"):
        resolve_max_tokens(explicit, 51, 100)
    with pytest.raises(ApiError, match="input tokens"):
        resolve_max_tokens(chat, 100, 100)
