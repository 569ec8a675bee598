"""``prefix-cache-affinity-filter``: keep only cache-warm endpoints, unless that costs too much.

Multi-turn traffic makes prefix-match scores bimodal: a conversation's history is either cached
on an endpoint or not. When some endpoints match at least ``affinityThreshold`` of the prompt,
the filter keeps only those ("sticky") — unless the best sticky endpoint's TTFT is worse than
the best other endpoint's by more than ``maxTTFTPenaltyMs`` (affinity is not worth queueing
behind a hot spot), or, with probability ``explorationProbability``, to let other endpoints be
tried. llm-d's algorithm; llm-d's guide pins the TTFT source to the latency predictor.

slogate adds ``maxTTFTPenaltyRatio``: affinity also breaks when the best sticky TTFT is more
than that many times the best other one. An absolute penalty of seconds suits one GPU type; on
a heterogeneous pool a warm but slow endpoint can be several times slower than a cold fast one
while staying milliseconds apart, and would otherwise keep its conversations forever.

It also yields to load before any TTFT is compared, on the gateway's own in-flight counts (exact
and instant, where predictions may lag a burst of arrivals decided in one go): when the least
loaded sticky endpoint carries more than ``maxImbalanceRequests`` requests and more than
``maxImbalanceRatio`` x (least + 1) of the least loaded other one, affinity is not worth it
(the imbalance guard of ``prefix-cache-scorer`` and of the cache-aware routers).

TTFT per endpoint comes from ``ttftSource``: ``latencyPredictor`` (the ``PREDICTION``
attribute; an endpoint without one counts as infinitely slow) or ``prefillThroughput``
(in-flight prefill tokens / ``peakPrefillThroughput`` tokens per second).

Inputs: ``PREFIX_MATCH``, ``PREDICTION`` or in-flight load.

Parameters:

========================== ================== ============================================
``affinityThreshold``      0.80               prefix-match fraction that makes an endpoint sticky
``explorationProbability`` 0.0                chance to skip the filter for a request
``maxTTFTPenaltyMs``       5000               largest TTFT cost accepted for affinity; 0 = any
``maxTTFTPenaltyRatio``    0                  largest TTFT ratio accepted for affinity; 0 = any
``ttftSource``             latencyPredictor   ``latencyPredictor`` or ``prefillThroughput``
``peakPrefillThroughput``  15928              tokens/s, for ``prefillThroughput``
``maxImbalanceRequests``   4                  in-flight surplus of the sticky endpoints over
                                              the others above which affinity yields; 0 = never
``maxImbalanceRatio``      1.5                ... and in-flight ratio (to least + 1)
========================== ================== ============================================

Extension point: filter.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.attributes import PREDICTION, PREFIX_MATCH
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest
from scheduler.plugins.imbalance import out_of_proportion

SOURCES = ("latencyPredictor", "prefillThroughput")


class PrefixCacheAffinityFilter:
    TYPE: ClassVar[str] = "prefix-cache-affinity-filter"

    def __init__(
        self,
        name: str,
        *,
        rng: random.Random,
        threshold: float = 0.8,
        exploration: float = 0.0,
        max_penalty_ms: float = 5000.0,
        max_penalty_ratio: float = 0.0,
        ttft_source: str = "latencyPredictor",
        peak_prefill_tps: float = 15928.0,
        max_imbalance_requests: int = 4,
        max_imbalance_ratio: float = 1.5,
    ) -> None:
        self.name = name
        self._rng = rng
        self.threshold = threshold
        self.exploration = exploration
        self.max_penalty_s = max_penalty_ms / 1000
        self.max_penalty_ratio = max_penalty_ratio
        self.ttft_source = ttft_source
        self.peak_prefill_tps = peak_prefill_tps
        self.max_imbalance_requests = max_imbalance_requests
        self.max_imbalance_ratio = max_imbalance_ratio

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(
            name,
            rng=handle.rng,
            threshold=params.float("affinityThreshold", 0.8, ge=0.0, le=1.0),
            exploration=params.float("explorationProbability", 0.0, ge=0.0, le=1.0),
            max_penalty_ms=params.float("maxTTFTPenaltyMs", 5000.0, ge=0.0),
            max_penalty_ratio=params.float("maxTTFTPenaltyRatio", 0.0, ge=0.0),
            ttft_source=params.str("ttftSource", "latencyPredictor", choices=SOURCES),
            peak_prefill_tps=params.float("peakPrefillThroughput", 15928.0, gt=0.0),
            max_imbalance_requests=params.int("maxImbalanceRequests", 4, ge=0),
            max_imbalance_ratio=params.float("maxImbalanceRatio", 1.5, ge=1.0),
        )

    def filter(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        if len(candidates) <= 1 or self.threshold <= 0:
            return candidates
        if self.exploration and self._rng.random() < self.exploration:
            return candidates
        sticky: list[Candidate] = []
        others: list[Candidate] = []
        for c in candidates:
            match = c.attributes.get(PREFIX_MATCH)
            (sticky if match is not None and match.fraction >= self.threshold else others).append(c)
        if not sticky or not others:
            return candidates
        if self.max_imbalance_requests > 0 and out_of_proportion(
            min(c.inflight.requests for c in sticky),
            min(c.inflight.requests for c in others),
            self.max_imbalance_requests,
            self.max_imbalance_ratio,
        ):
            return candidates
        if self.max_penalty_s > 0 or self.max_penalty_ratio > 0:
            best_sticky = min(self._ttft(c) for c in sticky)
            best_other = min(self._ttft(c) for c in others)
            # Unknown TTFTs are infinite; when both sides are unknown (inf - inf is NaN, inf > inf
            # is false) affinity holds, as it must while the predictor is not ready.
            if self.max_penalty_s > 0 and best_sticky - best_other > self.max_penalty_s:
                return candidates
            if self.max_penalty_ratio > 0 and best_sticky > self.max_penalty_ratio * best_other:
                return candidates
        return sticky

    def _ttft(self, candidate: Candidate) -> float:
        if self.ttft_source == "prefillThroughput":
            return candidate.inflight.prefill_tokens / self.peak_prefill_tps
        prediction = candidate.attributes.get(PREDICTION)
        if prediction is None or prediction.ttft_s is None:
            return math.inf
        return prediction.ttft_s
