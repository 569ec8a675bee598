"""lora-affinity-scorer: llm-d's tiers for adapter requests, nothing at all for base models."""

from __future__ import annotations

from dataclasses import replace

import pytest

from config import SchedulingConfig
from scheduler.builder import build_scheduler
from scheduler.framework.params import Params
from scheduler.framework.types import Candidate, CycleState, InferenceRequest
from scheduler.plugins import builtin_registry
from scheduler.plugins.scorers import UNKNOWN_LOAD_SCORE
from scheduler.plugins.scorers.lora_affinity import LoraAffinityScorer
from scheduler.profile import NullTimer
from scheduler.scheduler import Scheduler
from tests.support.builders import make_candidate, make_handle, make_metrics, make_request


def lora(
    name: str,
    running: tuple[str, ...] | None = (),
    waiting: tuple[str, ...] | None = (),
    max_lora: int | None = 2,
) -> Candidate:
    candidate = make_candidate(name)
    candidate.metrics = replace(
        make_metrics(),
        lora_running=None if running is None else frozenset(running),
        lora_waiting=None if waiting is None else frozenset(waiting),
        max_lora=max_lora,
    )
    return candidate


def adapter_request(model: str = "sql") -> InferenceRequest:
    return replace(make_request(model=model), base_model="base")


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (lora("a", running=("sql",)), 1.0),
        (lora("a", running=("sql", "x"), waiting=("y",), max_lora=2), 1.0),
        (lora("a", running=("x",), max_lora=2), 0.8),
        (lora("a", running=("x",), waiting=("x",), max_lora=2), 0.8),  # counted once
        (lora("a", running=("x", "y"), waiting=("sql",), max_lora=2), 0.6),
        (lora("a", running=("x",), waiting=("sql",), max_lora=3), 0.8),  # room beats waiting
        (lora("a", running=("x", "y"), max_lora=2), 0.0),
        (lora("a", running=None, waiting=None, max_lora=None), 0.8),  # no LoRA state yet
        (lora("a", running=("x", "y"), max_lora=None), 0.8),  # no limit reported
        (make_candidate("a", metrics=False), UNKNOWN_LOAD_SCORE),
    ],
    ids=[
        "running",
        "running-among-others",
        "room",
        "room-same-adapter-twice",
        "waiting-no-room",
        "waiting-with-room",
        "full",
        "no-state",
        "no-max",
        "unknown-metrics",
    ],
)
def test_adapter_tiers(candidate: Candidate, expected: float) -> None:
    scorer = LoraAffinityScorer.create("lora", Params(), make_handle())
    assert list(scorer.score(CycleState(), adapter_request(), [candidate])) == [expected]


def test_a_base_model_request_scores_every_candidate_zero() -> None:
    scorer = LoraAffinityScorer("lora")
    candidates = [lora("a", running=("sql",)), lora("b", running=("x", "y")), lora("c")]
    assert list(scorer.score(CycleState(), make_request(model="sql"), candidates)) == [0, 0, 0]


def build(preset: str, seed: int = 3) -> Scheduler:
    return build_scheduler(
        SchedulingConfig(preset=preset),
        registry=builtin_registry(),
        handle=make_handle(seed),
        timer=NullTimer(),
    )


def lora_pool() -> list[Candidate]:
    return [
        lora("a", running=("x", "y")),
        lora("b", running=("sql",)),
        lora("c", running=("x", "y")),
    ]


def test_load_prefix_sends_an_adapter_where_it_runs() -> None:
    scheduler = build("load-prefix")
    for i in range(20):
        result = scheduler.schedule(replace(adapter_request(), request_id=f"r{i}"), lora_pool())
        assert result.target.name == "b"


@pytest.mark.parametrize("preset", ["predicted-latency", "predicted-latency-slo"])
def test_predicted_latency_presets_lean_towards_where_the_adapter_runs(preset: str) -> None:
    scheduler = build(preset)
    picks = {"a": 0, "b": 0, "c": 0}
    for i in range(300):
        result = scheduler.schedule(replace(adapter_request(), request_id=f"r{i}"), lora_pool())
        picks[result.target.name] += 1
    # Identical pods: latency scores 1 each, plus 0.5 x (1.0, 0, 0): odds 1.5 : 1 : 1.
    assert picks["b"] > max(picks["a"], picks["c"])
    assert picks["b"] > 1.25 * (picks["a"] + picks["c"]) / 2


@pytest.mark.parametrize("preset", ["load-prefix", "predicted-latency", "predicted-latency-slo"])
def test_base_model_requests_score_as_if_the_scorer_were_not_there(preset: str) -> None:
    scheduler = build(preset)
    scorer = next(s for s, _ in scheduler.profile.scorers if s.TYPE == "lora-affinity-scorer")
    result = scheduler.schedule(make_request(request_id="base"), lora_pool())
    assert len(set(result.primary.scores.values())) == 1  # identical pods, identical totals
    assert set(scorer.score(CycleState(), make_request(), lora_pool())) == {0.0}
