"""Plugin contracts: the extension points of a scheduling cycle and of a request's lifetime.

A cycle runs: data producers -> admitters -> profile (filters -> weighted scorers -> picker);
then pre-request hooks see the pick; response observers see the first token, chunks and the end.

Contracts the framework enforces so plugins can stay small, pure and synchronous:
- a filter returning nothing stops the cycle (the request gets a 503 naming the filter);
- a scorer returns one score per candidate, in candidate order; the framework clamps it to
  [0, 1] and multiplies by the profile's weight for that scorer;
- exactly one picker per profile; ties are broken with the injected RNG;
- every call is timed into ``plugin duration`` metrics;
- nothing here awaits or does I/O: these run on the event loop for every request.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from scheduler.framework.types import (
    Attributes,
    Candidate,
    CycleState,
    InferenceRequest,
    SchedulingResult,
    ScoredCandidate,
)

Clock = Callable[[], float]
"""Monotonic seconds."""


@dataclass(frozen=True, slots=True)
class PluginHandle:
    """What the framework lends every plugin at construction: time, randomness, and shared
    services (typed, e.g. the latency predictor) that plugins of one scheduler use together."""

    clock: Clock
    rng: random.Random
    services: Attributes = field(default_factory=Attributes)


@runtime_checkable
class Plugin(Protocol):
    TYPE: ClassVar[str]
    """Kebab-case type name used in configuration, matching llm-d where one exists."""

    @property
    def name(self) -> str: ...


@runtime_checkable
class Filter(Plugin, Protocol):
    def filter(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]: ...


@runtime_checkable
class Scorer(Plugin, Protocol):
    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        """One score per candidate, same order, higher is better, meant to lie in [0, 1]."""
        ...


@runtime_checkable
class Picker(Plugin, Protocol):
    def pick(
        self, state: CycleState, request: InferenceRequest, scored: Sequence[ScoredCandidate]
    ) -> Sequence[Candidate]:
        """The chosen candidates, best first (at least one; the rest are fallbacks)."""
        ...


@runtime_checkable
class DataProducer(Plugin, Protocol):
    """Runs before scheduling and attaches per-candidate attributes (prefix match, predictions).

    Producers run in configuration order; one that raises is logged and skipped, it never
    fails the request (consumers must cope with a missing attribute).
    """

    def produce(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None: ...


@runtime_checkable
class Admitter(Plugin, Protocol):
    def admit(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None:
        """Return to admit; raise :class:`AdmissionDenied` to reject."""
        ...


@runtime_checkable
class EndpointLifecycle(Plugin, Protocol):
    """A plugin keeping state per endpoint drops it when the endpoint leaves the pool (a
    Kubernetes pod deleted, a config reload), so a pool whose pods come and go does not keep a
    record of every pod it ever had."""

    def forget(self, endpoint: str) -> None: ...


@runtime_checkable
class PreRequest(Plugin, Protocol):
    """Bookkeeping at dispatch, after the pick (in-flight counters, prefix index, predictions)."""

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None: ...


class Outcome(enum.Enum):
    SUCCESS = "success"
    UPSTREAM_ERROR = "upstream_error"
    """The model server answered with an error status or broke the stream."""
    UPSTREAM_TIMEOUT = "upstream_timeout"
    CONNECT_ERROR = "connect_error"
    CLIENT_DISCONNECTED = "client_disconnected"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """What happened to one dispatched request, measured by the gateway (times are monotonic s).

    TTFT is measured from dispatch (after scheduling) to the first response event that carries
    generated text or a token, so it is the model server's latency the predictor learns, not the
    gateway's own. ``tpot_s`` is ``(ended_at - first_token_at) / (tokens - 1)`` when each of the
    request's ``sequences`` saw at least two tokens on average (``tokens`` =
    ``completion_tokens / sequences``: the sequences of ``n`` > 1 or of a batch decode side by
    side, so their tokens share the time).
    """

    request_id: str
    model: str
    endpoint: str
    stream: bool
    outcome: Outcome
    status: int
    prompt_tokens: int
    dispatched_at: float
    ended_at: float
    first_token_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int | None = None
    """``usage.prompt_tokens_details.cached_tokens`` when the server reported it."""
    predicted_ttft_s: float | None = None
    """What routing predicted for the endpoint that served it (``None``: no prediction)."""
    predicted_tpot_s: float | None = None
    sequences: int = 1
    """Sequences the request ran (``InferenceRequest.sequences``)."""

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.dispatched_at

    @property
    def e2e_s(self) -> float:
        return self.ended_at - self.dispatched_at

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_at is None:
            return None
        tokens = self.completion_tokens / max(self.sequences, 1)
        if tokens < 2:
            return None
        return (self.ended_at - self.first_token_at) / (tokens - 1)


class RequestObserver(Protocol):
    """Consumes each dispatched request's first token and its end (always exactly one end).

    Metrics and the predictor's trainer implement this; plugins implement :class:`ResponseObserver`.
    """

    def on_first_token(self, request: InferenceRequest, endpoint: str, now: float) -> None: ...

    def on_end(self, request: InferenceRequest, record: RequestRecord) -> None: ...


@runtime_checkable
class ResponseObserver(Plugin, RequestObserver, Protocol):
    """A plugin that observes responses (in-flight accounting, training-sample emission)."""
