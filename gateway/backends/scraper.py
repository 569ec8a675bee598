"""Poll each endpoint's Prometheus ``/metrics`` and keep the store's snapshots fresh.

One task per endpoint, every ``scrape_interval_ms`` (50 ms default, as llm-d), through the
control session (which asks for and decodes gzip, as real model servers send it). Each scrape
ends in one of three states:

- ``up``: the snapshot is refreshed and a ``down`` mark cleared;
- ``down``: the connection failed or timed out; the endpoint gets no traffic until a scrape
  succeeds again;
- ``metrics_unknown``: the endpoint answered, but not with usable metrics (an error status, a
  body that does not decode or parse, a required metric missing). The old snapshot goes stale:
  the endpoint still gets traffic, routed without load information.

Every scrape that is not ``up`` counts in ``slogate_endpoint_scrape_errors_total``. Transitions
are logged once; an endpoint without usable metrics for longer than the staleness bound (and
at least a few scrapes) gets one WARNING ``endpoint.metrics_missing`` per episode, with the
error. Anything else that goes wrong in a pass (a bug, an exception nobody foresaw) is logged
with its traceback, counted in ``slogate_background_task_errors_total{task="scrape"}`` too, and
the task carries on after a capped, jittered backoff: it never dies.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from config import PoolConfig
from gateway.backends.backoff import Backoff
from gateway.backends.exposition import ExpositionError, decode_exposition, parse_exposition
from gateway.backends.pool_state import DOWN, METRICS_UNKNOWN, UP, ScrapeStatus
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.types import Endpoint

logger = logging.getLogger(__name__)

TASK = "scrape"
MISSING_AFTER_SCRAPES = 5
"""At least this many scrape intervals without usable metrics before the WARNING."""
UNEXPECTED_BACKOFF_CAP_S = 10.0


class EndpointScraper:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        engine: str,
        store: EndpointStore,
        session: Callable[[], aiohttp.ClientSession],
        cfg: PoolConfig,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
        rng: random.Random,
        status: ScrapeStatus | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.status = status or ScrapeStatus()
        self._engine = engine
        self._store = store
        self._session = session
        self._clock = clock
        self._metrics_path = cfg.metrics_path
        self._url = f"{endpoint.url}{cfg.metrics_path}"
        self._interval_s = cfg.scrape_interval_ms / 1000
        self._timeout = aiohttp.ClientTimeout(total=cfg.scrape_timeout_ms / 1000)
        self._missing_after_s = max(
            MISSING_AFTER_SCRAPES * self._interval_s, cfg.staleness_ms / 1000
        )
        self._backoff = Backoff(base_s=self._interval_s, cap_s=UNEXPECTED_BACKOFF_CAP_S, rng=rng)
        self._scrape_errors = metrics.scrape_errors.labels(endpoint.name)
        self._task_errors = metrics.background_task_errors.labels(TASK)
        self._logged_state: str | None = None
        self._metrics_at = clock()
        """When the last usable metrics arrived (or the task started)."""
        self._missing_warned = False

    async def run(self) -> None:
        self._metrics_at = self._clock()
        while True:
            started = self._clock()
            try:
                self._record(*await self._scrape())
            except Exception as exc:  # the task outlives whatever went wrong
                delay_s = self._unexpected(exc)
            else:
                self._backoff.reset()
                delay_s = max(0.0, self._interval_s - (self._clock() - started))
            await asyncio.sleep(delay_s)

    async def _scrape(self) -> tuple[str, str | None]:
        """One scrape and the store updated; the resulting state and why it is not ``up``."""
        name = self.endpoint.name
        try:
            async with self._session().get(self._url, timeout=self._timeout) as resp:
                status = resp.status
                body = await resp.read() if status == 200 else b""
            if status != 200:
                raise ExpositionError(f"{self._metrics_path} answered HTTP {status}")
            text = decode_exposition(body)
            self._store.set_metrics(
                name, parse_exposition(text, engine=self._engine, now=self._clock())
            )
            return UP, None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            self._store.mark_down(name, self._clock())
            return DOWN, _describe(exc)
        except (ExpositionError, aiohttp.ClientError) as exc:
            # It answered, but nothing usable: a body that does not decompress, an encoding it
            # was not asked for, a malformed response. Reachable, load unknown.
            self._store.mark_reachable(name)
            return METRICS_UNKNOWN, _describe(exc)

    def _record(self, state: str, problem: str | None) -> None:
        name = self.endpoint.name
        now = self._clock()
        self.status.state, self.status.error = state, problem
        if state != UP:
            self._scrape_errors.inc()
        if state != self._logged_state:
            log = logger.warning if state == DOWN else logger.info
            log(f"endpoint.{state}", extra={"endpoint": name, "error": problem})
            self._logged_state = state
        if state == UP:
            self._metrics_at = now
            self._missing_warned = False
        elif not self._missing_warned and now - self._metrics_at > self._missing_after_s:
            self._missing_warned = True
            logger.warning(
                "endpoint.metrics_missing",
                extra={
                    "endpoint": name,
                    "state": state,
                    "error": problem,
                    "seconds_without_metrics": round(now - self._metrics_at, 1),
                },
            )

    def _unexpected(self, exc: Exception) -> float:
        delay_s = self._backoff.next_delay_s()
        self._task_errors.inc()
        logger.warning(
            "scrape.unexpected_error",
            exc_info=exc,
            extra={
                "endpoint": self.endpoint.name,
                "task": TASK,
                "error": _describe(exc),
                "consecutive": self._backoff.failures,
                "retry_in_s": round(delay_s, 3),
            },
        )
        self._record(METRICS_UNKNOWN, f"unexpected {type(exc).__name__}: {_describe(exc)}")
        return delay_s


def _describe(exc: BaseException) -> str:
    """One line: aiohttp wraps a body it cannot decode in a multi-line "400, message: ..."
    (the 400 is its own parser's, not the server's); the message alone says what happened."""
    if isinstance(exc, aiohttp.ClientResponseError):
        text = exc.message
    elif isinstance(exc.__cause__, HttpProcessingError):
        text = exc.__cause__.message
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__
