"""Loop-owned metrics expose exactly what prometheus_client's own metrics would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.loopmetrics import LoopCounter, LoopHistogram

BUCKETS = (0.01, 0.1, 1.0, 10.0)
VALUES = (0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 50.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_histogram_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("lat_seconds", "Latency.", ("model",), BUCKETS)
    ours.register(mine)
    ref = Histogram("lat_seconds", "Latency.", ("model",), buckets=BUCKETS, registry=theirs)
    for v in VALUES:
        mine.labels("a").observe(v)
        ref.labels("a").observe(v)
    mine.labels("b").observe(2.0)
    ref.labels("b").observe(2.0)
    assert exposition(ours) == exposition(theirs)


def test_unlabelled_histogram_and_counter_match() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    h = LoopHistogram("d_seconds", "D.", (), BUCKETS)
    c = LoopCounter("things", "Things.", ("kind",))
    plain = LoopCounter("events", "Events.", ())
    for collector in (h, c, plain):
        ours.register(collector)
    rh = Histogram("d_seconds", "D.", buckets=BUCKETS, registry=theirs)
    rc = Counter("things", "Things.", ("kind",), registry=theirs)
    rplain = Counter("events", "Events.", registry=theirs)
    for v in VALUES:
        h.observe(v)
        rh.observe(v)
    c.labels("x").inc()
    c.labels("x").inc(2)
    rc.labels("x").inc()
    rc.labels("x").inc(2)
    plain.inc()
    rplain.inc()
    assert exposition(ours) == exposition(theirs)


def test_label_count_is_checked() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        LoopHistogram("x", "X.", ("a", "b"), BUCKETS).labels("only-one")
    with pytest.raises(ValueError, match="takes labels"):
        LoopCounter("y", "Y.", ("a",)).labels()
