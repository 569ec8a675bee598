"""When a failed attempt may be tried again on another endpoint: a budget, a backoff, a deadline.

Three bounds, after Envoy's retry policy:

- the **budget** (:class:`RetryBudget`, one per gateway): retries in flight at most
  ``retry_budget_percent`` of the requests in flight, but always
  ``retry_budget_min_concurrency`` (Envoy's ``retry_budget`` and ``min_retry_concurrency``).
  When a pod dies, its requests' retries land on the others; the budget keeps them from
  doubling the pool's load when most of it fails.
- the **backoff**: a capped, jittered exponential wait before each retry of a request
  (``retry_backoff_base_ms`` doubling up to ``retry_backoff_max_ms``), so the requests of a pod
  that failed at once do not all land on the next one in the same instant.
- the **deadline**: a request with a TTFT objective is not retried once the time it has spent
  plus the wait would pass the objective (peers' users asked for exactly this: an exponential
  backoff "may break the SLO like a 2s TTFT"). The failure is answered at once instead.

How many attempts a request gets (``upstream.retries``) and what is retried (faults before any
byte reached the client) is the caller's; this module only says yes, or why not.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from config import UpstreamConfig
from gateway.backends.backoff import Backoff

BUDGET = "budget"
SLO = "slo"
"""Why a retry was denied: the label values of ``slogate_upstream_retries_denied_total``."""


class RetryBudget:
    """Requests and retries in flight across the gateway; a retry holds its slot until its
    request ends (Envoy counts a retry as active while it is outstanding)."""

    __slots__ = ("active_requests", "active_retries", "min_concurrency", "share")

    def __init__(self, *, percent: float, min_concurrency: int) -> None:
        self.share = percent / 100
        self.min_concurrency = min_concurrency
        self.active_requests = 0
        self.active_retries = 0

    @property
    def limit(self) -> int:
        """Retries allowed in flight now (the share rounded down, as Envoy does)."""
        return max(self.min_concurrency, math.floor(self.share * self.active_requests + 1e-9))

    def request_started(self) -> None:
        self.active_requests += 1

    def request_ended(self) -> None:
        self.active_requests -= 1

    def try_acquire(self) -> bool:
        if self.active_retries < self.limit:
            self.active_retries += 1
            return True
        return False

    def release(self) -> None:
        self.active_retries -= 1


@dataclass(frozen=True, slots=True)
class RetryDecision:
    delay_s: float = 0.0
    """Wait this long, then retry (when ``retry``)."""
    denied: str | None = None
    """Why not (``budget``, ``slo``); ``None`` when the retry may go ahead."""

    @property
    def retry(self) -> bool:
        return self.denied is None


class RequestRetries:
    """One request's view of the retry policy, a context manager: the request is in flight (for
    the budget) until it exits.

    A request holds at most one budget slot however many times it retries (its attempts never
    overlap), from its first retry to its end. Its backoff exists from its first failure on:
    most requests never need one.
    """

    __slots__ = ("_backoff", "_deadline", "_holding", "_policy")

    def __init__(self, policy: RetryPolicy, *, deadline: float | None) -> None:
        self._policy = policy
        self._deadline = deadline
        self._backoff: Backoff | None = None
        self._holding = False
        policy.budget.request_started()

    def decide(self) -> RetryDecision:
        """Whether the request may try its next target, and after how long."""
        policy = self._policy
        if self._backoff is None:
            self._backoff = Backoff(base_s=policy.base_s, cap_s=policy.cap_s, rng=policy.rng)
        delay_s = self._backoff.next_delay_s()
        if self._deadline is not None and policy.clock() + delay_s > self._deadline:
            return RetryDecision(denied=SLO)
        if not self._holding:
            if not policy.budget.try_acquire():
                return RetryDecision(denied=BUDGET)
            self._holding = True
        return RetryDecision(delay_s=delay_s)

    def close(self) -> None:
        budget = self._policy.budget
        if self._holding:
            self._holding = False
            budget.release()
        budget.request_ended()

    def __enter__(self) -> RequestRetries:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RetryPolicy:
    """The gateway's retry settings and budget; hands each request its :class:`RequestRetries`."""

    def __init__(self, cfg: UpstreamConfig, *, clock: Callable[[], float], rng: random.Random):
        self.budget = RetryBudget(
            percent=cfg.retry_budget_percent, min_concurrency=cfg.retry_budget_min_concurrency
        )
        self.max_retries = cfg.retries
        self.base_s = cfg.retry_backoff_base_ms / 1000
        self.cap_s = cfg.retry_backoff_max_ms / 1000
        self.clock = clock
        self.rng = rng

    def begin(self, *, received_at: float, ttft_ms: float | None = None) -> RequestRetries:
        """Retries of a request received at ``received_at`` (with its TTFT objective, if any)."""
        deadline = None if ttft_ms is None else received_at + ttft_ms / 1000
        return RequestRetries(self, deadline=deadline)
