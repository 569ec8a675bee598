"""Every preset loads, builds with the built-in plugins and schedules a request."""

from __future__ import annotations

from importlib import resources

import pytest

from config import DEFAULT_PRESET, SchedulingConfig, load_preset, preset_names
from scheduler.builder import build_scheduler
from scheduler.framework.types import Candidate
from scheduler.plugins import builtin_registry
from scheduler.profile import NullTimer
from scheduler.scheduler import Scheduler
from tests.support.builders import make_candidate, make_handle, make_request


def build(name: str, seed: int = 0) -> Scheduler:
    return build_scheduler(
        SchedulingConfig(preset=name),
        registry=builtin_registry(),
        handle=make_handle(seed),
        timer=NullTimer(),
    )


def test_the_expected_presets_exist() -> None:
    assert {"round-robin", "least-request", "load-prefix"} <= set(preset_names())
    assert DEFAULT_PRESET in preset_names()


@pytest.mark.parametrize("name", preset_names())
def test_preset_builds_and_schedules(name: str) -> None:
    cfg = load_preset(name)
    assert cfg.plugins
    scheduler = build(name)
    candidates = [make_candidate("a", waiting=1), make_candidate("b"), make_candidate("c")]
    result = scheduler.schedule(make_request(list(range(300))), candidates)
    scheduler.pre_request(make_request(list(range(300))), result)
    assert sorted(c.name for c in result.primary.targets) == ["a", "b", "c"]


@pytest.mark.parametrize("name", preset_names())
def test_preset_file_starts_with_a_comment_saying_what_it_is_for(name: str) -> None:
    text = (resources.files("config") / "presets" / f"{name}.yaml").read_text()
    assert text.startswith("# ")


def test_least_request_sends_to_the_fewest_in_flight() -> None:
    scheduler = build("least-request")
    candidates = [
        make_candidate("busy", inflight_requests=5),
        make_candidate("idle", inflight_requests=0, waiting=50),
        make_candidate("mid", inflight_requests=2, metrics=False),
    ]
    result = scheduler.schedule(make_request(), candidates)
    assert [c.name for c in result.primary.targets] == ["idle", "mid", "busy"]


def test_load_prefix_wiring_matches_llm_d() -> None:
    scheduler = build("load-prefix")
    weights = {scorer.TYPE: weight for scorer, weight in scheduler.profile.scorers}
    assert weights == {
        "queue-scorer": 2.0,
        "kv-cache-utilization-scorer": 2.0,
        "prefix-cache-scorer": 3.0,
        "inflight-load-scorer": 2.0,  # slogate's addition: the gateway's exact in-flight load
        "lora-affinity-scorer": 1.0,  # llm-d's; 0 for base-model requests
    }
    assert scheduler.profile.picker.TYPE == "max-score-picker"


def pool() -> list[Candidate]:
    return [make_candidate(n, waiting=1, kv=0.3, block_size=16) for n in ("a", "b", "c", "d")]


def test_load_prefix_keeps_a_prefix_on_the_endpoint_that_has_it() -> None:
    scheduler = build("load-prefix", seed=5)
    system = list(range(5000, 5000 + 1024))
    first = scheduler.schedule(make_request([*system, 1, 2, 3]), pool())
    scheduler.pre_request(make_request([*system, 1, 2, 3]), first)
    for suffix in range(10):
        request = make_request([*system, *range(suffix, suffix + 200)])
        result = scheduler.schedule(request, pool())
        scheduler.pre_request(request, result)
        assert result.target.name == first.target.name


def test_load_prefix_leaves_a_prefix_when_its_endpoint_is_overloaded() -> None:
    scheduler = build("load-prefix", seed=5)
    system = list(range(5000, 5000 + 1024))
    first = scheduler.schedule(make_request(system), pool())
    scheduler.pre_request(make_request(system), first)
    hot = first.target.name
    loaded = [
        make_candidate(n, waiting=40, kv=0.95, block_size=16)
        if n == hot
        else make_candidate(n, waiting=0, kv=0.1, block_size=16)
        for n in ("a", "b", "c", "d")
    ]
    result = scheduler.schedule(make_request(system), loaded)
    assert result.target.name != first.target.name
