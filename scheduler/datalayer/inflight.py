"""Gateway-side in-flight accounting per endpoint.

Counts what the gateway dispatched and has not seen finish, which is fresher than any scrape:
it changes the instant a request is dispatched. ``requests`` counts sequences: a request the
model server runs as several (``n`` > 1, a batch of prompts) counts as that many, since each
one takes a slot in its batch. ``prefill_tokens`` holds the uncached prompt tokens of requests
that have not produced a first token yet (they are still in prefill); they are released at the
first token, or at the end for requests that never stream one.

It also times each endpoint's engine steps from the chunks the gateway relays (:meth:`chunk`,
called by the director for every chunk of a streamed response that completes a token event).
A model server sends every running stream one chunk per engine step, so:

- the last chunk relayed from an endpoint marks about when its last step ended;
- the gap between two consecutive chunks of one stream is one step's duration. The endpoint's
  ``interval_s`` is an exponentially weighted mean of these gaps, fed once per step, so a step
  counts once however many streams it served: by the first chunk of a stream that already had
  a chunk in the latest step seen (a chunk of a stream that had none belongs to that step).

Step timing is reported only while at least one stream from the endpoint has produced a chunk
and not finished: otherwise the endpoint is idle or all its requests are in prefill, and the
last chunk says nothing about the step in progress.

With more than one gateway replica in front of a pool, each also learns the other replicas' in
flight counts (:meth:`InflightTracker.set_remote`, from ``gateway.backends.peers``): ``load``
is the sum, what the pool's pods really hold from all gateways; :meth:`local` is this
gateway's own part. Step timing and silence stay local (they come from relayed chunks).

The same chunks tell a **silent** endpoint (:meth:`InflightTracker.silent_s`): streamed requests
in flight on it, and no chunk from any of them for a while (counted from the latest chunk, or
from when its first stream in flight was dispatched). A model server relays every running
stream a chunk per engine step, so seconds of silence while it holds streams mean it stalled
(a hung GPU, a throttled or frozen process) long before a read-idle timeout ends those streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scheduler.framework.types import NO_INFLIGHT, InflightLoad, StepTiming

STEP_SMOOTHING = 0.5
"""Weight of the newest step in ``interval_s``: steps change with the batch, so recent ones
count most."""


@dataclass(slots=True)
class _Steps:
    """One endpoint's step clock (mutable; read through :meth:`InflightTracker.steps`)."""

    streams: int = 0
    """Streams that have relayed at least one chunk and not finished."""
    last_chunk_at: float = 0.0
    step_at: float = -math.inf
    """When the first chunk of the latest timed step arrived."""
    interval_s: float = -1.0
    """Negative until a step has been timed."""
    streamed: int = 0
    """Streamed requests in flight (with or without a chunk yet)."""
    heard_at: float = 0.0
    """The latest chunk, or the dispatch that made ``streamed`` non-zero."""


@dataclass(slots=True)
class _Entry:
    endpoint: str
    prefill_tokens: int
    steps: _Steps
    sequences: int
    stream: bool = False
    last_chunk_at: float | None = None
    """This stream's latest chunk."""


