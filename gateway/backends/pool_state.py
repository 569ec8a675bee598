"""Each endpoint's state as operators see it: ``up``, ``metrics_unknown`` or ``down``.

The state comes from the endpoint store (what routing uses): ``up`` has fresh metrics,
``metrics_unknown`` is reachable but routed without load information (never scraped yet, an
error status, an undecodable or unparsable answer, stale metrics), ``down`` could not be
reached. The scraper adds why, in :class:`ScrapeStatus`; ``/ready`` and the logs show both.
An endpoint outlier detection keeps out of routing also shows ``"ejected": true``, one silent
with streams in flight (``upstream.silent_after_s``) ``"stalled": true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scheduler.datalayer.store import EndpointStore, Health

UP = "up"
METRICS_UNKNOWN = "metrics_unknown"
DOWN = "down"

_STATE = {Health.UP: UP, Health.UNKNOWN: METRICS_UNKNOWN, Health.DOWN: DOWN}


@dataclass(slots=True)
class ScrapeStatus:
    """What the last scrape of one endpoint found; written by its scraper only."""

    state: str = METRICS_UNKNOWN
    error: str | None = None
    """Why the last scrape gave no usable metrics; ``None`` after a good one."""


def endpoint_state(store: EndpointStore, name: str, now: float) -> str:
    return _STATE[store.health(name, now)]


def describe_pool(
    store: EndpointStore, statuses: Mapping[str, ScrapeStatus], now: float
) -> dict[str, dict[str, str | bool]]:
    """``{endpoint: {"state": ..., "error": ...}}``, the error only when not ``up``,
    ``"ejected": true`` while ejected, ``"stalled": true`` while silent."""
    detail: dict[str, dict[str, str | bool]] = {}
    for endpoint in store.endpoints:
        state = endpoint_state(store, endpoint.name, now)
        entry: dict[str, str | bool] = {"state": state}
        status = statuses.get(endpoint.name)
        if state != UP and status is not None and status.error:
            entry["error"] = status.error
        if store.ejected(endpoint.name, now):
            entry["ejected"] = True
        if store.stalled(endpoint.name, now):
            entry["stalled"] = True
        detail[endpoint.name] = entry
    return detail
