"""``round-robin-picker``: each request to the next candidate in turn, ignoring scores.

Parameters: none. Candidates arrive in pool order, so with a stable pool every endpoint gets
every N-th request (what a Kubernetes Service gives). Extension point: picker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest, ScoredCandidate


class RoundRobinPicker:
    TYPE: ClassVar[str] = "round-robin-picker"

    def __init__(self, name: str) -> None:
        self.name = name
        self._next = 0

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(name)

    def pick(
        self, state: CycleState, request: InferenceRequest, scored: Sequence[ScoredCandidate]
    ) -> Sequence[Candidate]:
        start = self._next % len(scored)
        self._next = start + 1
        ordered = [*scored[start:], *scored[:start]]
        return [s.candidate for s in ordered]
