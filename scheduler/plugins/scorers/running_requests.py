"""``running-requests-scorer``: prefer the endpoint running the fewest requests.

Score = (maxR - r) / (maxR - minR) over the candidates; all equal -> 1.0 (llm-d's
running-requests-size-scorer). It reads the model server's own count, so it sees requests from
every client, not only this gateway's; ``inflight-load-scorer`` is the fresher, gateway-only view.

Inputs: ``candidate.metrics.running`` (scraped ``vllm:num_requests_running`` /
``sglang:num_running_reqs``). Unknown metrics score ``UNKNOWN_LOAD_SCORE`` (see the package doc).

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


class RunningRequestsScorer:
    TYPE: ClassVar[str] = "running-requests-scorer"

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(name)

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        return inverse_min_max(
            [None if (m := c.metrics) is None else m.running for c in candidates]
        )
