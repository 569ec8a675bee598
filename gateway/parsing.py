"""Parse an OpenAI (or vLLM) request body once, validating only what routing needs.

The body is decoded with orjson a single time; the original bytes are what gets forwarded.
Fields the gateway does not use are not validated: the model server owns them and answers
with its own errors. What routing needs, per kind of request (``Api``):

- every kind: ``model`` (a non-empty string);
- completions: ``prompt`` (a string, strings, token ids or token-id lists: a list of several
  is a batch), ``n``, ``max_tokens``, ``stream``, ``stream_options.include_usage``;
- chat: ``messages`` (+ ``tools``), ``n``, ``max_completion_tokens`` / ``max_tokens``, ``stream``;
- responses: ``input`` (a string or a list of items: messages with string or part-list
  content, function calls and their outputs, reasoning), ``instructions``, ``tools``,
  ``max_output_tokens``, ``stream``, ``previous_response_id``;
- pooling kinds (embeddings, pooling, classify, score, rerank): their inputs, see
  :mod:`gateway.pooling_inputs`; never streamed.

A malformed field is a 400 whose message and ``param`` name it (``input[2].content``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import BadRequestError
from gateway.pooling_inputs import pooling_prompt, prompt_batch
from gateway.request_fields import chat_messages, required, type_error
from gateway.tokenizer import chat_segments, message_text
from scheduler.framework.types import Api


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedRequest:
    api: Api
    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool
    segments: list[str]
    """The prompt as text pieces to tokenize (chat: ChatML pieces); empty when ids were given."""
    prompt_ids: list[int] | None
    n: int = 1
    batch_size: int = 1
    """Prompts in the request; ``segments`` / ``prompt_ids`` hold all of them in order."""
    previous_response_id: str | None = None
    max_tokens_fields: tuple[tuple[str, int], ...] = ()
    """Every max-tokens field the request gave, with its value (chat may give both
    ``max_completion_tokens`` and ``max_tokens``): what the gateway's limits check."""

    @property
    def prompt_chars(self) -> int:
        return sum(len(s) for s in self.segments)


def parse_request(body: bytes, api: Api) -> ParsedRequest:
    data = load_json_object(body)
    model = required(data, "model")
    if not isinstance(model, str) or not model:
        raise type_error("model", "a non-empty string")
    if not api.generates:
        segments, ids, batch = pooling_prompt(data, api)
        return ParsedRequest(
            api=api,
            model=model,
            stream=False,
            max_tokens=None,
            include_usage=False,
            segments=segments,
            prompt_ids=ids,
            batch_size=batch,
        )
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise type_error("stream", "a boolean")
    if api is Api.RESPONSES:
        max_output = _max_tokens(data, "max_output_tokens")
        return ParsedRequest(
            api=api,
            model=model,
            stream=stream,
            max_tokens=max_output,
            include_usage=False,
            segments=_responses_prompt(data),
            prompt_ids=None,
            previous_response_id=_previous_response_id(data),
            max_tokens_fields=() if max_output is None else (("max_output_tokens", max_output),),
        )
    include_usage = _include_usage(data.get("stream_options"))
    max_tokens = _max_tokens(data, "max_tokens")
    limits = () if max_tokens is None else (("max_tokens", max_tokens),)
    batch = 1
    if api is Api.CHAT:
        chat_max = _max_tokens(data, "max_completion_tokens")
        if chat_max is not None:
            limits = (("max_completion_tokens", chat_max), *limits)
        max_tokens = chat_max if chat_max is not None else max_tokens
        segments = _chat_prompt(data)
        prompt_ids = None
    else:
        segments, prompt_ids, batch = prompt_batch(required(data, "prompt"), "prompt")
    return ParsedRequest(
        api=api,
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        include_usage=include_usage,
        segments=segments,
        prompt_ids=prompt_ids,
        n=_n(data),
        batch_size=batch,
        max_tokens_fields=limits,
    )


def load_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 ``invalid_json``."""
    if not body:
        raise BadRequestError("request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object", code="invalid_json")
    return data


def _max_tokens(data: Mapping[str, Any], field: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(field, "an integer")
    if value < 1:
        raise BadRequestError(f"'{field}' must be at least 1", param=field)
    return value


def _n(data: Mapping[str, Any]) -> int:
    value = data.get("n")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error("n", "an integer")
    if value < 1:
        raise BadRequestError("'n' must be at least 1", param="n")
    return value


def _include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise type_error("stream_options", "an object")
    include = options.get("include_usage", False)
    if include is None:
        return False
    if not isinstance(include, bool):
        raise type_error("stream_options.include_usage", "a boolean")
    return include


def _tools(data: Mapping[str, Any]) -> list[Any] | None:
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise type_error("tools", "an array")
    return tools


def _chat_prompt(data: Mapping[str, Any]) -> list[str]:
    return chat_segments(chat_messages(data), _tools(data))


# -- the Responses API ---------------------------------------------------------------------
def _previous_response_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("previous_response_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise type_error("previous_response_id", "a non-empty string")
    return value


def _responses_prompt(data: Mapping[str, Any]) -> list[str]:
    """``instructions`` and ``input`` rendered as chat messages, as vLLM renders them: the
    instructions as a system message first, a string input as one user message."""
    messages: list[dict[str, Any]] = []
    instructions = data.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise type_error("instructions", "a string")
        messages.append({"role": "system", "content": instructions})
    items = required(data, "input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            message = _response_item(item, i)
            if message is not None:
                messages.append(message)
    else:
        raise type_error("input", "a string or an array of input items")
    return chat_segments(messages, _tools(data))


def _response_item(item: Any, i: int) -> dict[str, Any] | None:
    """One ``input`` item as a chat message (``None`` for items that carry no prompt text)."""
    field = f"input[{i}]"
    if not isinstance(item, dict):
        raise type_error(field, "an object")
    kind = item.get("type")
    if kind is not None and not isinstance(kind, str):
        raise type_error(f"{field}.type", "a string")
    if kind is None or kind == "message":
        role = item.get("role")
        if not isinstance(role, str):
            raise type_error(f"{field}.role", "a string")
        content = item.get("content")
        if content is not None and not isinstance(content, str | list):
            raise type_error(f"{field}.content", "a string or an array of content parts")
        return {"role": role, "content": content}
    if kind == "function_call":
        name, arguments = item.get("name"), item.get("arguments")
        text = (name if isinstance(name, str) else "") + (
            arguments if isinstance(arguments, str) else ""
        )
        return {"role": "assistant", "content": text}
    if kind == "function_call_output":
        return {"role": "tool", "content": message_text(item.get("output"))}
    if kind == "reasoning":
        text = message_text(item.get("summary")) + message_text(item.get("content"))
        return {"role": "assistant", "content": text}
    return None  # item references, tool calls of other kinds: the model server resolves them
