"""The OpenAI wire format as vLLM speaks it: request parsing and response bytes.

Parsing turns a request body into a :class:`ParsedRequest` or raises :class:`ApiError` with
vLLM's status, error type and message. Encoding is on the hot path: every streamed token is
one SSE event, so :class:`StreamEncoder` pre-encodes each request's JSON chunk around the
token text once and splices pre-encoded filler words in as bytes, one ``join`` per write.
Nothing here imports aiohttp; the server module adapts it to HTTP.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.tokenizer import render_chat

# Common words that are one cl100k token each with their leading space, so the generated
# text re-tokenizes to exactly as many tokens as were streamed (a multi-turn replay that
# sends the answer back gets the prompt length it expects).
# fmt: off
FILLER_WORDS: tuple[str, ...] = (
    " the", " of", " and", " to", " in", " is", " was", " for", " on", " with", " as", " by",
    " at", " from", " that", " this", " it", " are", " be", " or", " an", " which", " have",
    " has", " not", " but", " they", " his", " her", " their", " one", " all", " were", " we",
    " when", " there", " can", " been", " more", " who", " will", " would", " so", " if", " no",
    " out", " up", " about", " into", " than", " them", " only", " other", " time", " new",
    " some", " could", " these", " two", " may", " first", " then", " do", " any",
)
# fmt: on
# Each filler word as a JSON string, spliced into pre-encoded events.
FILLER_JSON: tuple[bytes, ...] = tuple(orjson.dumps(word) for word in FILLER_WORDS)

SSE_DONE = b"data: [DONE]\n\n"
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# A sanity bound on sequences per prompt (vLLM has none): each one is an engine request.
MAX_N = 16
# What GET /version reports: a vLLM release whose API and metrics the sim follows.
VLLM_VERSION = "0.10.2"


class ApiError(Exception):
    """An OpenAI-style error response: status, ``type``, ``message`` and ``param``."""

    def __init__(
        self, status: int, message: str, *, error_type: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.error_type,
                    "param": self.param,
                    "code": self.status,
                }
            }
        )


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, error_type="BadRequestError", param=param)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model `{model}` does not exist.", error_type="NotFoundError", param="model"
    )


def engine_stopped() -> ApiError:
    """The engine loop ended (shutdown) before the request finished."""
    return ApiError(503, "the engine stopped", error_type="ServiceUnavailableError")


# One prompt of a request: its text, or its token ids.
Prompt = str | list[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedRequest:
    """The fields of a completions or chat request that the simulator acts on. ``model`` is
    the name the request asked for: the base model or one of its LoRA adapters. ``prompts``
    has one entry per prompt (a completions batch may have several; chat has one), and each
    prompt is sampled ``n`` times."""

    chat: bool
    prompts: list[Prompt]
    n: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    ignore_eos: bool
    seed: int | None
    model: str


def parse_completion_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> ParsedRequest:
    """Parse ``/v1/completions``: ``prompt`` is a string, a list of token ids, or a batch (a
    list of strings or of token-id lists), one engine request per prompt as in vLLM."""
    fields = load_object(body)
    common = _common_fields(fields, served_model, adapters)
    prompt = fields.get("prompt")
    prompts: list[Prompt]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        if all(isinstance(item, str) for item in prompt):
            prompts = list(prompt)
        elif all(is_token_id(item) for item in prompt):
            prompts = [prompt]
        elif all(isinstance(item, list) for item in prompt):
            if not all(item and all(is_token_id(token) for token in item) for item in prompt):
                raise bad_request("prompt must be a list of non-negative token ids", "prompt")
            prompts = list(prompt)
        else:
            raise bad_request(
                "prompt must be a string, a list of strings, a list of token ids "
                "or a list of lists of token ids",
                "prompt",
            )
    else:
        raise bad_request("prompt is required and must not be empty", "prompt")
    if "" in prompts:
        raise bad_request("prompt must not be empty", "prompt")
    return ParsedRequest(chat=False, prompts=prompts, **common)


def parse_chat_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> ParsedRequest:
    """Parse ``/v1/chat/completions`` and render its messages (and tools) as one prompt."""
    fields = load_object(body)
    common = _common_fields(fields, served_model, adapters)
    # max_completion_tokens is OpenAI's newer name; like vLLM, it wins over max_tokens.
    max_completion_tokens = optional_int(fields, "max_completion_tokens", minimum=1)
    if max_completion_tokens is not None:
        common["max_tokens"] = max_completion_tokens
    messages = parse_messages(fields)
    tools = optional_tools(fields)
    return ParsedRequest(chat=True, prompts=[render_chat(messages, tools)], **common)


def resolve_max_tokens(parsed: ParsedRequest, prompt_len: int, max_model_len: int) -> int:
    """The request's token limit, or vLLM's 400 when prompt plus output cannot fit."""
    if prompt_len >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_len} input tokens. Please reduce the length of the input "
            "messages.",
            "messages" if parsed.chat else "prompt",
        )
    if parsed.max_tokens is None:
        return max_model_len - prompt_len if parsed.chat else DEFAULT_COMPLETION_MAX_TOKENS
    if prompt_len + parsed.max_tokens > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + parsed.max_tokens} tokens ({prompt_len} in the messages, "
            f"{parsed.max_tokens} in the completion). Please reduce the length of the messages "
            "or completion.",
            "max_tokens",
        )
    return parsed.max_tokens


def filler_text(word_offset: int, start: int, stop: int) -> str:
    """The generated text of tokens ``start..stop`` (one filler word per token)."""
    count = len(FILLER_WORDS)
    return "".join(FILLER_WORDS[(word_offset + i) % count] for i in range(start, stop))


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class StreamEncoder:
    """SSE bytes for one request's stream, built from templates encoded once per request."""

    __slots__ = (
        "_chat",
        "_created",
        "_head",
        "_id",
        "_index",
        "_model",
        "_next",
        "_tail",
        "_word_offset",
    )

    def __init__(
        self,
        *,
        chat: bool,
        request_id: str,
        created: int,
        model: str,
        word_offset: int,
        index: int = 0,
    ) -> None:
        self._chat = chat
        self._id = request_id
        self._created = created
        self._model = model
        self._word_offset = word_offset
        self._index = index
        obj = "chat.completion.chunk" if chat else "text_completion"
        prefix = (
            b'data: {"id":' + orjson.dumps(request_id) + b',"object":"' + obj.encode()
            + b'","created":' + str(created).encode() + b',"model":' + orjson.dumps(model)
            + b',"choices":[{"index":' + str(index).encode() + b","
        )  # fmt: skip
        if chat:
            self._head = prefix + b'"delta":{"content":'
            self._tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._head = prefix + b'"text":'
            self._tail = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
        # Between two token events: the end of one chunk and the start of the next.
        self._next = self._tail + self._head

    def role_chunk(self) -> bytes:
        """vLLM's first chat event: the assistant role with empty content."""
        return b"data: " + orjson.dumps(self._chunk({"role": "assistant", "content": ""})) + b"\n\n"

    def tokens(self, start: int, stop: int, finish_reason: str | None) -> bytes:
        """One event per token ``start..stop``; the last carries ``finish_reason`` if given."""
        if stop <= start:
            return b""
        count = len(FILLER_JSON)
        offset = self._word_offset
        words = [FILLER_JSON[(offset + i) % count] for i in range(start, stop)]
        if finish_reason is None:
            tail = self._tail
        elif self._chat:
            tail = b'},"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n' % (
                finish_reason.encode()
            )
        else:
            tail = b',"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n' % (
                finish_reason.encode()
            )
        return self._head + self._next.join(words) + tail

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> bytes:
        """The ``stream_options.include_usage`` event: no choices, just usage."""
        payload: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [],
            "usage": usage_dict(prompt_tokens, completion_tokens, cached_tokens),
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def _chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [
                {"index": self._index, "delta": delta, "logprobs": None, "finish_reason": None}
            ],
        }


