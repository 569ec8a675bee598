"""``max-score-picker``: the endpoint with the highest total score; ties broken at random.

llm-d's max-score picker shuffles the candidates with the RNG, then stable-sorts them by score,
descending, so equal scores come out in random order (without it, ties would always go to the
first endpoint of the pool). This does the same, with two savings: the shuffle sorts random keys
(``random.shuffle`` costs ~0.1 us per candidate in Python), and it is skipped when no two scores
are equal, since it cannot change the order then.

It returns **every** candidate, best first: ``targets[0]`` is the pick, the rest are the
proxy's fallbacks when connecting to the pick fails.

Inputs: the weighted total scores; the handle's RNG for ties.

Parameters:

| name                | default | meaning                                                    |
|---------------------|---------|------------------------------------------------------------|
| `maxNumOfEndpoints` | `1`     | llm-d's number of picks; accepted for config compatibility |

Picks and fallbacks come from one ordering, so ``maxNumOfEndpoints`` does not change the result:
the first ``maxNumOfEndpoints`` targets are llm-d's picks either way.

Extension point: picker (llm-d's default when a profile configures none).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest, ScoredCandidate
from scheduler.plugins.pickers.random_pick import random_order


class MaxScorePicker:
    TYPE: ClassVar[str] = "max-score-picker"

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
        scores = [s.score for s in scored]
        n = len(scores)
        shuffled = random_order(self._rng, n) if len(set(scores)) < n else range(n)
        # sorted() is stable also with reverse=True: equal scores keep their shuffled order.
        best_first = sorted(shuffled, key=scores.__getitem__, reverse=True)
        return [scored[i].candidate for i in best_first]
