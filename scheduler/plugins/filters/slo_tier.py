"""``slo-headroom-tier-filter``: keep the endpoints predicted to meet the request's objectives.

Candidates with non-negative headroom on every objective (``SLO_HEADROOM``, from
``slo-headroom-producer``; an unknown dimension does not count against it) form the positive
tier, the rest the negative tier. When both exist the positive tier is kept, except with
probability ``epsilonExploreNeg`` (0.01), when the negative tier is, so that an endpoint that
was predicted slow keeps being sampled and can show it has recovered. Without headroom on any
candidate (no objective, nothing to judge by) every candidate passes. llm-d's algorithm.

Extension point: filter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.attributes import SLO_HEADROOM
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest


class SloHeadroomTierFilter:
    TYPE: ClassVar[str] = "slo-headroom-tier-filter"

    def __init__(self, name: str, *, rng: random.Random, explore: float = 0.01) -> None:
        self.name = name
        self._rng = rng
        self.explore = explore

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        explore = params.float("epsilonExploreNeg", 0.01, ge=0.0, le=1.0)
        return cls(name, rng=handle.rng, explore=explore)

    def filter(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        if len(candidates) <= 1:
            return candidates
        positive: list[Candidate] = []
        negative: list[Candidate] = []
        judged = False
        for c in candidates:
            headroom = c.attributes.get(SLO_HEADROOM)
            if headroom is None or not headroom.known:
                negative.append(c)
                continue
            judged = True
            (positive if headroom.valid else negative).append(c)
        if not judged or not positive or not negative:
            return candidates
        if self.explore and self._rng.random() < self.explore:
            return negative
        return positive