def completion_body(
    *,
    chat: bool,
    request_id: str,
    created: int,
    model: str,
    choices: Sequence[tuple[str, str]],
    usage: dict[str, Any],
) -> bytes:
    """The non-streaming response, as vLLM shapes it: ``choices`` holds each choice's text and
    finish reason, in index order."""
    if chat:
        items = [
            {
                "index": index,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
            for index, (text, finish_reason) in enumerate(choices)
        ]
    else:
        items = [
            {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            for index, (text, finish_reason) in enumerate(choices)
        ]
    return orjson.dumps(
        {
            "id": request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": items,
            "usage": usage,
        }
    )


def parse_messages(fields: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The chat ``messages`` of a request: a non-empty list of objects with a string role."""
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise bad_request("each message must be an object with a string role", "messages")
    return messages


def optional_tools(fields: Mapping[str, Any]) -> list[Any] | None:
    tools = fields.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("tools must be a list", "tools")
    return tools


def resolve_model(fields: Mapping[str, Any], served_model: str, adapters: Collection[str]) -> str:
    """The model a request names (the base model when it names none): the base model or one
    of its LoRA adapters; anything else is vLLM's 404."""
    model = fields.get("model")
    if model is None:
        return served_model
    if not isinstance(model, str):
        raise bad_request("model must be a string", "model")
    if model != served_model and model not in adapters:
        raise model_not_found(model)
    return model


def load_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (400 otherwise)."""
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise bad_request("request body must be a JSON object")
    return fields


def _common_fields(
    fields: Mapping[str, Any], served_model: str, adapters: Collection[str]
) -> dict[str, Any]:
    model = resolve_model(fields, served_model, adapters)
    n = optional_int(fields, "n", minimum=1)
    if n is not None and n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N} in the simulator, got {n}.", "n")
    stream = optional_bool(fields, "stream")
    stream_options = fields.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise bad_request(
                "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        if not isinstance(stream_options, dict):
            raise bad_request("stream_options must be an object", "stream_options")
        include_usage = optional_bool(stream_options, "include_usage")
    return {
        "n": 1 if n is None else n,
        "max_tokens": optional_int(fields, "max_tokens", minimum=1),
        "stream": stream,
        "include_usage": include_usage,
        "ignore_eos": optional_bool(fields, "ignore_eos"),
        "seed": optional_int(fields, "seed", minimum=None),
        "model": model,
    }


def optional_int(fields: Mapping[str, Any], name: str, *, minimum: int | None) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer", name)
    if minimum is not None and value < minimum:
        raise bad_request(f"{name} must be at least {minimum}, got {value}.", name)
    return value


def optional_bool(fields: Mapping[str, Any], name: str, *, default: bool = False) -> bool:
    value = fields.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean", name)
    return value


def is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
