"""Passive outlier detection: an endpoint that keeps failing requests is ejected for a while.

Envoy's conventions. Every attempt on an endpoint ends as a failure (connection refused or
reset, a 5xx other than 503, a timeout, a broken stream: ``gateway.faults`` decides), a sign of
life (any other answer, including a client's 4xx), or neither (429 and 503: busy, not dead; a
client that went away). ``consecutive_failures`` failures in a row eject the endpoint: the
store leaves it out of routing (unless every candidate is ejected) for ``base_ejection_ms``
times its number of recent ejections, at most ``max_ejection_ms``; each ``base_ejection_ms``
it then stays in the pool forgives one ejection, so the backoff grows for a flapping endpoint
and expires for one that recovered. Never more than ``max_ejection_percent`` of the pool is
ejected at once: an endpoint due for ejection past that stays in, and is ejected at its next
failure if there is room then.

An ejected endpoint is checked every ``health_check_interval_ms`` (``gateway.backends.
health_check`` runs the checks): it returns early when a metrics scrape succeeded since its
ejection or it answers ``GET /health`` with 200. Ejections count in
``slogate_endpoint_ejections_total{endpoint}`` and show in ``slogate_endpoint_ejected``; each
is logged at WARNING (``endpoint.ejected``), each return at INFO (``endpoint.returned``).

Pure state: no I/O, time from the injected clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from config import UpstreamConfig
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore

logger = logging.getLogger(__name__)

EXPIRED = "expired"
HEALTH_CHECK = "health_check"
SCRAPE = "scrape"
"""Why an ejected endpoint returned: its ejection ran out, it answered ``GET /health``, or a
metrics scrape succeeded since its ejection."""


@dataclass(slots=True)
class _Record:
    consecutive: int = 0
    """Failures in a row since the last sign of life (or ejection)."""
    ejections: int = 0
    """Envoy's ejection multiplier: recent ejections, forgiven one per base period in the pool."""
    ejected_at: float | None = None
    """When the current ejection began; ``None`` while in the pool."""
    until: float = 0.0
    next_check_at: float = 0.0
    returned_at: float | None = None


@dataclass(frozen=True, slots=True)
class Ejected:
    """An ejected endpoint due for a health check."""

    name: str
    ejected_at: float


class OutlierDetector:
    def __init__(
        self,
        store: EndpointStore,
        cfg: UpstreamConfig,
        *,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._threshold = cfg.consecutive_failures
        self._base_s = cfg.base_ejection_ms / 1000
        self._max_s = cfg.max_ejection_ms / 1000
        self._max_share = cfg.max_ejection_percent / 100
        self.check_interval_s = cfg.health_check_interval_ms / 1000
        self._metrics = metrics
        self._clock = clock
        self._records: dict[str, _Record] = {}

    # -- what attempts tell -------------------------------------------------------------------
    def succeeded(self, name: str) -> None:
        """The endpoint answered: it works, whatever it said."""
        record = self._records.get(name)
        if record is not None:
            record.consecutive = 0

    def failed(self, name: str, reason: str) -> None:
        if not self._threshold:
            return
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = _Record()
        if record.ejected_at is not None:
            if self._clock() < record.until:
                # Failures while ejected (requests already in flight, or routed anyway because
                # every candidate was ejected) do not extend the ejection.
                return
            self._return(name, record, EXPIRED, at=record.until)
        record.consecutive += 1
        if record.consecutive >= self._threshold:
            self._eject(name, record, reason)

    def _eject(self, name: str, record: _Record, reason: str) -> None:
        now = self._clock()
        if not self._room_to_eject(now):
            return
        if record.returned_at is not None:
            forgiven = math.floor((now - record.returned_at) / self._base_s)
            record.ejections = max(0, record.ejections - forgiven)
        record.ejections += 1
        duration_s = min(self._max_s, self._base_s * record.ejections)
        failures, record.consecutive = record.consecutive, 0
        record.ejected_at = now
        record.until = now + duration_s
        record.next_check_at = now + self.check_interval_s
        record.returned_at = None
        self._store.eject(name, record.until)
        self._metrics.ejections.labels(name).inc()
        logger.warning(
            "endpoint.ejected",
            extra={
                "endpoint": name,
                "consecutive_failures": failures,
                "last_failure": reason,
                "ejection_s": round(duration_s, 3),
                "ejections": record.ejections,
            },
        )

    def _room_to_eject(self, now: float) -> bool:
        endpoints = self._store.endpoints
        ejected = sum(1 for e in endpoints if self._store.ejected(e.name, now))
        return ejected + 1 <= math.floor(self._max_share * len(endpoints) + 1e-9)

    # -- returns ------------------------------------------------------------------------------
    def due_for_check(self) -> list[Ejected]:
        """Ejected endpoints whose check is due; those whose ejection ran out return here."""
        now = self._clock()
        due: list[Ejected] = []
        for name, record in list(self._records.items()):
            if record.ejected_at is None:
                continue
            if now >= record.until or not self._store.ejected(name, now):
                self._return(name, record, EXPIRED, at=min(now, record.until))
            elif now >= record.next_check_at:
                due.append(Ejected(name, record.ejected_at))
        return due

    def checked(self, name: str, healthy_because: str | None) -> None:
        """The result of a due check: ``None`` when it failed (checked again an interval
        later), else why the endpoint is healthy (``health_check``, ``scrape``)."""
        record = self._records.get(name)
        if record is None or record.ejected_at is None:
            return
        if healthy_because is None:
            record.next_check_at = self._clock() + self.check_interval_s
        else:
            self._return(name, record, healthy_because, at=self._clock())

    def _return(self, name: str, record: _Record, reason: str, *, at: float) -> None:
        ejected_for = at - (record.ejected_at or at)
        record.ejected_at = None
        record.returned_at = at
        record.consecutive = 0
        self._store.readmit(name)
        logger.info(
            "endpoint.returned",
            extra={"endpoint": name, "reason": reason, "ejected_s": round(ejected_for, 3)},
        )

    def forget(self, name: str) -> None:
        """The endpoint left the pool."""
        self._records.pop(name, None)
