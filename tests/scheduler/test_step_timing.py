"""Step timing: each endpoint's engine-step clock, observed from the chunks the gateway relays.

A model server sends every running stream one chunk per engine step; the tracker keeps, per
endpoint, when the last chunk arrived and a smoothed step duration (gaps between consecutive
chunks of one stream, one sample per step).
"""

from __future__ import annotations

import pytest

from scheduler.datalayer.inflight import STEP_SMOOTHING, InflightTracker
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.types import StepTiming
from tests.support.builders import FakeClock, make_endpoint, make_metrics


def relay(t: InflightTracker, chunks: list[tuple[float, str]]) -> None:
    for at, request_id in chunks:
        t.chunk(request_id, at)


def observed(steps: StepTiming | None) -> tuple[float, float] | None:
    return None if steps is None else (steps.last_chunk_at, steps.interval_s)


def tracker(*requests: tuple[str, str]) -> InflightTracker:
    """``(request id, endpoint)`` pairs, dispatched in order."""
    t = InflightTracker()
    for request_id, endpoint in requests:
        t.dispatched(request_id, endpoint, prefill_tokens=100)
    return t


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([], None),
        ([(10.0, "r1")], None),  # one chunk: no step timed yet
        ([(10.0, "r1"), (10.02, "r1")], StepTiming(10.02, 0.02)),
        # Two streams served by the same steps: each step counts once.
        (
            [(10.0, "r1"), (10.001, "r2"), (10.02, "r1"), (10.021, "r2")],
            StepTiming(10.021, 0.02),
        ),
        # A stream's first chunk (its first token) marks a step end but times nothing.
        ([(10.0, "r1"), (10.02, "r2"), (10.04, "r1")], StepTiming(10.04, 0.04)),
        # Steps are smoothed: 0.02, then 0.06 -> 0.02 + w * 0.04.
        (
            [(10.0, "r1"), (10.02, "r1"), (10.08, "r1")],
            StepTiming(10.08, 0.02 + STEP_SMOOTHING * 0.04),
        ),
    ],
    ids=["no-chunk", "one-chunk", "one-step", "two-streams", "first-chunk", "smoothed"],
)
def test_steps_from_relayed_chunks(
    chunks: list[tuple[float, str]], expected: StepTiming | None
) -> None:
    t = tracker(("r1", "a"), ("r2", "a"))
    relay(t, chunks)
    steps = t.steps("a")
    if expected is None:
        assert steps is None
    else:
        assert steps is not None
        assert steps.last_chunk_at == pytest.approx(expected.last_chunk_at)
        assert steps.interval_s == pytest.approx(expected.interval_s)


def test_endpoints_are_timed_apart() -> None:
    t = tracker(("r1", "a"), ("r2", "b"))
    relay(t, [(10.0, "r1"), (10.0, "r2"), (10.01, "r1"), (10.05, "r2")])
    assert observed(t.steps("a")) == pytest.approx((10.01, 0.01))
    assert observed(t.steps("b")) == pytest.approx((10.05, 0.05))
    assert t.steps("never-dispatched-to") is None


def test_not_observable_while_no_stream_relays_chunks() -> None:
    t = tracker(("r1", "a"))
    relay(t, [(10.0, "r1"), (10.02, "r1")])
    t.finished("r1")
    assert t.steps("a") is None  # idle: the last chunk says nothing about a step in progress
    t.dispatched("r2", "a", prefill_tokens=100)
    assert t.steps("a") is None  # in prefill: no chunk yet
    relay(t, [(11.0, "r2")])
    # Observable again; the step duration learned before is kept until a new step is timed.
    assert observed(t.steps("a")) == pytest.approx((11.0, 0.02))
    relay(t, [(11.03, "r2")])
    assert observed(t.steps("a")) == pytest.approx((11.03, 0.02 + STEP_SMOOTHING * 0.01))


def test_streams_without_chunks_do_not_count() -> None:
    t = tracker(("r1", "a"), ("r2", "a"))
    relay(t, [(10.0, "r1"), (10.02, "r1")])
    t.finished("r2")  # ended before any chunk (an error, a non-streamed response)
    assert t.steps("a") is not None
    t.finished("r1")
    assert t.steps("a") is None


def test_chunks_of_unknown_or_finished_requests_are_ignored() -> None:
    t = tracker(("r1", "a"))
    relay(t, [(10.0, "r1"), (10.02, "r1")])
    t.finished("r1")
    relay(t, [(10.5, "r1"), (10.6, "nope")])
    t.dispatched("r2", "a", prefill_tokens=100)
    relay(t, [(11.0, "r2")])
    assert observed(t.steps("a")) == pytest.approx((11.0, 0.02))


