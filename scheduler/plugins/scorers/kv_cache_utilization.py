"""``kv-cache-utilization-scorer``: prefer the endpoint with the most free KV cache.

Score = 1 - KV-cache usage (llm-d's kv-cache-utilization-scorer). A usage outside [0, 1] (a
bad scrape) is clamped, so the score stays in [0, 1].

Inputs: ``candidate.metrics.kv_usage`` (scraped ``vllm:kv_cache_usage_perc`` /
``vllm:gpu_cache_usage_perc`` / ``sglang:token_usage``, a fraction). Unknown metrics score
``UNKNOWN_LOAD_SCORE`` (see the package doc).

Parameters: none.

Extension point: scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest
from scheduler.plugins.scorers import UNKNOWN_LOAD_SCORE


class KvCacheUtilizationScorer:
    TYPE: ClassVar[str] = "kv-cache-utilization-scorer"

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(name)

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        return [
            UNKNOWN_LOAD_SCORE
            if (m := c.metrics) is None
            else (1.0 if (kv := m.kv_usage) <= 0.0 else (1.0 - kv if kv < 1.0 else 0.0))
            for c in candidates
        ]
