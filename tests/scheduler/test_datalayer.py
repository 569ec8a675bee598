"""The data layer: which endpoints are candidates (health, staleness, models) and in-flight load."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from scheduler.datalayer.inflight import InflightTracker
from scheduler.datalayer.store import EndpointStore, Health, ModelCard
from scheduler.framework.types import Candidate, InflightLoad
from tests.support.builders import FakeClock, make_endpoint, make_metrics

STALE_S = 2.0


def store(*names: str, models: tuple[str, ...] = ("m",)) -> EndpointStore:
    return EndpointStore(
        [make_endpoint(n) for n in names], staleness_s=STALE_S, static_models=models
    )


def view(candidates: Sequence[Candidate]) -> list[tuple[str, bool]]:
    """(name, has metrics) per candidate."""
    return [(c.name, c.metrics is not None) for c in candidates]


# -- EndpointStore -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scrapes", "down", "expected"),
    [
        ({"a": 9.5, "b": 9.9}, (), [("a", True), ("b", True)]),
        ({"a": 9.5, "b": 5.0}, (), [("a", True)]),
        ({"a": 9.5}, (), [("a", True)]),
        ({"a": 5.0, "b": 1.0}, (), [("a", False), ("b", False)]),
        ({}, (), [("a", False), ("b", False)]),
        ({"a": 9.5, "b": 9.9}, ("a",), [("b", True)]),
        ({"a": 5.0, "b": 9.9}, ("b",), [("a", False)]),
        ({"a": 9.5, "b": 9.9}, ("a", "b"), []),
    ],
    ids=[
        "all-fresh",
        "stale-excluded-while-a-fresh-one-exists",
        "never-scraped-excluded-while-a-fresh-one-exists",
        "only-stale-become-unknown",
        "never-scraped-become-unknown",
        "down-excluded",
        "down-fresh-excluded-stale-kept",
        "all-down",
    ],
)
def test_candidates(
    scrapes: dict[str, float], down: tuple[str, ...], expected: list[tuple[str, bool]]
) -> None:
    clock = FakeClock(10.0)
    s = store("a", "b")
    for name, at in scrapes.items():
        s.set_metrics(name, make_metrics(scraped_at=at))
    for name in down:
        s.mark_down(name, clock())
    assert view(s.candidates("m", clock())) == expected


def test_a_successful_scrape_brings_a_down_endpoint_back() -> None:
    clock = FakeClock(10.0)
    s = store("a")
    s.set_metrics("a", make_metrics(scraped_at=9.0))
    s.mark_down("a", clock())
    assert s.health("a", clock()) is Health.DOWN
    assert view(s.candidates("m", clock())) == []
    clock.advance(1.0)
    s.set_metrics("a", make_metrics(scraped_at=clock()))
    assert s.health("a", clock()) is Health.UP
    assert view(s.candidates("m", clock())) == [("a", True)]


def test_reachable_without_metrics_is_unknown_not_down() -> None:
    clock = FakeClock(10.0)
    s = store("a")
    s.mark_down("a", clock())
    s.mark_reachable("a")
    assert s.health("a", clock()) is Health.UNKNOWN
    assert view(s.candidates("m", clock())) == [("a", False)]


def test_metrics_go_stale_with_time() -> None:
    clock = FakeClock(10.0)
    s = store("a")
    s.set_metrics("a", make_metrics(scraped_at=clock()))
    clock.advance(STALE_S)
    assert s.health("a", clock()) is Health.UP
    clock.advance(0.001)
    assert s.health("a", clock()) is Health.UNKNOWN
    assert view(s.candidates("m", clock())) == [("a", False)]


def test_candidates_carry_the_in_flight_load() -> None:
    clock = FakeClock(10.0)
    s = store("a", "b")
    for name in ("a", "b"):
        s.set_metrics(name, make_metrics(scraped_at=clock()))
    s.inflight.dispatched("r1", "b", prefill_tokens=300)
    loads = {c.name: c.inflight for c in s.candidates("m", clock())}
    assert loads == {"a": InflightLoad(0, 0), "b": InflightLoad(1, 300)}


def test_candidates_are_new_objects_every_cycle() -> None:
    clock = FakeClock(10.0)
    s = store("a")
    s.set_metrics("a", make_metrics(scraped_at=clock()))
    first, second = s.candidates("m", clock()), s.candidates("m", clock())
    assert first[0] is not second[0]


def test_discovered_models_decide_who_serves_what() -> None:
    clock = FakeClock(10.0)
    s = store("a", "b", "c", models=())
    for name in ("a", "b", "c"):
        s.set_metrics(name, make_metrics(scraped_at=clock()))
    s.set_models("a", ["llama"])
    s.set_models("b", ["llama", "qwen"])
    assert view(s.candidates("llama", clock())) == [("a", True), ("b", True)]
    assert view(s.candidates("qwen", clock())) == [("b", True)]
    assert view(s.candidates("mistral", clock())) == []
    assert s.models() == ["llama", "qwen"]
    assert [e.name for e in s.usable(clock())] == ["a", "b"]  # c announced no models yet


def test_lora_adapters_are_models_of_the_endpoints_that_list_them() -> None:
    clock = FakeClock(10.0)
    s = store("a", "b", "c", models=())
    for name in ("a", "b", "c"):
        s.set_metrics(name, make_metrics(scraped_at=clock()))
    s.set_models("a", [ModelCard("base")])
    s.set_models("b", [ModelCard("base"), ModelCard("sql", parent="base", root="/lora/sql")])
    s.set_models("c", ["base", ModelCard("sql", parent="base")])
    assert view(s.candidates("sql", clock())) == [("b", True), ("c", True)]
    assert view(s.candidates("base", clock())) == [("a", True), ("b", True), ("c", True)]
    assert s.adapter_parent("sql") == "base"
    assert s.adapter_parent("base") is None
    assert s.model_cards() == [
        ModelCard("base"),
        ModelCard("sql", parent="base", root="/lora/sql"),  # the first endpoint's card
    ]
    s.set_models("b", ["base"])
    s.set_models("c", ["base"])
    assert s.adapter_parent("sql") is None  # unloaded everywhere
    assert s.models() == ["base"]


def test_a_down_endpoints_models_are_not_listed() -> None:
    s = store("a", "b", models=())
    s.set_models("a", ["base", ModelCard("sql", parent="base")])
    s.set_models("b", ["base"])
    s.mark_down("a", 1.0)
    assert s.models() == ["base"]


def test_one_named_endpoint_as_a_candidate() -> None:
    clock = FakeClock(10.0)
    s = store("a", "b", "c", models=())
    s.set_metrics("a", make_metrics(scraped_at=clock(), waiting=3))
    s.set_metrics("b", make_metrics(scraped_at=1.0))  # stale
    s.mark_down("c", clock())
    s.inflight.dispatched("r1", "a", prefill_tokens=7)
    a = s.candidate("a", clock())  # serves nothing announced: still the one that holds state
    assert a is not None
    assert a.metrics is not None
    assert a.metrics.waiting == 3
    assert a.inflight == InflightLoad(1, 7)
    b = s.candidate("b", clock())
    assert b is not None
    assert b.metrics is None
    assert s.candidate("c", clock()) is None  # down
    assert s.candidate("gone", clock()) is None  # not in the pool


def test_static_models_apply_to_every_endpoint() -> None:
    s = store("a", "b", models=("m1", "m2"))
    assert s.serves("a", "m2")
    assert not s.serves("a", "other")
    assert s.models() == ["m1", "m2"]


def test_membership() -> None:
    clock = FakeClock(10.0)
    s = store("a", "b")
    with pytest.raises(ValueError, match="duplicate"):
        s.add(make_endpoint("a"))
    s.remove("a")
    s.remove("never-there")
    s.set_metrics("a", make_metrics(scraped_at=clock()))  # ignored: gone
    assert [e.name for e in s.endpoints] == ["b"]
    assert s.metrics("a") is None


# -- InflightTracker ---------------------------------------------------------------------------
def test_in_flight_requests_and_prefill_tokens() -> None:
    t = InflightTracker()
    t.dispatched("r1", "a", prefill_tokens=1000)
    t.dispatched("r2", "a", prefill_tokens=500)
    t.dispatched("r3", "b", prefill_tokens=0)
    assert (t.load("a"), t.load("b"), t.load("c")) == (
        InflightLoad(2, 1500),
        InflightLoad(1, 0),
        InflightLoad(0, 0),
    )
    assert len(t) == 3


def test_prefill_tokens_are_released_at_first_token_requests_at_the_end() -> None:
    t = InflightTracker()
    t.dispatched("r1", "a", prefill_tokens=1000)
    t.dispatched("r2", "a", prefill_tokens=500)
    t.first_token("r1")
    assert t.load("a") == InflightLoad(2, 500)
    t.first_token("r1")  # a second first token changes nothing
    assert t.load("a") == InflightLoad(2, 500)
    t.finished("r1")
    assert t.load("a") == InflightLoad(1, 500)
    t.finished("r2")  # never streamed a token: its prefill tokens go at the end
    assert t.load("a") == InflightLoad(0, 0)
    assert len(t) == 0


def test_a_request_of_several_sequences_counts_as_that_many() -> None:
    t = InflightTracker()
    t.dispatched("n4", "a", prefill_tokens=100, sequences=4)
    t.dispatched("r1", "a", prefill_tokens=10)
    assert t.load("a") == InflightLoad(5, 110)
    t.first_token("n4")
    t.finished("n4")
    assert t.load("a") == InflightLoad(1, 10)
    with pytest.raises(ValueError, match="at least one"):
        t.dispatched("r0", "a", prefill_tokens=0, sequences=0)


def test_an_endpoint_leaving_is_forgotten_after_its_last_multi_sequence_request() -> None:
    t = InflightTracker()
    t.dispatched("n3", "a", prefill_tokens=0, sequences=3)
    t.chunk("n3", 1.0)
    t.forget("a")
    assert t.load("a") == InflightLoad(3, 0)  # still in flight: kept until it ends
    t.finished("n3")
    assert "a" not in t._loads
    assert "a" not in t._steps


def test_unknown_requests_are_ignored_and_duplicates_refused() -> None:
    t = InflightTracker()
    t.first_token("nope")
    t.finished("nope")
    t.dispatched("r1", "a", prefill_tokens=10)
    with pytest.raises(ValueError, match="already in flight"):
        t.dispatched("r1", "b", prefill_tokens=10)
    t.finished("r1")
    t.finished("r1")
    assert t.load("a") == InflightLoad(0, 0)
