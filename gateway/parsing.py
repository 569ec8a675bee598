"""Parse an OpenAI request body once, validating only what routing needs.

The body is decoded with orjson a single time; the original bytes are what gets forwarded.
Fields the gateway does not use are not validated: the model server owns them and answers
with its own errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import BadRequestError
from gateway.tokenizer import chat_segments
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

    @property
    def prompt_chars(self) -> int:
        return sum(len(s) for s in self.segments)


def parse_request(body: bytes, api: Api) -> ParsedRequest:
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

    model = _required(data, "model")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean")
    include_usage = _include_usage(data.get("stream_options"))
    max_tokens = _max_tokens(data, "max_tokens")
    if api is Api.CHAT:
        chat_max = _max_tokens(data, "max_completion_tokens")
        max_tokens = chat_max if chat_max is not None else max_tokens
        segments = _chat_prompt(data)
        prompt_ids = None
    else:
        text, prompt_ids = _completion_prompt(_required(data, "prompt"))
        segments = [] if text is None else [text]
    return ParsedRequest(
        api=api,
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        include_usage=include_usage,
        segments=segments,
        prompt_ids=prompt_ids,
    )


def _required(data: Mapping[str, Any], field: str) -> Any:
    if field not in data or data[field] is None:
        raise BadRequestError(
            f"missing required parameter: '{field}'", code="missing_required_parameter", param=field
        )
    return data[field]


def _type_error(field: str, expected: str) -> BadRequestError:
    return BadRequestError(f"'{field}' must be {expected}", code="invalid_type", param=field)


def _max_tokens(data: Mapping[str, Any], field: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(field, "an integer")
    if value < 1:
        raise BadRequestError(f"'{field}' must be at least 1", param=field)
    return value


def _include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object")
    include = options.get("include_usage", False)
    if include is None:
        return False
    if not isinstance(include, bool):
        raise _type_error("stream_options.include_usage", "a boolean")
    return include


def _chat_prompt(data: Mapping[str, Any]) -> list[str]:
    messages = _required(data, "messages")
    if not isinstance(messages, list) or not messages:
        raise _type_error("messages", "a non-empty array of message objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{i}]", "an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise _type_error(f"messages[{i}].role", "a string")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _type_error(f"messages[{i}].content", "a string or an array of content parts")
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _type_error("tools", "an array")
    return chat_segments(messages, tools)


def _completion_prompt(prompt: Any) -> tuple[str | None, list[int] | None]:
    """``prompt`` as a string, strings, token ids, or lists of token ids (OpenAI's four forms).

    A batch (several prompts) goes to one endpoint as one request; its prompts are joined for
    counting and for the prefix index, which only the first one's prefix really benefits.
    """
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "".join(prompt), None
        if all(_is_token_id(t) for t in prompt):
            return None, prompt
        if all(isinstance(p, list) and p for p in prompt) and all(
            _is_token_id(t) for p in prompt for t in p
        ):
            return None, [t for p in prompt for t in p]
    raise _type_error(
        "prompt",
        "a string, an array of strings, an array of token ids or an array of token-id arrays",
    )


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32
