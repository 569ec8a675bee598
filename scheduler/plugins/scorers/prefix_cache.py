"""``prefix-cache-scorer``: prefer the endpoint most likely to hold the prompt's prefix in cache.

Score = ``matchLengthWeight`` * min(1, matchedTokens / ``matchLengthScaleTokens``)^2
      + (1 - ``matchLengthWeight``) * matchedBlocks / totalBlocks      (llm-d's prefix-cache-scorer)

With the default weight 0 it is the plain match ratio. A positive weight also rewards long
absolute matches: a 6k-token hit on a 60k-token prompt is worth more than its 10% ratio says.

Affinity yields to load (the cache-aware routers' imbalance guard, on the gateway's own in-flight
counts, which are exact and instant): a candidate whose in-flight requests exceed the least
loaded candidate's by more than ``maxImbalanceRequests`` *and* by a factor of more than
``maxImbalanceRatio`` scores 0, whatever it holds in cache. Without it, traffic sharing one hot
prefix (a system prompt, a long document) all scores highest on the one pod that cached it, and
piles up there while the others idle; with it, that pod takes at most a bounded surplus, the
rest goes where load says, and the prefix gets cached there too.

Inputs: the ``PREFIX_MATCH`` attribute (``scheduler.framework.attributes``) written by a prefix
producer such as ``approx-prefix-cache-producer``; ``candidate.inflight``. A candidate without a
match scores 0.

Parameters:

| name                     | default | meaning                                       |
|--------------------------|---------|-----------------------------------------------|
| `matchLengthWeight`      | `0`     | share of the absolute-length term, 0..1       |
| `matchLengthScaleTokens` | `8192`  | matched tokens at which that term saturates   |
| `maxImbalanceRequests`   | `4`     | in-flight surplus over the least loaded above |
|                          |         | which affinity yields; 0 = it never yields     |
| `maxImbalanceRatio`      | `1.5`   | ... and in-flight ratio to the least loaded    |
|                          |         | (+1) above which it yields                     |

Extension point: scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.attributes import PREFIX_MATCH, PrefixMatch
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest
from scheduler.plugins.imbalance import out_of_proportion


class PrefixCacheScorer:
    TYPE: ClassVar[str] = "prefix-cache-scorer"

    def __init__(
        self,
        name: str,
        *,
        match_length_weight: float = 0.0,
        match_length_scale_tokens: int = 8192,
        max_imbalance_requests: int = 4,
        max_imbalance_ratio: float = 1.5,
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
        self.max_imbalance_requests = max_imbalance_requests
        self.max_imbalance_ratio = max_imbalance_ratio

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(
            name,
            match_length_weight=params.float("matchLengthWeight", 0.0, ge=0.0, le=1.0),
            match_length_scale_tokens=params.int("matchLengthScaleTokens", 8192, ge=1),
            max_imbalance_requests=params.int("maxImbalanceRequests", 4, ge=0),
            max_imbalance_ratio=params.float("maxImbalanceRatio", 1.5, ge=1.0),
        )

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        matches = [c.attributes.get(PREFIX_MATCH) for c in candidates]
        if self.max_imbalance_requests > 0 and len(candidates) > 1:
            matches = self._yield_to_load(matches, candidates)
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

    def _yield_to_load(
        self, matches: list[PrefixMatch | None], candidates: Sequence[Candidate]
    ) -> list[PrefixMatch | None]:
        """``matches`` without those of candidates loaded out of proportion."""
        loads = [c.inflight.requests for c in candidates]
        least = min(loads)
        surplus, ratio = self.max_imbalance_requests, self.max_imbalance_ratio
        return [
            None if out_of_proportion(load, least, surplus, ratio) else match
            for match, load in zip(matches, loads, strict=True)
        ]
