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

Orthogonal to these states, an endpoint may be *ejected* (passive outlier detection: it kept
failing requests) until a given time, or until it is readmitted earlier. Ejected endpoints are
left out of the candidates like down ones, unless no candidate would remain: routing never
fails closed on ejection alone.

Models come from each endpoint's ``/v1/models``, one :class:`ModelCard` each. A LoRA adapter an
endpoint lists (a card with a ``parent``) is a model of that endpoint like any other, so a
request naming it goes only to endpoints that have it loaded.
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


@dataclass(frozen=True, slots=True)
class ModelCard:
    """One entry of an endpoint's ``/v1/models``."""

    id: str
    parent: str | None = None
    """The base model, when ``id`` is a LoRA adapter loaded on top of it (vLLM's ``parent``)."""
    root: str | None = None
    """vLLM's ``root``: the base model's path, or the adapter's."""


@dataclass(slots=True)
class _State:
    endpoint: Endpoint
    metrics: EndpointMetrics | None = None
    down_since: float | None = None
    ejected_until: float | None = None
    models: frozenset[str] | None = None
    cards: tuple[ModelCard, ...] = ()


class EndpointStore:
    __slots__ = (
        "_adapters",
        "_order",
        "_states",
        "inflight",
        "silent_after_s",
        "staleness_s",
        "static_models",
    )

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        staleness_s: float,
        static_models: Iterable[str] = (),
        silent_after_s: float = 0.0,
    ) -> None:
        self._states: dict[str, _State] = {}
        self._order: list[str] = []
        self._adapters: dict[str, str] = {}
        """LoRA adapter -> its base model, over every endpoint's cards."""
        for endpoint in endpoints:
            self.add(endpoint)
        self.staleness_s = staleness_s
        self.static_models = frozenset(static_models)
        """When set, every endpoint is assumed to serve these models (no discovery)."""
        self.inflight = InflightTracker()
        self.silent_after_s = silent_after_s
        """An endpoint silent this long with streams in flight is passed over like an ejected
        one (:meth:`stalled`); 0: never."""

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
        self._index_adapters()

    def __contains__(self, name: object) -> bool:
        return name in self._states

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

    def eject(self, name: str, until: float) -> None:
        """Leave the endpoint out of routing until ``until`` (or :meth:`readmit`)."""
        state = self._states.get(name)
        if state is not None:
            state.ejected_until = until

    def readmit(self, name: str) -> None:
        state = self._states.get(name)
        if state is not None:
            state.ejected_until = None

    def set_models(self, name: str, models: Iterable[str | ModelCard]) -> None:
        """What the endpoint serves: model names, or cards (with a LoRA adapter's parent)."""
        state = self._states.get(name)
        if state is not None:
            cards = tuple(m if isinstance(m, ModelCard) else ModelCard(m) for m in models)
            state.cards = cards
            state.models = frozenset(c.id for c in cards)
            self._index_adapters()

    def _index_adapters(self) -> None:
        self._adapters = {
            card.id: card.parent
            for state in self._states.values()
            for card in state.cards
            if card.parent is not None
        }

    # -- readers ----------------------------------------------------------------------------
    def health(self, name: str, now: float) -> Health:
        state = self._states[name]
        if state.down_since is not None:
            return Health.DOWN
        if state.metrics is not None and now - state.metrics.scraped_at <= self.staleness_s:
            return Health.UP
        return Health.UNKNOWN

    def ejected(self, name: str, now: float) -> bool:
        state = self._states.get(name)
        until = None if state is None else state.ejected_until
        return until is not None and now < until

    def metrics(self, name: str) -> EndpointMetrics | None:
        state = self._states.get(name)
        return None if state is None else state.metrics

    def serves(self, name: str, model: str) -> bool:
        if self.static_models:
            return model in self.static_models
        state = self._states.get(name)
        return state is not None and state.models is not None and model in state.models

    def models_known(self, name: str) -> bool:
        """Whether the endpoint's models are known (declared in config, or discovered)."""
        state = self._states.get(name)
        return bool(self.static_models) or (state is not None and state.models is not None)

    def models(self) -> list[str]:
        """Every model some endpoint serves (LoRA adapters included), sorted."""
        return [card.id for card in self.model_cards()]

    def model_cards(self) -> list[ModelCard]:
        """One card per model some endpoint that is not down serves, sorted by id; an
        adapter's card carries its parent (from the first endpoint that lists one)."""
        if self.static_models:
            return [ModelCard(m) for m in sorted(self.static_models)]
        found: dict[str, ModelCard] = {}
        for name in self._order:
            state = self._states[name]
            if state.models is None or state.down_since is not None:
                continue
            for card in state.cards:
                seen = found.get(card.id)
                if seen is None or (seen.parent is None and card.parent is not None):
                    found[card.id] = card
        return [found[m] for m in sorted(found)]

    def adapter_parent(self, model: str) -> str | None:
        """The base model of ``model`` when some endpoint lists it as a LoRA adapter."""
        return self._adapters.get(model)

    def usable(self, now: float) -> list[Endpoint]:
        """Endpoints that are not down and (with discovery) have announced their models."""
        return [
            self._states[n].endpoint
            for n in self._order
            if self.health(n, now) is not Health.DOWN
            and (self.static_models or self._states[n].models is not None)
        ]

    def stalled(self, name: str, now: float) -> bool:
        """No chunk from the endpoint for ``silent_after_s`` while it holds streams."""
        after = self.silent_after_s
        return after > 0 and self.inflight.silent_s(name, now) >= after

    def candidate(self, name: str, now: float) -> Candidate | None:
        """The named endpoint as a candidate, whatever it serves; ``None`` when it is not in
        the pool or is down. For a request that must go to one endpoint (the one holding its
        state), not for choosing among several."""
        state = self._states.get(name)
        if state is None:
            return None
        health = self.health(name, now)
        if health is Health.DOWN:
            return None
        metrics = state.metrics if health is Health.UP else None
        return Candidate(
            state.endpoint, metrics, self.inflight.load(name), self.inflight.steps(name)
        )

    def candidates(self, model: str, now: float) -> Sequence[Candidate]:
        """Up endpoints serving the model, else unknown ones; ejected or stalled ones only when
        that leaves none (up before unknown again)."""
        fresh: list[Candidate] = []
        unknown: list[Candidate] = []
        ejected_fresh: list[Candidate] = []
        ejected_unknown: list[Candidate] = []
        inflight = self.inflight
        for name in self._order:
            state = self._states[name]
            if not self.serves(name, model):
                continue
            health = self.health(name, now)
            ejected = (
                state.ejected_until is not None and now < state.ejected_until
            ) or self.stalled(name, now)
            if health is Health.UP:
                into, metrics = ejected_fresh if ejected else fresh, state.metrics
            elif health is Health.UNKNOWN:
                into, metrics = ejected_unknown if ejected else unknown, None
            else:
                continue
            into.append(
                Candidate(state.endpoint, metrics, inflight.load(name), inflight.steps(name))
            )
        return fresh or unknown or ejected_fresh or ejected_unknown
