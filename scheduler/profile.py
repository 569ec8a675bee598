"""A scheduling profile: filters -> weighted scorers -> picker, policed by the framework.

The framework, not the plugins, enforces the rules: scores are clamped to [0, 1] and weighted,
a filter that leaves nothing ends the cycle with :class:`NoCandidatesError`, a scorer that
returns the wrong number of scores is a bug reported loudly, and every call is timed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from scheduler.framework.attributes import FILTER_TRACE
from scheduler.framework.errors import NoCandidatesError
from scheduler.framework.plugins import Clock, Filter, Picker, Plugin, Scorer
from scheduler.framework.types import (
    Candidate,
    CycleState,
    InferenceRequest,
    ProfileResult,
    ScoredCandidate,
)


class PluginTimer(Protocol):
    """Receives the duration of every plugin call (a Prometheus histogram in the gateway)."""

    def observe(self, extension_point: str, plugin: Plugin, seconds: float) -> None: ...


class NullTimer:
    def observe(self, extension_point: str, plugin: Plugin, seconds: float) -> None:
        return None


class SchedulerProfile:
    __slots__ = ("_clock", "_timer", "filters", "name", "picker", "scorers")

    def __init__(
        self,
        *,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
        clock: Clock,
        timer: PluginTimer,
    ) -> None:
        for scorer, weight in scorers:
            if not weight > 0:
                raise ValueError(f"scorer {scorer.name!r} needs a weight > 0, got {weight!r}")
        self.name = name
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        self._clock = clock
        self._timer = timer

    def run(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> ProfileResult:
        clock, timer = self._clock, self._timer
        trace = state.get(FILTER_TRACE)
        for flt in self.filters:
            started = clock()
            kept = flt.filter(state, request, candidates)
            timer.observe("filter", flt, clock() - started)
            if trace is not None:
                names = {c.endpoint.name for c in kept}
                for c in candidates:
                    if c.endpoint.name not in names:
                        trace[c.endpoint.name] = flt.name
            candidates = kept
            if not candidates:
                raise NoCandidatesError(
                    f"no endpoint left after filter {flt.name!r} ({flt.TYPE})", stage=flt.name
                )

        totals = [0.0] * len(candidates)
        for scorer, weight in self.scorers:
            started = clock()
            scores = scorer.score(state, request, candidates)
            timer.observe("scorer", scorer, clock() - started)
            if len(scores) != len(candidates):
                raise RuntimeError(
                    f"scorer {scorer.name!r} returned {len(scores)} scores "
                    f"for {len(candidates)} candidates"
                )
            # NaN compares false everywhere: it lands on 0, never on 1. (A comprehension, not an
            # indexed loop: this runs per candidate per scorer on every request.)
            totals = [
                total + weight * (s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0))
                for total, s in zip(totals, scores, strict=True)
            ]

        scored = [ScoredCandidate(c, s) for c, s in zip(candidates, totals, strict=True)]
        started = clock()
        targets = self.picker.pick(state, request, scored)
        timer.observe("picker", self.picker, clock() - started)
        if not targets:
            raise RuntimeError(f"picker {self.picker.name!r} picked nothing")
        return ProfileResult(
            profile=self.name,
            targets=targets,
            scores={c.endpoint.name: total for c, total in zip(candidates, totals, strict=True)},
        )
