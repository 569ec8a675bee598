"""Active health checks of ejected endpoints: bring them back before their ejection runs out.

Every ejected endpoint is checked every ``upstream.health_check_interval_ms`` from its
ejection (:class:`~gateway.backends.outliers.OutlierDetector` keeps the schedule). A metrics
scrape that succeeded since the ejection is proof enough; otherwise the endpoint is asked
``GET /health`` (vLLM and SGLang answer 200 while their engine works) through the control
session. A 200 returns it to routing; anything else leaves it ejected until the next check or
the end of its ejection. The same pass returns endpoints whose ejection ran out.

Like every background task it never dies: whatever goes wrong in a pass is logged with its
traceback, counted in ``slogate_background_task_errors_total{task="health_check"}``, and the
loop carries on after a capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import aiohttp

from gateway.backends.backoff import Backoff
from gateway.backends.outliers import HEALTH_CHECK, SCRAPE, Ejected, OutlierDetector
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore

logger = logging.getLogger(__name__)

TASK = "health_check"
HEALTH_PATH = "/health"
_MAX_TICK_S = 1.0
_UNEXPECTED_BACKOFF_CAP_S = 30.0


class HealthChecker:
    def __init__(
        self,
        outliers: OutlierDetector,
        *,
        store: EndpointStore,
        session: Callable[[], aiohttp.ClientSession],
        timeout_s: float,
        metrics: GatewayMetrics,
        rng: random.Random,
    ) -> None:
        self._outliers = outliers
        self._store = store
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._tick_s = min(_MAX_TICK_S, outliers.check_interval_s / 2)
        self._backoff = Backoff(base_s=self._tick_s, cap_s=_UNEXPECTED_BACKOFF_CAP_S, rng=rng)
        self._task_errors = metrics.background_task_errors.labels(TASK)

    async def run(self) -> None:
        while True:
            try:
                await self.check_due()
            except Exception as exc:  # the task outlives whatever went wrong
                delay_s = self._backoff.next_delay_s()
                self._task_errors.inc()
                logger.warning(
                    "health_check.unexpected_error",
                    exc_info=exc,
                    extra={
                        "task": TASK,
                        "error": str(exc) or type(exc).__name__,
                        "consecutive": self._backoff.failures,
                        "retry_in_s": round(delay_s, 3),
                    },
                )
            else:
                self._backoff.reset()
                delay_s = self._tick_s
            await asyncio.sleep(delay_s)

    async def check_due(self) -> None:
        due = self._outliers.due_for_check()
        if due:
            verdicts = await asyncio.gather(*(self._check(e) for e in due))
            for ejected, verdict in zip(due, verdicts, strict=True):
                self._outliers.checked(ejected.name, verdict)

    async def _check(self, ejected: Ejected) -> str | None:
        metrics = self._store.metrics(ejected.name)
        if metrics is not None and metrics.scraped_at > ejected.ejected_at:
            return SCRAPE
        endpoint = next((e for e in self._store.endpoints if e.name == ejected.name), None)
        if endpoint is None:
            return None
        try:
            async with self._session().get(
                f"{endpoint.url}{HEALTH_PATH}", timeout=self._timeout
            ) as resp:
                await resp.read()
                healthy = resp.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("health_check.failed", extra={"endpoint": ejected.name, "error": str(exc)})
            return None
        return HEALTH_CHECK if healthy else None
