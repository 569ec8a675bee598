"""Passive outlier detection as pure state: failures in a row eject, ejections grow and expire,
never more than the allowed share of the pool, and the store routes around ejected endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from random import Random
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from config import UpstreamConfig
from gateway.backends.health_check import HealthChecker
from gateway.backends.outliers import EXPIRED, HEALTH_CHECK, Ejected, OutlierDetector
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore
from tests.gateway.scrape_support import sample
from tests.support.builders import FakeClock, make_endpoint, make_metrics

BASE_S = 30.0


def pool(*names: str) -> EndpointStore:
    return EndpointStore([make_endpoint(n) for n in names], staleness_s=2.0, static_models=("m",))


def detector(
    store: EndpointStore, clock: FakeClock, **cfg: Any
) -> tuple[OutlierDetector, GatewayMetrics]:
    fields: dict[str, Any] = {
        "consecutive_failures": 3,
        "base_ejection_ms": BASE_S * 1000,
        "max_ejection_ms": 100_000.0,
        "max_ejection_percent": 50.0,
        "health_check_interval_ms": 5000.0,
    }
    upstream = UpstreamConfig(**{**fields, **cfg})
    metrics = GatewayMetrics(store, clock)
    return OutlierDetector(store, upstream, metrics=metrics, clock=clock), metrics


def fail(outliers: OutlierDetector, name: str, times: int) -> None:
    for _ in range(times):
        outliers.failed(name, "5xx")


def names(store: EndpointStore, now: float) -> list[str]:
    return [c.name for c in store.candidates("m", now)]


def test_consecutive_failures_eject_and_a_success_in_between_forgives() -> None:
    clock = FakeClock()
    store = pool("a", "b", "c", "d")
    outliers, metrics = detector(store, clock)
    fail(outliers, "a", 2)
    outliers.succeeded("a")
    fail(outliers, "a", 2)
    assert not store.ejected("a", clock())
    fail(outliers, "a", 1)
    assert store.ejected("a", clock())
    assert names(store, clock()) == ["b", "c", "d"]
    exposition = generate_latest(metrics.registry).decode()
    assert sample(exposition, "slogate_endpoint_ejections_total", endpoint="a") == 1.0
    assert sample(exposition, "slogate_endpoint_ejected", endpoint="a") == 1.0
    assert sample(exposition, "slogate_endpoint_ejected", endpoint="b") == 0.0


@pytest.mark.parametrize(
    ("pool_size", "percent", "ejectable"),
    [(4, 50.0, 2), (2, 50.0, 1), (1, 50.0, 0), (3, 50.0, 1), (3, 100.0, 3), (10, 10.0, 1)],
)
def test_never_more_than_the_allowed_share_of_the_pool(
    pool_size: int, percent: float, ejectable: int
) -> None:
    clock = FakeClock()
    endpoints = [f"p{i}" for i in range(pool_size)]
    store = pool(*endpoints)
    outliers, _ = detector(store, clock, max_ejection_percent=percent)
    for name in endpoints:
        fail(outliers, name, 3)
    assert sum(store.ejected(n, clock()) for n in endpoints) == ejectable


def test_an_endpoint_held_back_by_the_cap_is_ejected_at_its_next_failure_once_there_is_room() -> (
    None
):
    clock = FakeClock()
    store = pool("a", "b")
    outliers, _ = detector(store, clock)
    fail(outliers, "a", 3)
    fail(outliers, "b", 3)
    assert [store.ejected(n, clock()) for n in "ab"] == [True, False]
    clock.advance(BASE_S)
    assert outliers.due_for_check() == []  # a's ejection ran out: returned
    fail(outliers, "b", 1)
    assert [store.ejected(n, clock()) for n in "ab"] == [False, True]


def test_every_candidate_ejected_routes_anyway() -> None:
    clock = FakeClock()
    store = pool("a")
    outliers, _ = detector(store, clock, max_ejection_percent=100.0)
    fail(outliers, "a", 3)
    assert store.ejected("a", clock())
    assert names(store, clock()) == ["a"]


def test_ejected_endpoints_come_after_down_ones_are_dropped_and_up_before_unknown() -> None:
    clock = FakeClock()
    store = pool("a", "b", "c")
    store.set_metrics("a", make_metrics(scraped_at=clock()))
    store.eject("a", clock() + 10)
    store.mark_down("b", clock())
    # c is unknown (never scraped): preferred to an ejected endpoint, even an up one.
    assert names(store, clock()) == ["c"]
    store.mark_down("c", clock())
    assert names(store, clock()) == ["a"]
    clock.advance(10)
    assert not store.ejected("a", clock())


def test_ejections_grow_with_each_one_up_to_the_cap_and_are_forgiven_over_time() -> None:
    clock = FakeClock()
    store = pool("a", "b")
    outliers, _ = detector(store, clock, max_ejection_ms=80_000.0)

    def eject_and_measure() -> float:
        fail(outliers, "a", 3)
        start = clock()
        while store.ejected("a", clock()):
            clock.advance(1.0)
        outliers.due_for_check()  # the return is noticed
        return clock() - start

    assert eject_and_measure() == BASE_S
    assert eject_and_measure() == 2 * BASE_S
    assert eject_and_measure() == 80.0  # capped, not 3 x 30
    clock.advance(2 * BASE_S)  # two base periods in the pool forgive two ejections
    assert eject_and_measure() == 2 * BASE_S


def test_a_passing_check_returns_the_endpoint_early_a_failing_one_waits_an_interval() -> None:
    clock = FakeClock()
    store = pool("a", "b")
    outliers, _ = detector(store, clock)
    fail(outliers, "a", 3)
    assert outliers.due_for_check() == []  # the first check is an interval after ejection
    clock.advance(5.0)
    (due,) = outliers.due_for_check()
    assert due.name == "a"
    outliers.checked("a", None)
    assert outliers.due_for_check() == []
    clock.advance(5.0)
    assert [d.name for d in outliers.due_for_check()] == ["a"]
    outliers.checked("a", HEALTH_CHECK)
    assert not store.ejected("a", clock())
    assert names(store, clock()) == ["a", "b"]


def test_failures_while_ejected_do_not_extend_it_and_returns_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = pool("a", "b")
    outliers, _ = detector(store, clock)
    with caplog.at_level(logging.INFO, logger="gateway.backends.outliers"):
        fail(outliers, "a", 3)
        clock.advance(10)
        fail(outliers, "a", 10)
        clock.advance(BASE_S - 10)
        assert not store.ejected("a", clock())
        outliers.due_for_check()
    events = [(r.levelname, r.getMessage(), getattr(r, "reason", None)) for r in caplog.records]
    assert events == [
        ("WARNING", "endpoint.ejected", None),
        ("INFO", "endpoint.returned", EXPIRED),
    ]
    ejected = caplog.records[0]
    assert getattr(ejected, "endpoint", None) == "a"
    assert getattr(ejected, "ejection_s", None) == BASE_S


def test_zero_consecutive_failures_disables_ejection() -> None:
    clock = FakeClock()
    store = pool("a", "b")
    outliers, _ = detector(store, clock, consecutive_failures=0)
    fail(outliers, "a", 100)
    assert not store.ejected("a", clock())


class _FlakyDetector(OutlierDetector):
    """Raises on its first ``due_for_check``, as a bug would."""

    calls = 0

    def due_for_check(self) -> list[Ejected]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the sweep")
        return super().due_for_check()


async def test_the_health_checker_survives_an_unexpected_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = pool("a", "b")
    metrics = GatewayMetrics(store, clock)
    cfg = UpstreamConfig(health_check_interval_ms=20.0)
    outliers = _FlakyDetector(store, cfg, metrics=metrics, clock=clock)

    def no_session() -> aiohttp.ClientSession:
        raise AssertionError("nothing is ejected: nothing to ask")

    checker = HealthChecker(
        outliers, store=store, session=no_session, timeout_s=1.0, metrics=metrics, rng=Random(1)
    )
    task = asyncio.create_task(checker.run())
    try:
        for _ in range(500):
            if outliers.calls >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert outliers.calls >= 3
    exposition = generate_latest(metrics.registry).decode()
    assert sample(exposition, "slogate_background_task_errors_total", task="health_check") == 1.0
    (logged,) = [r for r in caplog.records if r.getMessage() == "health_check.unexpected_error"]
    assert logged.exc_info
