"""The pool as the scheduler sees it: endpoints, their latest metrics, health and models.

Writers are the gateway's background tasks (metrics scraper, model discovery) and its proxy
(passive health); the reader is the per-request candidate assembly. All methods take ``now``
(monotonic seconds) so staleness is decided by the caller's clock.

Endpoint states:
- ``up``: the last scrape succeeded and is younger than the staleness bound;
- ``unknown``: never scraped, or the last success is stale (metrics not trusted);
- ``down``: the last scrape or a dispatch could not connect (or timed out).
Candidates are the ``up`` endpoints serving the model; only when none is up, the ``unknown``
ones (with ``metrics=None``, so scorers treat their load as unknown). ``down`` endpoints are
never candidates until a scrape succeeds again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scheduler.datalayer.inflight import InflightTracker
from scheduler.framework.types import Candidate, Endpoint, EndpointMetrics


class Health(enum.Enum):
    UP = "up"
    UNKNOWN = "unknown"
    DOWN = "down"


@dataclass(slots=True)
class _State:
    endpoint: Endpoint
    metrics: EndpointMetrics | None = None
    down_since: float | None = None
    models: frozenset[str] | None = None


class EndpointStore:
    __slots__ = ("_order", "_states", "inflight", "staleness_s", "static_models")

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        staleness_s: float,
        static_models: Iterable[str] = (),
    ) -> None:
        self._states: dict[str, _State] = {}
        self._order: list[str] = []
        for endpoint in endpoints:
            self.add(endpoint)
        self.staleness_s = staleness_s
        self.static_models = frozenset(static_models)
        """When set, every endpoint is assumed to serve these models (no discovery)."""
        self.inflight = InflightTracker()

    # -- membership -------------------------------------------------------------------------
    def add(self, endpoint: Endpoint) -> None:
        if endpoint.name in self._states:
            raise ValueError(f"duplicate endpoint name {endpoint.name!r}")
        self._states[endpoint.name] = _State(endpoint)
        self._order.append(endpoint.name)

    def remove(self, name: str) -> None:
        self._states.pop(name, None)
        if name in self._order:
            self._order.remove(name)
        self.inflight.forget(name)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [self._states[n].endpoint for n in self._order]

    # -- writers ----------------------------------------------------------------------------
    def set_metrics(self, name: str, metrics: EndpointMetrics) -> None:
        state = self._states.get(name)
        if state is not None:
            state.metrics = metrics
            state.down_since = None

    def mark_reachable(self, name: str) -> None:
        """The endpoint answers, but gave no usable metrics: not down, load unknown."""
        state = self._states.get(name)
        if state is not None:
            state.down_since = None

    def mark_down(self, name: str, now: float) -> None:
        state = self._states.get(name)
        if state is not None and state.down_since is None:
            state.down_since = now

    def set_models(self, name: str, models: Iterable[str]) -> None:
        state = self._states.get(name)
        if state is not None:
            state.models = frozenset(models)

    # -- readers ----------------------------------------------------------------------------
    def health(self, name: str, now: float) -> Health:
        state = self._states[name]
        if state.down_since is not None:
            return Health.DOWN
        if state.metrics is not None and now - state.metrics.scraped_at <= self.staleness_s:
            return Health.UP
        return Health.UNKNOWN

    def metrics(self, name: str) -> EndpointMetrics | None:
        state = self._states.get(name)
        return None if state is None else state.metrics

    def serves(self, name: str, model: str) -> bool:
        if self.static_models:
            return model in self.static_models
        models = self._states[name].models
        return models is not None and model in models

    def models(self) -> list[str]:
        """Every model some endpoint serves, sorted."""
        if self.static_models:
            return sorted(self.static_models)
        found: set[str] = set()
        for state in self._states.values():
            if state.models is not None and state.down_since is None:
                found |= state.models
        return sorted(found)

    def usable(self, now: float) -> list[Endpoint]:
        """Endpoints that are not down and (with discovery) have announced their models."""
        return [
            self._states[n].endpoint
            for n in self._order
            if self.health(n, now) is not Health.DOWN
            and (self.static_models or self._states[n].models is not None)
        ]

    def candidates(self, model: str, now: float) -> Sequence[Candidate]:
        fresh: list[Candidate] = []
        unknown: list[Candidate] = []
        inflight = self.inflight
        for name in self._order:
            state = self._states[name]
            if not self.serves(name, model):
                continue
            health = self.health(name, now)
            if health is Health.UP:
                into, metrics = fresh, state.metrics
            elif health is Health.UNKNOWN:
                into, metrics = unknown, None
            else:
                continue
            into.append(
                Candidate(state.endpoint, metrics, inflight.load(name), inflight.steps(name))
            )
        return fresh or unknown
