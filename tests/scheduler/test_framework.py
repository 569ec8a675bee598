"""Framework rules: what the profile, scheduler and builder enforce so plugins can stay small."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import pytest

from config import ConfigError, SchedulingConfig, from_mapping
from scheduler.builder import build_scheduler
from scheduler.framework.errors import NoCandidatesError
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.registry import PluginRegistry
from scheduler.framework.types import (
    Candidate,
    CycleState,
    InferenceRequest,
    SchedulingResult,
    ScoredCandidate,
)
from scheduler.plugins import builtin_registry
from scheduler.plugins.pickers.max_score import MaxScorePicker
from scheduler.plugins.pickers.round_robin import RoundRobinPicker
from scheduler.plugins.producers.approx_prefix import ApproxPrefixCacheProducer
from scheduler.predictor.runtime import shared_predictor
from scheduler.profile import NullTimer, SchedulerProfile
from scheduler.scheduler import Scheduler
from tests.support.builders import (
    FakeClock,
    RecordingTimer,
    make_candidate,
    make_handle,
    make_request,
)


class FixedScorer:
    """Returns the scores it was given, whatever the candidates."""

    TYPE: ClassVar[str] = "fixed-scorer"

    def __init__(self, name: str, scores: Sequence[float]) -> None:
        self.name = name
        self.scores = list(scores)

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        return self.scores


class DropAllFilter:
    TYPE: ClassVar[str] = "drop-all-filter"

    def __init__(self, name: str) -> None:
        self.name = name

    def filter(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        return []


class ThresholdFilter:
    """A configurable test filter: keeps candidates whose KV usage is under ``threshold``."""

    TYPE: ClassVar[str] = "threshold-filter"

    def __init__(self, name: str, threshold: float) -> None:
        self.name = name
        self.threshold = threshold

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(name, params.float("threshold", 0.8, ge=0.0, le=1.0))

    def filter(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        return [c for c in candidates if c.metrics is None or c.metrics.kv_usage < self.threshold]


class RaisingProducer:
    TYPE: ClassVar[str] = "raising-producer"

    def __init__(self, name: str = "broken") -> None:
        self.name = name

    def produce(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None:
        raise RuntimeError("producer bug")

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        raise RuntimeError("pre-request bug")


def profile(
    scorers: Sequence[tuple[FixedScorer, float]] = (),
    filters: Sequence[DropAllFilter | ThresholdFilter] = (),
    timer: RecordingTimer | None = None,
) -> SchedulerProfile:
    return SchedulerProfile(
        name="default",
        filters=filters,
        scorers=scorers,
        picker=MaxScorePicker("picker", rng=random.Random(0)),
        clock=FakeClock(),
        timer=timer or RecordingTimer(),
    )


def pool(n: int) -> list[Candidate]:
    return [make_candidate(f"e{i}") for i in range(n)]


# -- profile: clamping, weights, counts, filters ----------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0.4, 0.4),
        (1.7, 1.0),
        (-0.3, 0.0),
        (math.nan, 0.0),
        (math.inf, 1.0),
        (-math.inf, 0.0),
    ],
    ids=["in-range", "above-one", "negative", "nan", "inf", "minus-inf"],
)
def test_scores_are_clamped_to_unit_interval(raw: float, expected: float) -> None:
    result = profile([(FixedScorer("s", [raw]), 1.0)]).run(CycleState(), make_request(), pool(1))
    assert result.scores == {"e0": expected}


def test_weights_multiply_and_sum() -> None:
    scorers = [(FixedScorer("a", [1.0, 0.0, 0.5]), 2.0), (FixedScorer("b", [0.0, 1.0, 0.5]), 3.0)]
    result = profile(scorers).run(CycleState(), make_request(), pool(3))
    assert result.scores == pytest.approx({"e0": 2.0, "e1": 3.0, "e2": 2.5})
    assert [c.name for c in result.targets] == ["e1", "e2", "e0"]


@pytest.mark.parametrize("count", [1, 3], ids=["too-few", "too-many"])
def test_wrong_score_count_raises(count: int) -> None:
    with pytest.raises(RuntimeError, match=r"scorer 'bad' returned \d scores for 2 candidates"):
        profile([(FixedScorer("bad", [0.5] * count), 1.0)]).run(
            CycleState(), make_request(), pool(2)
        )


def test_filter_leaving_nothing_names_the_filter() -> None:
    with pytest.raises(NoCandidatesError, match="drop-all") as info:
        profile(filters=[DropAllFilter("drop-all")]).run(CycleState(), make_request(), pool(2))
    assert info.value.stage == "drop-all"


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan], ids=["zero", "negative", "nan"])
def test_profile_refuses_a_weight_that_is_not_positive(weight: float) -> None:
    with pytest.raises(ValueError, match="needs a weight > 0"):
        profile([(FixedScorer("s", [1.0]), weight)])


def test_every_plugin_call_is_timed() -> None:
    timer = RecordingTimer()
    scorers = [(FixedScorer("s1", [0.1, 0.2]), 1.0), (FixedScorer("s2", [0.3, 0.4]), 1.0)]
    profile(scorers, [ThresholdFilter("f", 0.9)], timer).run(CycleState(), make_request(), pool(2))
    assert [(point, name) for point, name, _ in timer.calls] == [
        ("filter", "f"),
        ("scorer", "s1"),
        ("scorer", "s2"),
        ("picker", "picker"),
    ]


# -- scheduler: candidates, guarded lifecycle plugins -----------------------------------------
def scheduler_with(producer: RaisingProducer) -> Scheduler:
    return Scheduler(
        profile=profile([(FixedScorer("s", [0.2, 0.9]), 1.0)]),
        producers=[producer],
        pre_requests=[producer],
        clock=FakeClock(),
        timer=NullTimer(),
    )


def test_no_candidates_is_reported_with_the_model() -> None:
    with pytest.raises(NoCandidatesError, match="'m'") as info:
        scheduler_with(RaisingProducer()).schedule(make_request(model="m"), [])
    assert info.value.stage == "candidates"


def test_producer_that_raises_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = scheduler_with(RaisingProducer("broken"))
    with caplog.at_level(logging.ERROR, logger="scheduler.scheduler"):
        result = scheduler.schedule(make_request(), pool(2))
        scheduler.pre_request(make_request(), result)
    assert result.target.name == "e1"
    events = [r.getMessage() for r in caplog.records]
    assert events == ["plugin.producer_failed", "plugin.pre_request_failed"]
    assert all(getattr(r, "plugin", None) == "broken" for r in caplog.records)


# -- builder: configuration errors name their path --------------------------------------------
def registry() -> PluginRegistry:
    reg = builtin_registry()
    reg.register(ThresholdFilter)
    return reg


def build(scheduling: dict[str, Any]) -> Scheduler:
    cfg: SchedulingConfig = from_mapping({"scheduling": scheduling}).scheduling
    return build_scheduler(cfg, registry=registry(), handle=make_handle(), timer=NullTimer())


def plugins_and_profile(
    plugins: list[dict[str, Any]], refs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {"plugins": plugins, "profiles": [{"name": "default", "plugins": refs}]}


PICKER = {"type": "max-score-picker"}
PICKER_REF = {"plugin_ref": "max-score-picker"}


@pytest.mark.parametrize(
    ("scheduling", "path", "reason"),
    [
        (
            plugins_and_profile(
                [PICKER, {"type": "no-such-plugin"}], [PICKER_REF, {"plugin_ref": "no-such-plugin"}]
            ),
            "scheduling.plugins[1].type",
            "unknown plugin type",
        ),
        (
            plugins_and_profile(
                [PICKER, {"type": "threshold-filter", "parameters": {"threshold": 2}}],
                [{"plugin_ref": "threshold-filter"}, PICKER_REF],
            ),
            "scheduling.plugins[1].parameters.threshold",
            "must be <= 1.0",
        ),
        (
            plugins_and_profile(
                [PICKER, {"type": "threshold-filter", "parameters": {"threshold": "high"}}],
                [{"plugin_ref": "threshold-filter"}, PICKER_REF],
            ),
            "scheduling.plugins[1].parameters.threshold",
            "must be a number",
        ),
        (
            plugins_and_profile(
                [PICKER, {"type": "threshold-filter", "parameters": {"treshold": 0.5}}],
                [{"plugin_ref": "threshold-filter"}, PICKER_REF],
            ),
            "scheduling.plugins[1].parameters.treshold",
            "unknown parameter",
        ),
        (
            plugins_and_profile(
                [PICKER, {"type": "approx-prefix-cache-producer", "parameters": {"autoTune": 1}}],
                [PICKER_REF],
            ),
            "scheduling.plugins[1].parameters.autoTune",
            "must be true or false",
        ),
        (
            plugins_and_profile(
                [PICKER, {"type": "random-picker"}],
                [PICKER_REF, {"plugin_ref": "random-picker"}],
            ),
            "scheduling.profiles[0].plugins[1].plugin_ref",
            "only one is allowed",
        ),
        (
            plugins_and_profile(
                [PICKER, {"type": "queue-scorer"}], [{"plugin_ref": "queue-scorer"}, PICKER_REF]
            ),
            "scheduling.profiles[0].plugins[0].weight",
            "needs a weight",
        ),
        (
            plugins_and_profile([PICKER], [{"plugin_ref": "max-score-picker", "weight": 2}]),
            "scheduling.profiles[0].plugins[0].weight",
            "not a scorer",
        ),
        (
            plugins_and_profile(
                [PICKER, {"type": "approx-prefix-cache-producer"}],
                [{"plugin_ref": "approx-prefix-cache-producer"}, PICKER_REF],
            ),
            "scheduling.profiles[0].plugins[0].plugin_ref",
            "wired automatically",
        ),
        (
            plugins_and_profile(
                [{"type": "queue-scorer"}], [{"plugin_ref": "queue-scorer", "weight": 1}]
            ),
            "scheduling.profiles[0].plugins",
            "no picker",
        ),
    ],
    ids=[
        "unknown-type",
        "bad-parameter-value",
        "bad-parameter-type",
        "unknown-parameter",
        "bad-bool",
        "second-picker",
        "scorer-without-weight",
        "weight-on-picker",
        "lifecycle-plugin-in-profile",
        "no-picker",
    ],
)
def test_config_errors_name_the_path(scheduling: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(scheduling)
    assert info.value.path == path
    assert reason in info.value.reason


def test_lifecycle_plugins_are_wired_automatically() -> None:
    scheduler = build(
        plugins_and_profile(
            [{"type": "approx-prefix-cache-producer"}, {"type": "prefix-cache-scorer"}, PICKER],
            [{"plugin_ref": "prefix-cache-scorer", "weight": 1}, PICKER_REF],
        )
    )
    candidates = pool(2)
    result = scheduler.schedule(make_request(list(range(256))), candidates)
    scheduler.pre_request(make_request(list(range(256))), result)
    # the producer ran (every candidate got a match) and its pre-request hook recorded the pick
    again = scheduler.schedule(make_request(list(range(256))), pool(2))
    assert again.target.name == result.target.name


def test_round_robin_ignores_scores_through_the_framework() -> None:
    sched = Scheduler(
        profile=SchedulerProfile(
            name="rr",
            filters=[],
            scorers=[(FixedScorer("s", [0.0, 1.0, 0.5]), 1.0)],
            picker=RoundRobinPicker("rr"),
            clock=FakeClock(),
            timer=NullTimer(),
        ),
        clock=FakeClock(),
        timer=NullTimer(),
    )
    firsts = [sched.schedule(make_request(), pool(3)).target.name for _ in range(4)]
    assert firsts == ["e0", "e1", "e2", "e0"]


def test_scored_candidates_reach_the_picker_with_weighted_totals() -> None:
    seen: list[list[tuple[str, float]]] = []

    class SpyPicker:
        TYPE: ClassVar[str] = "spy-picker"
        name = "spy"

        def pick(
            self, state: CycleState, request: InferenceRequest, scored: Sequence[ScoredCandidate]
        ) -> Sequence[Candidate]:
            seen.append([(s.candidate.name, s.score) for s in scored])
            return [s.candidate for s in scored]

    prof = SchedulerProfile(
        name="p",
        filters=[],
        scorers=[(FixedScorer("s", [0.5, 2.0]), 4.0)],
        picker=SpyPicker(),
        clock=FakeClock(),
        timer=NullTimer(),
    )
    prof.run(CycleState(), make_request(), pool(2))
    assert seen == [[("e0", 2.0), ("e1", 4.0)]]


def test_forgetting_an_endpoint_reaches_every_plugin_that_keeps_state_per_endpoint() -> None:
    """The predicted-latency preset's prefix index and predictor corrections drop a pod that
    left the pool."""
    handle = make_handle()
    cfg = from_mapping({"scheduling": {"preset": "predicted-latency"}}).scheduling
    scheduler = build_scheduler(cfg, registry=registry(), handle=handle, timer=NullTimer())
    predictor = shared_predictor(handle.services, handle.clock, handle.rng)
    prefix = next(p for p in scheduler._lifecycles if isinstance(p, ApproxPrefixCacheProducer))
    prefix.index.add("gone", [b"1", b"2", b"3"], capacity=10)
    prefix.index.add("kept", [b"1", b"2"], capacity=10)
    predictor.units.observe("gone", -6.0)
    predictor.drift["ttft"].observe("gone", 0.5)

    scheduler.forget_endpoint("gone")

    assert prefix.index.match([b"1", b"2", b"3"]) == {"kept": 2}
    assert predictor.units.get("gone") is None
    assert predictor.drift["ttft"].get("gone") is None
