"""The OpenAI Responses API (``/v1/responses``) as vLLM serves it: parsing, the ``response``
object and its SSE events. Nothing here imports aiohttp.

A request becomes chat messages the way vLLM builds them (``_construct_input_messages``):
``instructions`` as a system message, then the conversation of ``previous_response_id`` (its
messages and its output as an assistant message), then ``input`` (a string is one user
message; a list holds messages whose content is a string or ``input_text`` parts). They are
rendered and counted like a chat request, so a follow-up turn shares its prefix with the
previous one and hits the KV prefix cache where the previous prompt's blocks still are.

The ``response`` object carries vLLM's fields (``ResponsesResponse``); ``status`` is
``"completed"`` even when ``max_output_tokens`` cut the answer short, as vLLM reports it for
models without the Harmony format. A stream is named SSE events,
``event: <type>\\ndata: <json>\\n\\n``, numbered by ``sequence_number`` and with no ``[DONE]``:

    response.created, response.in_progress                      at once
    response.output_item.added, response.content_part.added     with the first token
    response.output_text.delta                                  one per token
    response.output_text.done, response.content_part.done,
    response.output_item.done, response.completed               with the last token

Item and content indexes are 0 throughout, as OpenAI numbers them (vLLM's stream increments
``content_index`` on every delta; clients ignore it).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from loadtest.sim.protocol import (
    FILLER_JSON,
    ApiError,
    bad_request,
    load_object,
    optional_bool,
    optional_int,
    optional_tools,
    resolve_model,
)

TEXT_PART_TYPES = frozenset({"input_text", "output_text", "text"})
# Request fields the response object repeats, with vLLM's values when the request omits them.
ECHOED_DEFAULTS: Mapping[str, Any] = {
    "metadata": None,
    "parallel_tool_calls": True,
    "temperature": 1.0,
    "tool_choice": "auto",
    "top_p": 1.0,
    "max_tool_calls": None,
    "prompt": None,
    "reasoning": None,
    "service_tier": "auto",
    "text": None,
    "top_logprobs": None,
    "truncation": "disabled",
    "user": None,
}


def response_not_found(response_id: str) -> ApiError:
    """vLLM's answer to an unknown ``previous_response_id`` or ``GET /v1/responses/{id}``."""
    return ApiError(
        404, f"Response with id '{response_id}' not found.", error_type="invalid_request_error"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsesRequest:
    """The fields of a ``/v1/responses`` request the simulator acts on or repeats."""

    model: str
    input_messages: list[Mapping[str, Any]]
    instructions: str | None
    tools: list[Any] | None
    max_output_tokens: int | None
    stream: bool
    store: bool
    previous_response_id: str | None
    ignore_eos: bool
    echoed: dict[str, Any]


def parse_responses_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> ResponsesRequest:
    fields = load_object(body)
    model = resolve_model(fields, served_model, adapters)
    instructions = fields.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("instructions must be a string", "instructions")
    previous_response_id = fields.get("previous_response_id")
    if previous_response_id is not None and not isinstance(previous_response_id, str):
        raise bad_request("previous_response_id must be a string", "previous_response_id")
    if optional_bool(fields, "background"):
        raise bad_request(
            "background mode is not supported by the simulator; send the request without "
            "`background`",
            "background",
        )
    echoed = {name: fields.get(name, default) for name, default in ECHOED_DEFAULTS.items()}
    for name in ("temperature", "top_p"):
        value = echoed[name]
        if value is None:
            echoed[name] = ECHOED_DEFAULTS[name]
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(f"{name} must be a number", name)
    return ResponsesRequest(
        model=model,
        input_messages=_input_messages(fields.get("input")),
        instructions=instructions,
        tools=optional_tools(fields),
        max_output_tokens=optional_int(fields, "max_output_tokens", minimum=1),
        stream=optional_bool(fields, "stream"),
        store=optional_bool(fields, "store", default=True),
        previous_response_id=previous_response_id,
        ignore_eos=optional_bool(fields, "ignore_eos"),
        echoed=echoed,
    )


def _input_messages(value: object) -> list[Mapping[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_request("input must be a string or a non-empty list of messages", "input")
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("role"), str):
            raise bad_request("each input item must be a message with a string role", "input")
        item_type = item.get("type", "message")
        if item_type != "message":
            raise bad_request(
                f"input items of type {item_type!r} are not supported by the simulator", "input"
            )
        content = item.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(_is_content_part(p) for p in content):
            raise bad_request(
                "a message's content must be a string or a list of content parts such as "
                '{"type": "input_text", "text": "..."}',
                "input",
            )
    return value


def _is_content_part(part: object) -> bool:
    if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
        return False
    return part["type"] not in TEXT_PART_TYPES or isinstance(part.get("text"), str)


def conversation(
    request: ResponsesRequest,
    previous_messages: Sequence[Mapping[str, Any]] = (),
    previous_output: str | None = None,
) -> list[Mapping[str, Any]]:
    """The chat messages a request is served as (vLLM's ``_construct_input_messages``)."""
    messages: list[Mapping[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages.extend(previous_messages)
    if previous_output is not None:
        messages.append({"role": "assistant", "content": previous_output})
    messages.extend(request.input_messages)
    return messages


def resolve_max_output_tokens(
    request: ResponsesRequest, prompt_len: int, max_model_len: int
) -> int:
    """The request's output limit (default: the rest of the context), or vLLM's 400."""
    if prompt_len >= max_model_len:
        raise ApiError(
            400,
            f"The engine prompt length {prompt_len} exceeds the max_model_len "
            f"{max_model_len}. Please reduce prompt.",
            error_type="invalid_request_error",
        )
    limit = request.max_output_tokens
    if limit is None:
        return max_model_len - prompt_len
    if prompt_len + limit > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + limit} tokens ({prompt_len} in the input, {limit} in "
            "the output). Please reduce the length of the input or max_output_tokens.",
            "max_output_tokens",
        )
    return limit


def response_usage(input_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseShape:
    """What one response's objects have in common, whatever its progress."""

    response_id: str
    item_id: str
    created_at: int
    model: str
    max_output_tokens: int
    request: ResponsesRequest

    def response(
        self, *, status: str, text: str | None, usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The ``response`` object, in vLLM's field order; ``text`` None means no output yet."""
        request = self.request
        echoed = request.echoed
        return {
            "id": self.response_id,
            "created_at": self.created_at,
            "incomplete_details": None,
            "instructions": request.instructions,
            "metadata": echoed["metadata"],
            "model": self.model,
            "object": "response",
            "output": [] if text is None else [self.message(text, logprobs=None)],
            "parallel_tool_calls": echoed["parallel_tool_calls"],
            "temperature": echoed["temperature"],
            "tool_choice": echoed["tool_choice"],
            "tools": request.tools or [],
            "top_p": echoed["top_p"],
            "background": False,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": echoed["max_tool_calls"],
            "previous_response_id": request.previous_response_id,
            "prompt": echoed["prompt"],
            "reasoning": echoed["reasoning"],
            "service_tier": echoed["service_tier"],
            "status": status,
            "text": echoed["text"],
            "top_logprobs": echoed["top_logprobs"],
            "truncation": echoed["truncation"],
            "usage": usage,
            "user": echoed["user"],
            "input_messages": None,
            "output_messages": None,
        }

    def message(
        self, text: str, *, logprobs: list[Any] | None, status: str = "completed"
    ) -> dict[str, Any]:
        """The assistant message output item."""
        content = [] if status == "in_progress" else [text_part(text, logprobs=logprobs)]
        return {
            "id": self.item_id,
            "content": content,
            "role": "assistant",
            "status": status,
            "type": "message",
        }


def text_part(text: str, *, logprobs: list[Any] | None) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


class ResponseEventEncoder:
    """The SSE events of one streamed response, numbered in the order they are encoded.

    Text deltas are on the hot path (one event per token), so their bytes are spliced from
    pre-encoded pieces; the other events are encoded once per response.
    """

    __slots__ = ("_delta_head", "_delta_mid", "_delta_tail", "_sequence", "_shape", "word_offset")

    def __init__(self, shape: ResponseShape, *, word_offset: int) -> None:
        self._shape = shape
        self.word_offset = word_offset
        self._sequence = 0
        self._delta_head = b'event: response.output_text.delta\ndata: {"content_index":0,"delta":'
        self._delta_mid = (
            b',"item_id":' + orjson.dumps(shape.item_id)
            + b',"logprobs":[],"output_index":0,"sequence_number":'
        )  # fmt: skip
        self._delta_tail = b',"type":"response.output_text.delta"}\n\n'

    def started(self) -> bytes:
        """``response.created`` and ``response.in_progress``, sent before the engine runs."""
        response = self._shape.response(status="in_progress", text=None, usage=None)
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    def item_added(self) -> bytes:
        """The output message and its text part open (sent with the first token)."""
        shape = self._shape
        message = shape.message("", logprobs=None, status="in_progress")
        part = text_part("", logprobs=[])
        return self._event(
            "response.output_item.added", {"item": message, "output_index": 0}
        ) + self._event(
            "response.content_part.added",
            {"content_index": 0, "item_id": shape.item_id, "output_index": 0, "part": part},
        )

    def deltas(self, start: int, stop: int) -> bytes:
        """One ``response.output_text.delta`` per token ``start..stop``."""
        count = len(FILLER_JSON)
        offset = self.word_offset
        head, mid, tail = self._delta_head, self._delta_mid, self._delta_tail
        first = self._sequence
        self._sequence += stop - start
        return b"".join(
            head + FILLER_JSON[(offset + i) % count] + mid + str(first + i - start).encode() + tail
            for i in range(start, stop)
        )

    def finished(self, text: str, completed: dict[str, Any]) -> bytes:
        """The text, part and item close, then ``response.completed`` with the whole
        response (usage included)."""
        shape = self._shape
        where = {"content_index": 0, "item_id": shape.item_id, "output_index": 0}
        return b"".join(
            (
                self._event("response.output_text.done", {**where, "logprobs": [], "text": text}),
                self._event(
                    "response.content_part.done",
                    {**where, "part": text_part(text, logprobs=None)},
                ),
                self._event(
                    "response.output_item.done",
                    {"item": shape.message(text, logprobs=None), "output_index": 0},
                ),
                self._event("response.completed", {"response": completed}),
            )
        )

    def _event(self, event_type: str, payload: dict[str, Any]) -> bytes:
        payload["sequence_number"] = self._sequence
        payload["type"] = event_type
        self._sequence += 1
        return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
