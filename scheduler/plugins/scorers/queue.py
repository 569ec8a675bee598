"""``queue-scorer``: prefer the endpoint with the shortest waiting queue.

Score = (maxQ - q) / (maxQ - minQ) over the candidates, so the shortest queue scores 1.0 and the
longest 0.0; when every queue is equal, every candidate scores 1.0 (llm-d's queue-scorer).

Inputs: ``candidate.metrics.waiting`` (scraped ``vllm:num_requests_waiting`` /
``sglang:num_queue_reqs``). Unknown metrics score ``UNKNOWN_LOAD_SCORE`` (see the package doc).

Parameters: none.

Extension point: scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest
from scheduler.plugins.scorers import inverse_min_max


class QueueScorer:
    TYPE: ClassVar[str] = "queue-scorer"

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(name)

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        return inverse_min_max(
            [None if (m := c.metrics) is None else m.waiting for c in candidates]
        )
