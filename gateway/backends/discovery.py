"""Learn which models each endpoint serves from its ``/v1/models``.

Each entry with a string ``id`` is a model of the endpoint; one with a string ``parent`` is a
LoRA adapter loaded on top of that base model (vLLM lists adapters so, with ``root`` the
adapter's path), which makes the adapter a model of that endpoint too.

Polls every endpoint at start, then every ``models_refresh_s``; an endpoint whose models are
still unknown is polled every second until it answers, and one that joins the pool (or comes
back at another address) at once. Skipped entirely when the pool declares its models in
config. A poll that fails in a way nobody foresaw is logged with its
traceback and counted in ``slogate_background_task_errors_total{task="discovery"}``; that
endpoint is polled again after a capped, jittered backoff, and the task carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import aiohttp
import orjson

from config import PoolConfig
from gateway.backends.backoff import Backoff
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore, ModelCard
from scheduler.framework.types import Endpoint

logger = logging.getLogger(__name__)

TASK = "discovery"
_RETRY_UNKNOWN_S = 1.0
_UNEXPECTED_BACKOFF_CAP_S = 60.0


async def fetch_models(
    session: aiohttp.ClientSession, endpoint: Endpoint, timeout_s: float
) -> list[ModelCard]:
    async with session.get(
        f"{endpoint.url}/v1/models",
        headers={"Accept": "application/json"},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as resp:
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        data = orjson.loads(await resp.read())
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no 'data' list in the /v1/models answer")
    return [
        ModelCard(e["id"], _text(e.get("parent")), _text(e.get("root")))
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("id"), str)
    ]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


async def run_discovery(
    store: EndpointStore,
    session: Callable[[], aiohttp.ClientSession],
    cfg: PoolConfig,
    *,
    metrics: GatewayMetrics,
    clock: Callable[[], float],
    rng: random.Random,
    wake: asyncio.Event | None = None,
) -> None:
    """``wake``: set when an endpoint joins the pool, so its models are asked at once."""
    timeout_s = cfg.scrape_timeout_ms / 1000
    known: dict[str, bool] = {}
    backoffs: dict[str, Backoff] = {}
    retry_at: dict[str, float] = {}
    seen: dict[str, Endpoint] = {}
    task_errors = metrics.background_task_errors.labels(TASK)

    async def poll(endpoint: Endpoint) -> None:
        try:
            models = await fetch_models(session(), endpoint, timeout_s)
        except (aiohttp.ClientError, TimeoutError, ValueError, orjson.JSONDecodeError) as exc:
            if known.get(endpoint.name, True):
                logger.warning(
                    "endpoint.models_unknown",
                    extra={"endpoint": endpoint.name, "error": str(exc) or type(exc).__name__},
                )
            known[endpoint.name] = False
            return
        store.set_models(endpoint.name, models)
        if not known.get(endpoint.name, False):
            logger.info(
                "endpoint.models",
                extra={
                    "endpoint": endpoint.name,
                    "models": [m.id for m in models if m.parent is None],
                    "adapters": {m.id: m.parent for m in models if m.parent is not None},
                },
            )
        known[endpoint.name] = True

    async def guarded_poll(endpoint: Endpoint) -> None:
        name = endpoint.name
        try:
            await poll(endpoint)
        except Exception as exc:  # the task outlives whatever went wrong
            backoff = backoffs.get(name)
            if backoff is None:
                backoff = backoffs[name] = Backoff(
                    base_s=_RETRY_UNKNOWN_S, cap_s=_UNEXPECTED_BACKOFF_CAP_S, rng=rng
                )
            delay_s = backoff.next_delay_s()
            retry_at[name] = clock() + delay_s
            known[name] = False  # polled again once the backoff has passed
            task_errors.inc()
            logger.warning(
                "discovery.unexpected_error",
                exc_info=exc,
                extra={
                    "endpoint": name,
                    "task": TASK,
                    "error": str(exc) or type(exc).__name__,
                    "consecutive": backoff.failures,
                    "retry_in_s": round(delay_s, 3),
                },
            )
        else:
            backoffs.pop(name, None)
            retry_at.pop(name, None)

    waited = cfg.models_refresh_s
    while True:
        current = {e.name: e for e in store.endpoints}
        for name in [n for n, e in seen.items() if current.get(n) != e]:
            # Left the pool, or came back under the same name at another address: start over.
            del seen[name]
            for state in (known, backoffs, retry_at):
                state.pop(name, None)
        seen.update(current)
        if waited >= cfg.models_refresh_s:
            targets = store.endpoints
            waited = 0.0
        else:
            targets = [
                e
                for e in store.endpoints
                if not known.get(e.name, False) or not store.models_known(e.name)
            ]
        now = clock()
        targets = [e for e in targets if retry_at.get(e.name, now) <= now]
        if targets:
            await asyncio.gather(*(guarded_poll(e) for e in targets))
        started = clock()
        if wake is None:
            await asyncio.sleep(_RETRY_UNKNOWN_S)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), _RETRY_UNKNOWN_S)
            wake.clear()
        waited += max(0.0, clock() - started)
