"""Incremental scanning of a relayed SSE stream, for measurement only.

The relay forwards upstream bytes untouched; this scanner reads the same bytes to learn when
the first generated token arrived, how many tokens came, the reported ``usage`` and whether the
stream ended with ``[DONE]``. Events may be split across chunks or several may share a chunk.

A "token event" is a ``data:`` event whose choices carry generated text: ``text`` (completions),
``delta.content`` / ``delta.reasoning_content`` / ``delta.tool_calls`` (chat). The first chat
chunk (``delta: {"role": "assistant", "content": ""}``) is not a token. ``usage`` reported by
the server, when present, is exact and wins over counted events (servers may pack several
tokens into one event).

The Responses API streams named events instead (:class:`ResponsesScanner`): a token event is
any output delta, ``response.output_text.delta`` and its friends (``reasoning_text``,
``function_call_arguments``, ``refusal``, ... ``.delta``), recognised by the ``type`` field of
its data; ``usage`` (``input_tokens``, ``output_tokens``, ``input_tokens_details.cached_tokens``)
comes with ``response.completed``; ``response.created`` names the response's id; the stream
ends with ``response.completed``, ``response.incomplete`` or ``response.failed`` (no
``[DONE]``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import orjson

# A generated-text field with a non-empty string value, or a tool-call list. Escaped quotes
# inside string values (\") cannot match: the key must be a bare quoted name.
_TOKEN_FIELD = re.compile(
    rb'"(?:text|content|reasoning_content)"\s*:\s*"(?!")|"tool_calls"\s*:\s*\[\s*\{'
)
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
# The type of a Responses output delta event, in its data (the ``event:`` line has no quotes).
_RESPONSES_DELTA = re.compile(rb'"type"\s*:\s*"response\.[a-z_.]+\.delta"')
_RESPONSES_END = re.compile(rb'"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')


class SseScanner:
    __slots__ = (
        "_buffer",
        "cached_tokens",
        "done",
        "expect_usage",
        "first_token_at",
        "prompt_tokens",
        "response_id",
        "token_events",
        "usage_completion_tokens",
    )

    TOKEN_FIELD: ClassVar[re.Pattern[bytes]] = _TOKEN_FIELD

    def __init__(self, *, expect_usage: bool = False) -> None:
        self.expect_usage = expect_usage
        """The client asked for ``stream_options.include_usage``: the server will report the
        exact token count at the end, so after the first token events are only counted
        roughly (one per ``data:`` line), which costs a fraction of recognizing them."""
        self._buffer = b""
        self.first_token_at: float | None = None
        self.token_events = 0
        self.usage_completion_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.done = False
        self.response_id: str | None = None
        """The Responses API's id of the response (``response.created``, or the body's)."""

    @property
    def mid_event(self) -> bool:
        """The bytes fed so far end inside an event (no blank line after its last line)."""
        return bool(self._buffer)

    @property
    def completion_tokens(self) -> int:
        if self.usage_completion_tokens is not None:
            return self.usage_completion_tokens
        return self.token_events

    def feed(self, chunk: bytes, now: float) -> bool:
        """Scan a relayed chunk; returns True when it held the first token event.

        Works on all complete events of the chunk at once (one regex pass), decoding JSON only
        for an event that carries ``usage``: per-event Python work is what a relay can't afford.
        """
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return False
        self._buffer = data[end + 2 :]
        block = data[:end]
        token_field = self.TOKEN_FIELD
        if not self.expect_usage:
            tokens = len(token_field.findall(block))
        elif self.first_token_at is not None:
            tokens = block.count(b"data:")
        else:
            first = token_field.search(block)
            tokens = 0 if first is None else 1 + block.count(b"data:", first.end())
        usage = _USAGE_OBJECT.search(block) if b'"usage"' in block else None
        if usage is not None:
            self._read_usage_event(_event_around(block, usage.start(), usage.end()))
        self._after_block(block)
        if not tokens:
            return False
        self.token_events += tokens
        if self.first_token_at is None:
            self.first_token_at = now
            return True
        return False

    def _after_block(self, block: bytes) -> None:
        """What else a block of whole events says (here: whether the stream is done)."""
        if not self.done:
            self.done = _ends_with_done(block)

    def _read_usage_event(self, event: bytes) -> None:
        obj = _event_data(event)
        if obj is not None:
            usage = _usage_of(obj)
            if usage is not None:
                self.read_usage(usage)

    def read_usage(self, usage: dict[str, Any]) -> None:
        """Chat and completions' names (``completion_tokens``, ``prompt_tokens``,
        ``prompt_tokens_details``) or the Responses API's (``output_tokens``, ``input_tokens``,
        ``input_tokens_details``)."""
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(completion, int):
            self.usage_completion_tokens = completion
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            self.cached_tokens = details["cached_tokens"]


class ResponsesScanner(SseScanner):
    """:class:`SseScanner` for the Responses API's named events (module docstring)."""

    __slots__ = ()

    TOKEN_FIELD = _RESPONSES_DELTA

    def __init__(self) -> None:
        # Exact counting always: other events (``output_text.done``, ...) follow the tokens.
        super().__init__(expect_usage=False)

    def _after_block(self, block: bytes) -> None:
        if self.response_id is None:
            self._find_response_id(block)
        if not self.done:
            self.done = _RESPONSES_END.search(block) is not None

    def _find_response_id(self, block: bytes) -> None:
        # ``response.created`` is the stream's first event (``response.in_progress``, right
        # after it, names the response too). Looked for only until found.
        for name in (b"response.created", b"response.in_progress"):
            at = block.find(name)
            if at >= 0:
                obj = _event_data(_event_around(block, at, at))
                response = obj.get("response") if obj is not None else None
                if isinstance(response, dict) and isinstance(response.get("id"), str):
                    self.response_id = response["id"]
                    return


