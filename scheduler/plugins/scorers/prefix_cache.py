"""``prefix-cache-scorer``: prefer the endpoint most likely to hold the prompt's prefix in cache.

Score = ``matchLengthWeight`` * min(1, matchedTokens / ``matchLengthScaleTokens``)^2
      + (1 - ``matchLengthWeight``) * matchedBlocks / totalBlocks      (llm-d's prefix-cache-scorer)

With the default weight 0 it is the plain match ratio. A positive weight also rewards long
absolute matches: a 6k-token hit on a 60k-token prompt is worth more than its 10% ratio says.

Inputs: the ``PREFIX_MATCH`` attribute (``scheduler.framework.attributes``) written by a prefix
producer such as ``approx-prefix-cache-producer``. A candidate without it scores 0.

Parameters:

| name                     | default | meaning                                       |
|--------------------------|---------|-----------------------------------------------|
| `matchLengthWeight`      | `0`     | share of the absolute-length term, 0..1       |
| `matchLengthScaleTokens` | `8192`  | matched tokens at which that term saturates   |

Extension point: scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.attributes import PREFIX_MATCH
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest


class PrefixCacheScorer:
    TYPE: ClassVar[str] = "prefix-cache-scorer"

    def __init__(
        self, name: str, *, match_length_weight: float = 0.0, match_length_scale_tokens: int = 8192
    ) -> None:
        if not 0.0 <= match_length_weight <= 1.0:
            raise ValueError(f"match_length_weight must be in [0, 1], got {match_length_weight}")
        if match_length_scale_tokens < 1:
            raise ValueError(
                f"match_length_scale_tokens must be >= 1, got {match_length_scale_tokens}"
            )
        self.name = name
        self.match_length_weight = match_length_weight
        self.match_length_scale_tokens = match_length_scale_tokens

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(
            name,
            match_length_weight=params.float("matchLengthWeight", 0.0, ge=0.0, le=1.0),
            match_length_scale_tokens=params.int("matchLengthScaleTokens", 8192, ge=1),
        )

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        matches = [c.attributes.get(PREFIX_MATCH) for c in candidates]
        w = self.match_length_weight
        if w == 0.0:
            return [
                pm.matched_blocks / pm.total_blocks if pm is not None and pm.total_blocks else 0.0
                for pm in matches
            ]
        scale = self.match_length_scale_tokens
        scores: list[float] = []
        for pm in matches:
            if pm is None:
                scores.append(0.0)
                continue
            length = min(1.0, pm.matched_blocks * pm.block_size / scale)
            scores.append(w * length * length + (1.0 - w) * pm.fraction)
        return scores
