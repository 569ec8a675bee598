"""The pool's endpoints, changed while the gateway runs.

A source of truth (the Kubernetes API's ready pods, a reloaded config file) hands
:meth:`PoolMembership.apply` the whole desired set; the membership works out who joined, who
left and who changed (same name, another address, labels or engine: it leaves and joins again).

- A joining endpoint enters the store and gets its metrics scraper at once; it is routed as
  soon as the store finds it usable (like any endpoint at start: reachable, serving the model).
- A leaving endpoint leaves the store at once, so no new request goes to it; requests already
  relayed to it finish (they hold its address), and what was kept about it is dropped: its
  scraper, outlier record, per-endpoint metric series and the scheduler's state (prefix index,
  predictor corrections; the in-flight counts when its last request ends).

Pure bookkeeping on the event loop: the scrapers are started through the injected
``start_scraper`` and cancelled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config import EndpointConfig
from gateway.backends.pool_state import ScrapeStatus
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.types import Endpoint

logger = logging.getLogger(__name__)

ScraperFactory = Callable[[Endpoint, str, ScrapeStatus], Coroutine[Any, Any, None]]
"""``(endpoint, engine, status) -> coroutine`` scraping the endpoint until cancelled."""


@dataclass(frozen=True, slots=True)
class PoolChange:
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    """Left and joined again (a new address, labels or engine)."""

    def __bool__(self) -> bool:
        return bool(self.joined or self.left or self.changed)


def endpoint_of(cfg: EndpointConfig) -> Endpoint:
    """The endpoint a config entry names; ``name`` defaults to the URL's ``host:port``."""
    return Endpoint(
        name=cfg.name or urlsplit(cfg.url).netloc,
        url=cfg.url.rstrip("/"),
        labels=dict(cfg.labels),
    )


class PoolMembership:
    def __init__(
        self,
        store: EndpointStore,
        *,
        engines: dict[str, str],
        statuses: dict[str, ScrapeStatus],
        start_scraper: ScraperFactory,
        on_leave: Sequence[Callable[[str], None]] = (),
        on_join: Sequence[Callable[[str], None]] = (),
    ) -> None:
        self._store = store
        self.engines = engines
        """Endpoint name -> engine (``vllm``, ``sglang``); shared with the gateway."""
        self.statuses = statuses
        """Endpoint name -> what its last scrape found (``/ready``); shared with the gateway."""
        self._start_scraper = start_scraper
        self._on_leave = tuple(on_leave)
        self._on_join = tuple(on_join)
        self._scrapers: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def start(self) -> None:
        """Start a scraper for every endpoint in the store (the app's start)."""
        self._running = True
        for endpoint in self._store.endpoints:
            self._scrape(endpoint)

    async def close(self) -> None:
        self._running = False
        tasks = list(self._scrapers.values())
        self._scrapers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def apply(self, desired: Sequence[EndpointConfig]) -> PoolChange:
        """Make the pool exactly ``desired``. Raises ``ValueError`` (and changes nothing) when
        two entries share a name."""
        wanted: dict[str, tuple[Endpoint, str]] = {}
        for cfg in desired:
            endpoint = endpoint_of(cfg)
            if endpoint.name in wanted:
                raise ValueError(f"two endpoints are named {endpoint.name!r}")
            wanted[endpoint.name] = (endpoint, cfg.engine)
        current = {e.name: e for e in self._store.endpoints}
        left = [n for n in current if n not in wanted]
        joined = [n for n in wanted if n not in current]
        changed = [
            n
            for n, (endpoint, engine) in wanted.items()
            if n in current and (current[n] != endpoint or self.engines.get(n, "vllm") != engine)
        ]
        for name in (*left, *changed):
            self._leave(name)
        for name in (*changed, *joined):
            endpoint, engine = wanted[name]
            self._join(endpoint, engine)
        change = PoolChange(tuple(joined), tuple(left), tuple(changed))
        if change:
            logger.info(
                "pool.changed",
                extra={
                    "joined": list(change.joined),
                    "left": list(change.left),
                    "changed": list(change.changed),
                    "endpoints": len(wanted),
                },
            )
        return change

    def _join(self, endpoint: Endpoint, engine: str) -> None:
        self._store.add(endpoint)
        self.engines[endpoint.name] = engine
        self.statuses[endpoint.name] = ScrapeStatus()
        if self._running:
            self._scrape(endpoint)
        for joined in self._on_join:
            joined(endpoint.name)

    def _leave(self, name: str) -> None:
        task = self._scrapers.pop(name, None)
        if task is not None:
            task.cancel()
        self._store.remove(name)
        self.engines.pop(name, None)
        self.statuses.pop(name, None)
        for forget in self._on_leave:
            try:
                forget(name)
            except Exception:
                logger.exception("pool.forget_failed", extra={"endpoint": name})

    def _scrape(self, endpoint: Endpoint) -> None:
        status = self.statuses.setdefault(endpoint.name, ScrapeStatus())
        engine = self.engines.get(endpoint.name, "vllm")
        self._scrapers[endpoint.name] = asyncio.create_task(
            self._start_scraper(endpoint, engine, status), name=f"scrape:{endpoint.name}"
        )