def _event_around(block: bytes, start: int, end: int) -> bytes:
    """The whole SSE event holding ``block[start:end]``."""
    first = block.rfind(b"\n\n", 0, start) + 1
    last = block.find(b"\n\n", end)
    return block[first : None if last < 0 else last]


def _event_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object on the event's ``data:`` line (``None`` if there is none)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _usage_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """``usage`` of a chunk, or of the response a Responses event carries."""
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    response = obj.get("response")
    if isinstance(response, dict) and isinstance(response.get("usage"), dict):
        found: dict[str, Any] = response["usage"]
        return found
    return None


def _ends_with_done(block: bytes) -> bool:
    """Whether the block's last ``[DONE]`` sits on a ``data: [DONE]`` line of its own.

    Looks only at that one line: a regex over the whole block costs ~10 µs per response, and
    ``[DONE]`` inside generated text is escaped in JSON, never alone on a line.
    """
    at = block.rfind(b"[DONE]")
    if at < 0:
        return False
    start = block.rfind(b"\n", 0, at) + 1
    end = block.find(b"\n", at)
    line = block[start : None if end < 0 else end].strip()
    return line.startswith(b"data:") and line[5:].strip() == b"[DONE]"


def scan_usage_only(body: bytes, scanner: SseScanner) -> None:
    """Read ``usage`` from a pooling response body without decoding the rest: an embeddings
    answer is mostly vectors (a batch of 1,000 inputs is megabytes of floats), and the relay
    must not spend tens of milliseconds of event loop on them. ``usage`` is a small object of
    counts; it is cut out by its braces and decoded alone (best effort)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return
    start = body.find(b"{", at)
    if start < 0 or body[at + 7 : start].strip(b" \t\r\n:"):
        return  # "usage": null, or not an object
    depth = 0
    for end in range(start, min(len(body), start + 4096)):
        char = body[end]
        if char == 0x7B:  # {
            depth += 1
        elif char == 0x7D:  # }
            depth -= 1
            if depth == 0:
                try:
                    usage = orjson.loads(body[start : end + 1])
                except orjson.JSONDecodeError:
                    return
                if isinstance(usage, dict):
                    scanner.read_usage(usage)
                return


def scan_json_body(body: bytes, scanner: SseScanner) -> None:
    """Read ``usage`` from a non-streaming response body into ``scanner`` (best effort), and
    a Responses API response's ``id``."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(obj, dict):
        return
    if isinstance(obj.get("usage"), dict):
        scanner.read_usage(obj["usage"])
    if obj.get("object") == "response" and isinstance(obj.get("id"), str):
        scanner.response_id = obj["id"]
