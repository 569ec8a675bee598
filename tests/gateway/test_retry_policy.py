"""The retry policy and the fault table, as pure units: the budget, the backoff, the TTFT
deadline, and which failure is retried and counted against an endpoint."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamTimeoutError
from gateway.faults import Fault, exception_fault, status_fault
from gateway.retries import BUDGET, SLO, RetryBudget, RetryPolicy
from gateway.telemetry import RETRY_REASONS
from scheduler.framework.plugins import Outcome
from tests.support.builders import FakeClock


def policy(clock: FakeClock, **cfg: Any) -> RetryPolicy:
    upstream = UpstreamConfig(**cfg)
    return RetryPolicy(upstream, clock=clock, rng=random.Random(7))


@pytest.mark.parametrize(
    ("percent", "minimum", "active", "allowed"),
    [(20.0, 3, 1, 3), (20.0, 3, 100, 20), (20.0, 0, 4, 0), (50.0, 0, 5, 2), (0.0, 1, 50, 1)],
)
def test_the_budget_allows_a_share_of_active_requests_but_at_least_the_minimum(
    percent: float, minimum: int, active: int, allowed: int
) -> None:
    budget = RetryBudget(percent=percent, min_concurrency=minimum)
    for _ in range(active):
        budget.request_started()
    granted = 0
    while budget.try_acquire():
        granted += 1
    assert granted == allowed


def test_a_request_holds_one_slot_however_often_it_retries_and_frees_it_at_its_end() -> None:
    clock = FakeClock()
    retries = policy(clock, retry_budget_percent=0.0, retry_budget_min_concurrency=1)
    with retries.begin(received_at=clock()) as first:
        assert first.decide().retry
        assert first.decide().retry
        with retries.begin(received_at=clock()) as second:
            assert second.decide().denied == BUDGET
        assert retries.budget.active_requests == 1
    assert retries.budget.active_retries == 0
    assert retries.budget.active_requests == 0
    with retries.begin(received_at=clock()) as third:
        assert third.decide().retry


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    clock = FakeClock()
    retries = policy(clock, retry_backoff_base_ms=100.0, retry_backoff_max_ms=300.0)
    with retries.begin(received_at=clock()) as request:
        delays = [request.decide().delay_s for _ in range(4)]
    for delay, ceiling in zip(delays, (0.1, 0.2, 0.3, 0.3), strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_no_retry_whose_wait_would_pass_the_ttft_objective() -> None:
    clock = FakeClock()
    retries = policy(clock, retry_backoff_base_ms=100.0, retry_backoff_max_ms=100.0)
    with retries.begin(received_at=clock(), ttft_ms=500.0) as request:
        clock.advance(0.3)
        assert request.decide().retry  # 0.3 s spent + at most 0.1 s of backoff < 0.5 s
        clock.advance(0.2)
        assert request.decide().denied == SLO  # 0.5 s spent + at least 0.05 s > 0.5 s
    assert retries.budget.active_retries == 0


class _Refused(aiohttp.ClientConnectorError):
    def __init__(self) -> None:
        key = ConnectionKey("pod", 80, False, True, None, None, None)
        super().__init__(key, ConnectionRefusedError(111, "refused"))


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (_Refused(), Fault.CONNECT),
        (aiohttp.ConnectionTimeoutError("connect timeout"), Fault.CONNECT),
        (aiohttp.SocketTimeoutError("read timeout"), Fault.TIMEOUT),
        (TimeoutError(), Fault.TIMEOUT),
        (aiohttp.ServerDisconnectedError(), Fault.RESET),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), Fault.RESET),
        (aiohttp.ClientPayloadError("Response payload is not completed"), Fault.RESET),
        (aiohttp.ClientError("something else"), Fault.PROTOCOL),
        (ValueError("a bug"), None),
    ],
)
def test_exceptions_of_the_upstream_client_map_to_faults(
    exc: BaseException, fault: Fault | None
) -> None:
    assert exception_fault(exc) is fault


@pytest.mark.parametrize(
    ("status", "fault"),
    [
        (200, None),
        (400, None),
        (404, None),
        (413, None),
        (429, Fault.BUSY),
        (500, Fault.SERVER_ERROR),
        (502, Fault.SERVER_ERROR),
        (503, Fault.BUSY),
        (504, Fault.SERVER_ERROR),
    ],
)
def test_statuses_map_to_faults_and_client_errors_are_none(
    status: int, fault: Fault | None
) -> None:
    assert status_fault(status) is fault


def test_the_fault_table() -> None:
    assert [f for f in Fault if not f.retried] == [Fault.TIMEOUT]
    assert [f for f in Fault if not f.counts] == [Fault.BUSY]
    assert [f.value for f in Fault if f.retried] == list(RETRY_REASONS)
    assert Fault.CONNECT.outcome is Outcome.CONNECT_ERROR
    assert Fault.TIMEOUT.outcome is Outcome.UPSTREAM_TIMEOUT
    assert {f.outcome for f in (Fault.RESET, Fault.PROTOCOL, Fault.SERVER_ERROR, Fault.BUSY)} == {
        Outcome.UPSTREAM_ERROR
    }
    assert type(Fault.TIMEOUT.error("a", "")) is UpstreamTimeoutError
    assert all(type(f.error("a", "x")) is UpstreamError for f in Fault if f is not Fault.TIMEOUT)
