"""Learn which models each endpoint serves from its ``/v1/models``.

Polls every endpoint at start, then every ``models_refresh_s``; an endpoint whose models are
still unknown is polled every second until it answers. Skipped entirely when the pool
declares its models in config.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import orjson

from config import PoolConfig
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.types import Endpoint

logger = logging.getLogger(__name__)

_RETRY_UNKNOWN_S = 1.0


async def fetch_models(
    session: aiohttp.ClientSession, endpoint: Endpoint, timeout_s: float
) -> list[str]:
    async with session.get(
        f"{endpoint.url}/v1/models", timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as resp:
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        data = orjson.loads(await resp.read())
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no 'data' list in the /v1/models answer")
    return [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]


async def run_discovery(
    store: EndpointStore,
    session: Callable[[], aiohttp.ClientSession],
    cfg: PoolConfig,
) -> None:
    timeout_s = cfg.scrape_timeout_ms / 1000
    known: dict[str, bool] = {}

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
            logger.info("endpoint.models", extra={"endpoint": endpoint.name, "models": models})
        known[endpoint.name] = True

    waited = cfg.models_refresh_s
    while True:
        if waited >= cfg.models_refresh_s:
            targets = store.endpoints
            waited = 0.0
        else:
            targets = [e for e in store.endpoints if not known.get(e.name, False)]
        if targets:
            await asyncio.gather(*(poll(e) for e in targets))
        await asyncio.sleep(_RETRY_UNKNOWN_S)
        waited += _RETRY_UNKNOWN_S
