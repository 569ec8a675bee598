"""``latency-scorer``: prefer the endpoint predicted to serve this request fastest.

For a request with latency objectives, when ``slo-headroom-producer`` has judged the
candidates (``SLO_HEADROOM``), it scores headroom as llm-d does: candidates predicted to meet
every objective score by ``headroomSelectionStrategy`` — ``least`` (default) prefers the one
closest to its objectives (bin-packing: slack is kept for the requests that need it), ``most``
the one with the most slack (spreading) — over the TTFT and TPOT headroom normalized across
them and blended by ``ttftWeight``/``tpotWeight`` (an unconstrained or unjudged dimension drops
out), or ``latency``, slogate's, the fastest predicted among them, scored as a request without
objectives is; the others score 0. When none is predicted to meet them: idle candidates (nothing in
flight from this gateway) only; else the smallest deficit, first among those missing only
TPOT, then only TTFT, then both, each ranked on the dimensions it misses.

Otherwise (no objectives) every candidate's cost is its predicted latency for *this* request:
for a streamed request a blend of TTFT and TPOT, each normalized over the candidates to [0, 1]
(weights ``ttftWeight``/``tpotWeight``, llm-d's 0.8/0.2; a dimension with no spread drops
out); for a non-streamed request the predicted end-to-end latency. Scores follow llm-d:
``int((1 - cost) * 100 + 1) / 100``, so the fastest scores 1.01 (clamped to 1 by the
framework) and the slowest 0.01.

Before a model is trusted, the predictor's cold-start estimates (``Prediction.estimated``: TTFT
only, from in-flight work and each pod's observed speed) are scored the same way. When no
candidate has any prediction (the predictor failed outright), it scores with llm-d's composite
fallback instead: ``kv_free·wkv + relative_queue·wq + prefix·wp`` with
weights normalized to sum 1 (``compositeKVWeight``, ``compositeQueueWeight``,
``compositePrefixWeight``, default 1 each). Candidates with unknown metrics count as half-loaded.

Inputs: ``PREDICTION`` (from ``predicted-latency-producer``), metrics, ``PREFIX_MATCH``.

Parameters:

======================== ======= =================================================
``ttftWeight``           0.8     weight of normalized TTFT for streamed requests
``tpotWeight``           0.2     weight of normalized TPOT for streamed requests
``compositeKVWeight``    1.0     fallback weight of free KV cache
``compositeQueueWeight`` 1.0     fallback weight of relative queue length
``compositePrefixWeight`` 1.0    fallback weight of the prefix-cache match
``normalization``        minmax  ``minmax`` (llm-d) or ``relative`` (below)
``temperature``          0.25    for ``relative``: the relative slowness that costs a
                                 candidate ``1/e`` of its weight
``headroomSelectionStrategy`` least  ``least`` (bin-pack), ``most`` (spread) or
                                 ``latency`` (fastest), for requests with objectives
======================== ======= =================================================

``normalization: relative`` scores ``exp(-cost / temperature)`` with ``cost`` how much slower
than the fastest candidate each one is predicted (``latency / fastest - 1``, TTFT and TPOT
blended by the same weights). Min-max normalization stretches whatever spread there is to
[0, 1]: with a weighted-random picker the best of four candidates is picked about half the time
whether the others are 5 % or 5x slower. Relative scoring keeps near-equal candidates
near-equal (the work is spread, no herd) and gives a candidate predicted twice as slow almost
nothing.

Extension point: scorer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar, Self

from scheduler.framework.attributes import (
    PREDICTION,
    PREFIX_MATCH,
    SLO_HEADROOM,
    Headroom,
    Prediction,
)
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest

_RANGE_EPSILON = 1e-12
_MAX_RELATIVE = 1e6
"""Relative cost of a candidate without a prediction: it scores 0."""
NORMALIZATIONS = ("minmax", "relative")
STRATEGIES = ("least", "most", "latency")


class LatencyScorer:
    TYPE: ClassVar[str] = "latency-scorer"

    def __init__(
        self,
        name: str,
        *,
        ttft_weight: float = 0.8,
        tpot_weight: float = 0.2,
        kv_weight: float = 1.0,
        queue_weight: float = 1.0,
        prefix_weight: float = 1.0,
        normalization: str = "minmax",
        temperature: float = 0.25,
        strategy: str = "least",
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.name = name
        self.strategy = strategy
        self.normalization = normalization
        self.temperature = temperature
        total = ttft_weight + tpot_weight
        self.ttft_weight, self.tpot_weight = (
            (ttft_weight / total, tpot_weight / total) if total > 0 else (1.0, 0.0)
        )
        composite = kv_weight + queue_weight + prefix_weight
        self.kv_weight, self.queue_weight, self.prefix_weight = (
            (kv_weight / composite, queue_weight / composite, prefix_weight / composite)
            if composite > 0
            else (1 / 3, 1 / 3, 1 / 3)
        )

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(
            name,
            ttft_weight=params.float("ttftWeight", 0.8, ge=0.0),
            tpot_weight=params.float("tpotWeight", 0.2, ge=0.0),
            kv_weight=params.float("compositeKVWeight", 1.0, ge=0.0),
            queue_weight=params.float("compositeQueueWeight", 1.0, ge=0.0),
            prefix_weight=params.float("compositePrefixWeight", 1.0, ge=0.0),
            normalization=params.str("normalization", "minmax", choices=NORMALIZATIONS),
            temperature=params.float("temperature", 0.25, gt=0.0),
            strategy=params.str("headroomSelectionStrategy", "least", choices=STRATEGIES),
        )

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        if request.slo.any:
            headrooms = [c.attributes.get(SLO_HEADROOM) for c in candidates]
            if any(h is not None and h.known for h in headrooms):
                return self.headroom(request, candidates, headrooms)
        return self.latency(request, candidates)

    def latency(self, request: InferenceRequest, candidates: Sequence[Candidate]) -> list[float]:
        """Scores by predicted latency for this request (no objectives to judge by)."""
        predictions = [c.attributes.get(PREDICTION) for c in candidates]
        if all(p is None for p in predictions):
            return self.composite(candidates)
        n = len(predictions)
        if self.normalization == "relative":
            # exp(-cost / temperature), the cost being how much slower than the fastest
            # candidate each one is predicted (latency / fastest - 1): a softmax over relative
            # latency. 10 % slower than the best keeps two thirds of the weight at temperature
            # 0.25, twice as slow 2 %; candidates predicted alike share the work at random.
            relative = self._costs(request, predictions, _relative)
            if relative is None:
                return [1.0] * n
            scale = -1.0 / self.temperature
            return [math.exp(c * scale) if c < _MAX_RELATIVE else 0.0 for c in relative]
        costs = self._costs(request, predictions, _normalized) or [0.5] * n
        # llm-d's int((1 - cost) * 100) + 1, guarded against 49.999... flooring to 49.
        return [(math.floor((1.0 - c) * 100 + 1e-9) + 1) / 100 for c in costs]

    def _costs(
        self,
        request: InferenceRequest,
        predictions: Sequence[Prediction | None],
        normalize: Callable[[Sequence[float | None]], list[float] | None],
    ) -> list[float] | None:
        """Cost per candidate, each latency dimension normalized by ``normalize`` (which
        gives a candidate without a prediction the highest cost): TTFT and TPOT blended by
        their weights for a streamed request (a dimension that cannot separate the candidates
        gives its weight to the other), end to end otherwise. ``None`` when nothing separates
        the candidates."""
        if not request.stream:
            return normalize([_e2e(p, request) for p in predictions])
        ttft = normalize([None if p is None else p.ttft_s for p in predictions])
        tpot = normalize([None if p is None else p.tpot_s for p in predictions])
        if ttft is None:
            return tpot
        if tpot is None:
            return ttft
        a, b = self.ttft_weight, self.tpot_weight
        return [a * t + b * u for t, u in zip(ttft, tpot, strict=True)]

    def headroom(
        self,
        request: InferenceRequest,
        candidates: Sequence[Candidate],
        headrooms: Sequence[Headroom | None],
    ) -> list[float]:
        """llm-d's headroom scoring (module docstring); ``headrooms`` per candidate."""
        n = len(candidates)
        positive = [i for i, h in enumerate(headrooms) if h is None or h.valid]
        if positive and self.strategy == "latency":
            inside = [candidates[i] for i in positive]
            scores = [0.0] * n
            for i, s in zip(positive, self.latency(request, inside), strict=True):
                scores[i] = s
            return scores
        if positive:
            return self._bucket(headrooms, positive, n, self.strategy)
        idle = [i for i, c in enumerate(candidates) if not c.inflight.requests]
        if idle:
            return self._bucket(headrooms, idle, n, "least")
        buckets: tuple[list[int], list[int], list[int]] = ([], [], [])
        for i, h in enumerate(headrooms):
            assert h is not None  # every unjudged candidate is positive
            ttft_miss = h.ttft_s is not None and h.ttft_s < 0
            tpot_miss = h.tpot_s is not None and h.tpot_s < 0
            buckets[0 if not ttft_miss else 1 if not tpot_miss else 2].append(i)
        # Only the missed dimensions rank a deficit bucket (llm-d also lets the met one
        # count, so that among pods missing TTFT the one *closest* to its TPOT bound wins).
        for bucket, dims in zip(buckets, ((1,), (0,), (0, 1)), strict=True):
            if bucket:
                return self._bucket(headrooms, bucket, n, "least", dims)
        raise AssertionError("unreachable: every candidate is in a bucket")

    def _bucket(
        self,
        headrooms: Sequence[Headroom | None],
        members: list[int],
        n: int,
        strategy: str,
        dims: tuple[int, ...] = (0, 1),
    ) -> list[float]:
        """Scores for ``members`` (by ``strategy`` over their normalized absolute headroom in
        dimensions ``dims``: 0 TTFT, 1 TPOT); 0 for everyone else."""
        ttft = _spread([_finite(headrooms[i], 0) for i in members]) if 0 in dims else None
        tpot = _spread([_finite(headrooms[i], 1) for i in members]) if 1 in dims else None
        a, b = self.ttft_weight, self.tpot_weight
        if ttft is None:
            a, b = 0.0, 1.0
        if tpot is None:
            a, b = (1.0, 0.0) if ttft is not None else (0.0, 0.0)
        out = [0.0] * n
        for k, i in enumerate(members):
            combined = a * (ttft[k] if ttft else 0.5) + b * (tpot[k] if tpot else 0.5)
            if a == 0.0 and b == 0.0:
                combined = 0.5
            weight = (1.0 - combined) if strategy == "least" else combined
            out[i] = (math.floor(weight * 100 + 1e-9) + 1) / 100
        return out

    def composite(self, candidates: Sequence[Candidate]) -> list[float]:
        max_q = max((c.metrics.waiting for c in candidates if c.metrics is not None), default=0)
        scores = []
        for c in candidates:
            m = c.metrics
            if m is None:
                kv_free, rel_queue = 0.5, 0.5
            else:
                kv_free = 1.0 - m.kv_usage
                rel_queue = (max_q - m.waiting) / max_q if max_q > 0 else 1.0
            match = c.attributes.get(PREFIX_MATCH)
            prefix = match.fraction if match is not None else 0.0
            composite = (
                self.kv_weight * kv_free
                + self.queue_weight * rel_queue
                + self.prefix_weight * prefix
            )
            scores.append(round(composite * 100) / 100)
        return scores