def test_candidates_carry_a_snapshot_of_the_step_timing() -> None:
    clock = FakeClock(10.0)
    store = EndpointStore(
        [make_endpoint("a"), make_endpoint("b")], staleness_s=2.0, static_models=("m",)
    )
    for name in ("a", "b"):
        store.set_metrics(name, make_metrics(scraped_at=clock()))
    store.inflight.dispatched("r1", "a", prefill_tokens=100)
    relay(store.inflight, [(10.0, "r1"), (10.02, "r1")])
    candidates = {c.name: c for c in store.candidates("m", clock())}
    assert observed(candidates["a"].steps) == pytest.approx((10.02, 0.02))
    assert candidates["b"].steps is None
    relay(store.inflight, [(10.04, "r1")])
    assert observed(candidates["a"].steps) == pytest.approx((10.02, 0.02))  # a snapshot
    store.set_metrics("a", make_metrics(scraped_at=0.0))  # stale: unknown load, still timed
    store.set_metrics("b", make_metrics(scraped_at=0.0))
    unknown = store.candidates("m", clock())
    assert [(c.name, c.metrics, observed(c.steps)) for c in unknown] == [
        ("a", None, pytest.approx((10.04, 0.02))),
        ("b", None, None),
    ]


# -- endpoints that leave the pool ---------------------------------------------------------------
def test_an_endpoint_that_leaves_is_forgotten_once_idle() -> None:
    t = tracker(("r1", "a"), ("r2", "b"))
    relay(t, [(10.0, "r1"), (10.02, "r1"), (10.0, "r2"), (10.03, "r2")])
    t.finished("r2")
    t.forget("b")  # idle: dropped now
    assert "b" not in t._loads
    assert "b" not in t._steps
    t.forget("a")  # r1 still streams from it: kept until r1 ends
    assert observed(t.steps("a")) == pytest.approx((10.02, 0.02))
    assert t.load("a").requests == 1
    t.finished("r1")
    assert "a" not in t._loads
    assert "a" not in t._steps
    assert t.load("a").requests == 0


def test_an_endpoint_back_in_the_pool_is_not_forgotten() -> None:
    t = tracker(("r1", "a"))
    t.forget("a")
    t.dispatched("r2", "a", prefill_tokens=100)  # the same address came back
    t.finished("r1")
    assert t.load("a").requests == 1
    relay(t, [(10.0, "r2"), (10.02, "r2")])
    assert observed(t.steps("a")) == pytest.approx((10.02, 0.02))


def test_the_store_forgets_removed_endpoints() -> None:
    store = EndpointStore([make_endpoint("a")], staleness_s=2.0, static_models=("m",))
    store.inflight.dispatched("r1", "a", prefill_tokens=10)
    store.inflight.finished("r1")
    store.remove("a")
    assert "a" not in store.inflight._loads


# -- silence: streams in flight, no chunk ------------------------------------------------------
def test_silence_counts_from_the_first_stream_dispatched_then_from_each_chunk() -> None:
    t = InflightTracker()
    assert t.silent_s("a", 5.0) == 0.0
    t.dispatched("r1", "a", prefill_tokens=10, stream=True, now=1.0)
    t.dispatched("r2", "a", prefill_tokens=10, stream=True, now=2.0)  # not a sign of life
    assert t.silent_s("a", 4.0) == 3.0
    t.chunk("r1", 4.5)
    assert t.silent_s("a", 5.0) == 0.5
    t.finished("r1")
    assert t.silent_s("a", 6.0) == 1.5  # r2 still silent
    t.finished("r2")
    assert t.silent_s("a", 9.0) == 0.0  # nothing in flight: nothing to hear from


def test_unstreamed_requests_are_never_silence() -> None:
    t = InflightTracker()
    t.dispatched("r1", "a", prefill_tokens=10, now=1.0)  # its answer comes whole, at the end
    assert t.silent_s("a", 100.0) == 0.0


def test_a_silent_endpoint_is_passed_over_while_others_serve() -> None:
    store = EndpointStore(
        [make_endpoint("a"), make_endpoint("b")],
        staleness_s=2.0,
        static_models=("m",),
        silent_after_s=2.0,
    )
    for name in ("a", "b"):
        store.set_metrics(name, make_metrics())
    store.inflight.dispatched("r1", "a", prefill_tokens=10, stream=True, now=0.0)
    store.inflight.dispatched("r2", "b", prefill_tokens=10, stream=True, now=0.0)
    store.inflight.chunk("r2", 1.5)

    assert [c.name for c in store.candidates("m", 1.9)] == ["a", "b"]
    assert [c.name for c in store.candidates("m", 2.0)] == ["b"]  # a: 2 s without a chunk
    assert store.stalled("a", 2.0)
    store.inflight.chunk("r2", 3.0)
    assert [c.name for c in store.candidates("m", 3.6)] == ["b"]
    store.inflight.chunk("r1", 3.7)  # a speaks again
    assert [c.name for c in store.candidates("m", 3.8)] == ["a", "b"]
    # Alone in its pool, a silent endpoint is still a candidate.
    store.inflight.chunk("r2", 10.0)
    assert [c.name for c in store.candidates("m", 6.0)] == ["b"]
    store.remove("b")
    assert [c.name for c in store.candidates("m", 6.0)] == ["a"]