class InflightTracker:
    __slots__ = ("_by_request", "_leaving", "_loads", "_remote", "_steps")

    def __init__(self) -> None:
        self._by_request: dict[str, _Entry] = {}
        self._loads: dict[str, InflightLoad] = {}
        self._remote: dict[str, InflightLoad] = {}
        """Per endpoint, the other gateway replicas' in-flight load (their latest reports)."""
        self._steps: dict[str, _Steps] = {}
        self._leaving: set[str] = set()
        """Endpoints removed from the pool with requests still in flight: forgotten at the
        last one's end."""

    def forget(self, endpoint: str) -> None:
        """Drop what is kept about an endpoint that left the pool (its load and step clock), now
        or, while requests to it are still in flight, when the last of them ends. Without it a
        pool whose pods come and go (a new IP per Kubernetes pod) would keep a record of every
        pod it ever had."""
        self._remote.pop(endpoint, None)
        if self.local(endpoint).requests:
            self._leaving.add(endpoint)
            return
        self._loads.pop(endpoint, None)
        self._steps.pop(endpoint, None)

    def load(self, endpoint: str) -> InflightLoad:
        """The endpoint's in-flight load from every gateway replica (this one's alone when
        there are no others)."""
        own = self._loads.get(endpoint, NO_INFLIGHT)
        if not self._remote:
            return own
        other = self._remote.get(endpoint)
        if other is None:
            return own
        return InflightLoad(
            own.requests + other.requests, own.prefill_tokens + other.prefill_tokens
        )

    def local(self, endpoint: str) -> InflightLoad:
        """This gateway's own requests in flight on the endpoint."""
        return self._loads.get(endpoint, NO_INFLIGHT)

    def local_loads(self) -> dict[str, InflightLoad]:
        """This gateway's own in-flight load per endpoint (what it tells its peers)."""
        return {e: load for e, load in self._loads.items() if load.requests}

    def set_remote(self, loads: dict[str, InflightLoad]) -> None:
        """The other replicas' in-flight load per endpoint, summed (replaces the last)."""
        self._remote = loads

    def steps(self, endpoint: str) -> StepTiming | None:
        """A snapshot of the endpoint's step timing, or ``None`` while it is not observable
        (no stream relaying chunks from there, or no step timed yet)."""
        steps = self._steps.get(endpoint)
        if steps is None or not steps.streams or steps.interval_s < 0:
            return None
        return StepTiming(steps.last_chunk_at, steps.interval_s)

    def dispatched(
        self,
        request_id: str,
        endpoint: str,
        prefill_tokens: int,
        sequences: int = 1,
        *,
        stream: bool = False,
        now: float = 0.0,
    ) -> None:
        """``sequences``: how many the request counts as (``InferenceRequest.sequences``);
        ``stream``: its response is streamed (its chunks are heard), dispatched at ``now``."""
        if request_id in self._by_request:
            raise ValueError(f"request {request_id!r} is already in flight")
        if sequences < 1:
            raise ValueError(f"a request runs at least one sequence, got {sequences}")
        if self._leaving:
            self._leaving.discard(endpoint)  # back in the pool (the same address again)
        steps = self._steps.get(endpoint)
        if steps is None:
            steps = self._steps[endpoint] = _Steps()
        self._by_request[request_id] = _Entry(endpoint, prefill_tokens, steps, sequences, stream)
        if stream:
            if not steps.streamed:
                steps.heard_at = now
            steps.streamed += 1
        cur = self.local(endpoint)
        self._loads[endpoint] = InflightLoad(
            cur.requests + sequences, cur.prefill_tokens + prefill_tokens
        )

    def chunk(self, request_id: str, now: float) -> None:
        """A chunk of the request's streamed response was relayed at ``now`` (hot path)."""
        entry = self._by_request.get(request_id)
        if entry is None:
            return
        steps = entry.steps
        previous = entry.last_chunk_at
        entry.last_chunk_at = now
        steps.heard_at = now
        if previous is None:
            steps.streams += 1
        elif previous >= steps.step_at:  # the stream's chunk of a step after the latest one
            steps.step_at = now
            gap = now - previous
            interval = steps.interval_s
            steps.interval_s = gap if interval < 0 else interval + STEP_SMOOTHING * (gap - interval)
        steps.last_chunk_at = now

    def first_token(self, request_id: str) -> None:
        entry = self._by_request.get(request_id)
        if entry is None or entry.prefill_tokens == 0:
            return
        cur = self.local(entry.endpoint)
        self._loads[entry.endpoint] = InflightLoad(
            cur.requests, cur.prefill_tokens - entry.prefill_tokens
        )
        entry.prefill_tokens = 0

    def finished(self, request_id: str) -> None:
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return
        if entry.last_chunk_at is not None:
            entry.steps.streams -= 1
        if entry.stream:
            entry.steps.streamed -= 1
        cur = self.local(entry.endpoint)
        self._loads[entry.endpoint] = InflightLoad(
            cur.requests - entry.sequences, cur.prefill_tokens - entry.prefill_tokens
        )
        if cur.requests == entry.sequences and self._leaving and entry.endpoint in self._leaving:
            self._leaving.discard(entry.endpoint)
            self.forget(entry.endpoint)

    def silent_s(self, endpoint: str, now: float) -> float:
        """How long the endpoint has sent no chunk while streamed requests are in flight on it
        (0 when none is)."""
        steps = self._steps.get(endpoint)
        if steps is None or not steps.streamed:
            return 0.0
        return max(0.0, now - steps.heard_at)

    def __len__(self) -> int:
        return len(self._by_request)
