"""Incremental scanning of a relayed SSE stream, for measurement only.

The relay forwards upstream bytes untouched; this scanner reads the same bytes to learn when
the first generated token arrived, how many tokens came, the reported ``usage`` and whether the
stream ended with ``[DONE]``. Events may be split across chunks or several may share a chunk.

A "token event" is a ``data:`` event whose choices carry generated text: ``text`` (completions),
``delta.content`` / ``delta.reasoning_content`` / ``delta.tool_calls`` (chat). The first chat
chunk (``delta: {"role": "assistant", "content": ""}``) is not a token. ``usage`` reported by
the server, when present, is exact and wins over counted events (servers may pack several
tokens into one event).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# A generated-text field with a non-empty string value, or a tool-call list. Escaped quotes
# inside string values (\") cannot match: the key must be a bare quoted name.
_TOKEN_FIELD = re.compile(
    rb'"(?:text|content|reasoning_content)"\s*:\s*"(?!")|"tool_calls"\s*:\s*\[\s*\{'
)
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


class SseScanner:
    __slots__ = (
        "_buffer",
        "cached_tokens",
        "done",
        "expect_usage",
        "first_token_at",
        "prompt_tokens",
        "token_events",
        "usage_completion_tokens",
    )

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
        if not self.expect_usage:
            tokens = len(_TOKEN_FIELD.findall(block))
        elif self.first_token_at is not None:
            tokens = block.count(b"data:")
        else:
            first = _TOKEN_FIELD.search(block)
            tokens = 0 if first is None else 1 + block.count(b"data:", first.end())
        usage = _USAGE_OBJECT.search(block) if b'"usage"' in block else None
        if usage is not None:
            start = block.rfind(b"\n\n", 0, usage.start()) + 1
            end_of_event = block.find(b"\n\n", usage.end())
            self._read_usage_event(block[start : None if end_of_event < 0 else end_of_event])
        if not self.done:
            self.done = _ends_with_done(block)
        if not tokens:
            return False
        self.token_events += tokens
        if self.first_token_at is None:
            self.first_token_at = now
            return True
        return False

    def _read_usage_event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    obj = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                    self.read_usage(obj["usage"])

    def read_usage(self, usage: dict[str, Any]) -> None:
        completion = usage.get("completion_tokens")
        if isinstance(completion, int):
            self.usage_completion_tokens = completion
        prompt = usage.get("prompt_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            self.cached_tokens = details["cached_tokens"]


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


def scan_json_body(body: bytes, scanner: SseScanner) -> None:
    """Read ``usage`` from a non-streaming response body into ``scanner`` (best effort)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
        scanner.read_usage(obj["usage"])