def _finite(headroom: Headroom | None, dimension: int) -> float | None:
    """``|headroom|`` of one dimension when it is judged and constrained, else ``None``."""
    if headroom is None:
        return None
    value = headroom[dimension]
    if value is None or math.isinf(value):
        return None
    return abs(value)


def _spread(values: Sequence[float | None]) -> list[float] | None:
    """Min-max normalized values (unknown ones at 0.5); ``None`` when fewer than two are
    known or all known are equal: the dimension cannot separate the candidates."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return None
    low, high = min(known), max(known)
    span = high - low
    if span <= _RANGE_EPSILON:
        return None
    return [0.5 if v is None else (v - low) / span for v in values]


def _e2e(prediction: Prediction | None, request: InferenceRequest) -> float | None:
    """Predicted end-to-end latency; from TTFT + TPOT x max_tokens when no e2e model exists."""
    if prediction is None:
        return None
    if prediction.e2e_s is not None:
        return prediction.e2e_s
    if prediction.ttft_s is None:
        return None
    tokens = request.max_tokens or 16
    return prediction.ttft_s + (prediction.tpot_s or 0.0) * max(tokens - 1, 0)


def _relative(values: Sequence[float | None]) -> list[float] | None:
    """``v / min - 1`` per value (missing: ``_MAX_RELATIVE``); ``None`` when nothing is
    known or every value is equal (this dimension cannot separate candidates, and the other
    one gets its weight, as with min-max)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    low, high = min(known), max(known)
    if high - low <= _RANGE_EPSILON and len(known) == len(values):
        return None
    low = max(low, _RANGE_EPSILON)
    return [_MAX_RELATIVE if v is None else v / low - 1.0 for v in values]


def _normalized(values: Sequence[float | None]) -> list[float] | None:
    """Min-max normalize to [0, 1]; missing values cost 1; ``None`` when nothing is known or
    every known value is equal (this dimension cannot separate candidates)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    low, high = min(known), max(known)
    span = high - low
    if span <= _RANGE_EPSILON:
        return (
            None if len(known) == len(values) else [0.0 if v is not None else 1.0 for v in values]
        )
    return [1.0 if v is None else (v - low) / span for v in values]
