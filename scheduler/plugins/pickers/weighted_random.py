"""``weighted-random-picker``: a random endpoint, drawn with probability proportional to score.

A-Res weighted reservoir sampling (llm-d's weighted-random picker): each candidate draws
U ~ Uniform(0, 1] and gets the key U^(1/score); candidates are returned by key, descending. The
first is a draw proportional to score, and the whole order is a weighted sampling without
replacement, so the fallbacks are drawn the same way. Keys are compared as log(U)/score (the
same order, and no underflow to 0 for small scores). Candidates scoring 0 come last, in random
order; if every score is <= 0 the order is uniformly random.

Inputs: the weighted total scores; the handle's RNG.

Parameters:

| name                | default | meaning                                                    |
|---------------------|---------|------------------------------------------------------------|
| `maxNumOfEndpoints` | `1`     | llm-d's number of picks; accepted for config compatibility |

Picks and fallbacks come from one ordering, so ``maxNumOfEndpoints`` does not change the result.

Extension point: picker.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest, ScoredCandidate
from scheduler.plugins.pickers.random_pick import random_order

_NEVER = -math.inf


class WeightedRandomPicker:
    TYPE: ClassVar[str] = "weighted-random-picker"

    def __init__(self, name: str, *, rng: random.Random, max_num_of_endpoints: int = 1) -> None:
        self.name = name
        self.max_num_of_endpoints = max_num_of_endpoints
        self._rng = rng

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(
            name,
            rng=handle.rng,
            max_num_of_endpoints=params.int("maxNumOfEndpoints", 1, ge=1),
        )

    def pick(
        self, state: CycleState, request: InferenceRequest, scored: Sequence[ScoredCandidate]
    ) -> Sequence[Candidate]:
        rnd, log = self._rng.random, math.log
        # 1 - random() lies in (0, 1]: log never sees 0.
        keys = [log(1.0 - rnd()) / s.score if s.score > 0.0 else _NEVER for s in scored]
        order = sorted(range(len(keys)), key=keys.__getitem__, reverse=True)
        never = keys.count(_NEVER)
        if never > 1:
            # sorted() kept them in pool order; shuffle them so no endpoint is favoured.
            tail = order[-never:]
            order[-never:] = [tail[i] for i in random_order(self._rng, never)]
        return [scored[i].candidate for i in order]
