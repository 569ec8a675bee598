"""The data the scheduler decides on: endpoints, their metrics, requests, candidates, results.

Everything here is plain data. Endpoint metrics and in-flight load are immutable snapshots taken
once per scheduling cycle, so every plugin in a cycle sees the same world. Per-candidate facts
computed during the cycle (prefix match, predicted latency) are attached as typed attributes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One model-server replica. ``name`` is unique in the pool and used in metrics and headers."""

    name: str
    url: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointMetrics:
    """A scraped snapshot of one model server's load (vLLM or SGLang names mapped to these)."""

    waiting: int
    running: int
    kv_usage: float
    """Fraction of KV-cache blocks in use, 0..1."""
    scraped_at: float
    """Monotonic time of the scrape, seconds."""
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    prefix_cache_queries: float | None = None
    """Cumulative prompt tokens looked up in the prefix cache (counter)."""
    prefix_cache_hits: float | None = None
    """Cumulative prompt tokens found in the prefix cache (counter)."""
    lora_running: frozenset[str] | None = None
    """LoRA adapters with a running request (vLLM's ``vllm:lora_requests_info``, its newest
    series); ``None`` when the server reports no LoRA state."""
    lora_waiting: frozenset[str] | None = None
    """LoRA adapters with a waiting request; ``None`` when not reported."""
    max_lora: int | None = None
    """How many adapters may share a batch (``max_lora``); ``None`` when not reported."""


@dataclass(frozen=True, slots=True)
class InflightLoad:
    """What the gateway itself has dispatched to an endpoint and not yet seen finish.

    Fresher than scraped metrics: it changes the instant a request is dispatched.
    ``requests`` counts sequences: a request the model server runs as several (``n`` > 1, a
    batch of prompts, several embedding inputs) counts as that many.
    ``prefill_tokens`` counts uncached prompt tokens of requests that have not produced their
    first token yet (still in prefill on the model server).
    """

    requests: int = 0
    prefill_tokens: int = 0


NO_INFLIGHT = InflightLoad()


@dataclass(slots=True)
class StepTiming:
    """An endpoint's engine-step clock, as the gateway sees it in the streams it relays.

    A model server sends every running stream one chunk per engine step, so the arrival times of
    relayed chunks mark the endpoint's step boundaries. A snapshot taken once per scheduling
    cycle, like :class:`InflightLoad`; not frozen because one is built per candidate on every
    request (a frozen dataclass costs 2.6x as much to construct).
    """

    last_chunk_at: float
    """Monotonic time of the last chunk relayed from the endpoint: about when its last step
    ended."""
    interval_s: float
    """Smoothed duration of the endpoint's recent steps (gaps between consecutive chunks of one
    stream, one sample per step)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """Per-request latency objectives in milliseconds; ``None`` means unconstrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    @property
    def any(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None


NO_SLO = Slo()


class Api(enum.Enum):
    """The kind of inference request, one per family of OpenAI / vLLM routes."""

    COMPLETIONS = "completions"
    CHAT = "chat"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    POOLING = "pooling"
    CLASSIFY = "classify"
    SCORE = "score"
    RERANK = "rerank"

    @property
    def generates(self) -> bool:
        """Whether the request generates tokens (has a first token, TTFT and TPOT); the others
        are pooling requests: prompt work only, one answer at the end."""
        return self in _GENERATIVE


_GENERATIVE = frozenset({Api.COMPLETIONS, Api.CHAT, Api.RESPONSES})


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceRequest:
    """What the scheduler knows about one client request, parsed once by the gateway."""

    request_id: str
    model: str
    api: Api
    prompt_tokens: Sequence[int]
    """Token ids of the rendered prompt (approximate for chat: see gateway.tokenizer)."""
    stream: bool
    max_tokens: int | None = None
    slo: Slo = NO_SLO
    priority: int = 0
    """Negative priority marks the request as sheddable."""
    objective: str = "standard"
    """The inference objective the priority (and default SLOs) came from, for metrics."""
    explain: bool = False
    """Record why each candidate was kept or removed (``FILTER_TRACE`` in the cycle state)."""
    received_at: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    n: int = 1
    """Sequences generated per prompt (OpenAI's ``n``)."""
    batch_size: int = 1
    """Prompts in the request (a batched ``prompt``, several embedding inputs, rerank
    documents); ``prompt_tokens`` holds all of them, one after the other."""
    base_model: str | None = None
    """The base model when ``model`` names a LoRA adapter some endpoint lists; else ``None``."""

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_tokens)

    @property
    def sequences(self) -> int:
        """Sequences the model server runs for this request: ``n`` per prompt."""
        return self.n * self.batch_size


class AttrKey(Generic[T]):
    """A typed key for per-candidate attributes and per-cycle state (like aiohttp's AppKey)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"AttrKey({self.name!r})"


class Attributes:
    """A small typed bag: values are stored and read back under ``AttrKey[T]``."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        # Typed through the keys; no runtime ``cast`` calls: plugins call these per candidate.
        self._values: dict[AttrKey[Any], Any] = {}

    def get(self, key: AttrKey[T]) -> T | None:
        value: T | None = self._values.get(key)
        return value

    def put(self, key: AttrKey[T], value: T) -> None:
        self._values[key] = value

    def __contains__(self, key: AttrKey[T]) -> bool:
        return key in self._values


class Candidate:
    """An endpoint as seen by one scheduling cycle.

    ``metrics`` is ``None`` when the endpoint's scraped metrics are missing or stale: scorers
    treat it as unknown load. ``steps`` is ``None`` when no stream this gateway relays from the
    endpoint has produced a chunk yet (idle, or every request there still in prefill), or no
    step has been timed yet.
    """

    __slots__ = ("attributes", "endpoint", "inflight", "metrics", "steps")

    def __init__(
        self,
        endpoint: Endpoint,
        metrics: EndpointMetrics | None,
        inflight: InflightLoad = NO_INFLIGHT,
        steps: StepTiming | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.metrics = metrics
        self.inflight = inflight
        self.steps = steps
        self.attributes = Attributes()

    @property
    def name(self) -> str:
        return self.endpoint.name

    def __repr__(self) -> str:
        return f"Candidate({self.endpoint.name!r})"


class CycleState(Attributes):
    """Per-request scratch state shared by the plugins of one scheduling cycle."""

    __slots__ = ()


@dataclass(slots=True)
class ScoredCandidate:
    # Not frozen: one is built per candidate on every request, and a frozen dataclass's
    # __init__ (object.__setattr__ per field) costs 2.7x as much (0.23 vs 0.085 us).
    candidate: Candidate
    score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileResult:
    """A profile's choice: ``targets[0]`` is the endpoint to use, the rest are fallbacks."""

    profile: str
    targets: Sequence[Candidate]
    scores: Mapping[str, float] = field(default_factory=dict)
    """Final weighted score per endpoint name, for logs and debugging."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulingResult:
    primary: ProfileResult
    candidates: Sequence[Candidate]
    """Every candidate of the cycle with the attributes producers attached."""
    state: CycleState

    @property
    def target(self) -> Candidate:
        return self.primary.targets[0]
