"""What became of one streamed request in the soak benchmark: completed, explicit error, lost
or hung (:func:`classify`), from what the client observed (:class:`StreamWatch`).

========  =====================================================================================
class     the client saw
========  =====================================================================================
complete  a 2xx answer and a stream that ended with ``data: [DONE]``, no error event in it
error     a non-2xx answer (with an OpenAI-style ``{"error": {...}}`` body, or not: those are
          counted apart, ``openai_body`` false), or an SSE error event (``data: {"error": ...}``)
          anywhere in a 2xx stream, whatever followed it
lost      the connection dropped (reset, closed mid-body, refused) with no error event, or a
          2xx stream that ended without ``[DONE]`` and without an error event (truncated)
hung      no byte for longer than the client's bound (twice the gateway's
          ``upstream.read_idle_timeout_s``), while waiting for the answer or inside the stream,
          or still unfinished at the driver's drain deadline
========  =====================================================================================

An error event takes precedence over how the stream then ended: the gateway tells the client
why it stops, then ends the stream without ``[DONE]`` (vLLM may send ``[DONE]`` after it).
A completed stream with fewer tokens than it asked for (``ignore_eos``) is still completed, but
flagged ``short`` (the relay lost bytes in the middle without noticing).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import orjson

from gateway.streaming import SseScanner


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    ERROR = "error"
    LOST = "lost"
    HUNG = "hung"


OUTCOMES = tuple(Outcome)


class StreamWatch:
    """Reads a relayed SSE stream as the client gets it: first token, tokens (from ``usage``),
    ``[DONE]``, and the first error event's code. Only whole events are looked at; JSON is
    decoded only for an event that mentions ``"error"``."""

    __slots__ = ("_buffer", "bytes_received", "error_code", "error_event", "scanner")

    def __init__(self) -> None:
        self.scanner = SseScanner(expect_usage=True)
        self._buffer = b""
        self.bytes_received = 0
        self.error_event = False
        self.error_code = ""

    @property
    def done(self) -> bool:
        return self.scanner.done

    @property
    def first_token_at(self) -> float | None:
        return self.scanner.first_token_at

    @property
    def completion_tokens(self) -> int:
        return self.scanner.completion_tokens

    def feed(self, chunk: bytes, now: float) -> None:
        self.bytes_received += len(chunk)
        self.scanner.feed(chunk, now)
        if self.error_event:
            return
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return
        self._buffer = data[end + 2 :]
        block = data[:end]
        if b'"error"' in block:
            self._find_error_event(block)

    def _find_error_event(self, block: bytes) -> None:
        for event in block.split(b"\n\n"):
            for line in event.split(b"\n"):
                if not line.startswith(b"data:") or b'"error"' not in line:
                    continue
                code = _error_code(line[5:])
                if code is not None:
                    self.error_event, self.error_code = True, code
                    return


def _error_code(data: bytes) -> str | None:
    """The code (or type, or message) of an OpenAI-style error object; ``None`` when ``data``
    is not one."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    error = obj["error"]
    if isinstance(error, dict):
        for key in ("code", "type", "message"):
            value = error.get(key)
            if value not in (None, ""):
                return str(value)
        return "error"
    return str(error) or "error"


def error_body_code(body: bytes) -> str | None:
    """The code of a non-2xx answer's OpenAI-style body, ``None`` when it is not one."""
    return _error_code(body.strip())


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything the client knows about a request when it ends."""

    status: int = 0
    """0 when no answer (headers) came."""
    body: bytes = b""
    """A non-2xx answer's body."""
    done: bool = False
    error_event: str | None = None
    """The code of the stream's error event, if it had one."""
    transport_error: str | None = None
    """The connection failed (refused, reset, closed mid-body): what the client library said."""
    silent_for_s: float | None = None
    """The client gave up after this long without a byte (the hung bound)."""
    unfinished: bool = False
    """Still running at the drain deadline."""


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str
    """Short and low-cardinality, e.g. ``HTTP 502 upstream_error``, ``sse upstream_timeout``,
    ``truncated: no [DONE]``, ``reset: ServerDisconnectedError``."""
    openai_body: bool = True
    """False for a non-2xx whose body is not an OpenAI error object."""


def classify(seen: Observed) -> Verdict:
    """The class of a request from what was observed (module docstring)."""
    if seen.error_event is not None:
        return Verdict(Outcome.ERROR, f"sse {seen.error_event}")
    if seen.unfinished:
        return Verdict(Outcome.HUNG, "unfinished at the drain deadline")
    if seen.silent_for_s is not None:
        where = "stream" if seen.status else "answer"
        return Verdict(Outcome.HUNG, f"no byte for {seen.silent_for_s:g} s ({where})")
    if seen.status >= 300:
        if seen.transport_error is not None:
            return Verdict(Outcome.LOST, f"HTTP {seen.status}, body cut: {seen.transport_error}")
        code = error_body_code(seen.body)
        if code is None:
            return Verdict(Outcome.ERROR, f"HTTP {seen.status} (no OpenAI body)", openai_body=False)
        return Verdict(Outcome.ERROR, f"HTTP {seen.status} {code}")
    if seen.transport_error is not None:
        return Verdict(Outcome.LOST, seen.transport_error)
    if seen.status == 0:
        return Verdict(Outcome.LOST, "no answer")
    if not seen.done:
        return Verdict(Outcome.LOST, "truncated: no [DONE], no error event")
    return Verdict(Outcome.COMPLETED, "ok")
