"""Poll each endpoint's Prometheus ``/metrics`` and keep the store's snapshots fresh.

One task per endpoint, every ``scrape_interval_ms`` (50 ms default, as llm-d). A successful
scrape refreshes the snapshot and clears a ``down`` mark; a failed connection or a timeout marks
the endpoint down; an error status or an answer that lacks the expected metrics leaves the old
snapshot to go stale (the endpoint is reachable, its load is unknown: servers without vLLM
metrics still get traffic, routed without load information). Transitions are logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from config import PoolConfig
from gateway.backends.exposition import ExpositionError, parse_exposition
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.types import Endpoint

logger = logging.getLogger(__name__)


async def scrape_endpoint(
    endpoint: Endpoint,
    *,
    engine: str,
    store: EndpointStore,
    session: Callable[[], aiohttp.ClientSession],
    cfg: PoolConfig,
    metrics: GatewayMetrics,
    clock: Callable[[], float],
) -> None:
    interval = cfg.scrape_interval_ms / 1000
    timeout = aiohttp.ClientTimeout(total=cfg.scrape_timeout_ms / 1000)
    url = f"{endpoint.url}{cfg.metrics_path}"
    state = "unknown"
    while True:
        started = clock()
        problem: str | None = None
        try:
            async with session().get(url, timeout=timeout) as resp:
                status = resp.status
                text = await resp.text() if status == 200 else ""
            if status != 200:
                raise ExpositionError(f"{cfg.metrics_path} answered HTTP {status}")
            store.set_metrics(endpoint.name, parse_exposition(text, engine=engine, now=clock()))
            new_state = "up"
        except ExpositionError as exc:
            store.mark_reachable(endpoint.name)
            new_state, problem = "metrics_unknown", str(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            store.mark_down(endpoint.name, clock())
            metrics.scrape_errors.labels(endpoint.name).inc()
            new_state, problem = "down", str(exc) or type(exc).__name__
        if new_state != state:
            log = logger.info if new_state == "up" else logger.warning
            log(f"endpoint.{new_state}", extra={"endpoint": endpoint.name, "error": problem})
            state = new_state
        await asyncio.sleep(max(0.0, interval - (clock() - started)))
