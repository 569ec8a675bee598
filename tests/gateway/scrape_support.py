"""Helpers for the scraping tests: read the gateway's /metrics and /ready as a client would."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

Client = TestClient[web.Request, web.Application]

TESTDATA = Path(__file__).parent / "testdata"
VLLM_EXPOSITION = (TESTDATA / "vllm_v1.prom").read_bytes()
"""A real vLLM V1 /metrics answer: 3 waiting, 17 running, KV cache 41.72 % used."""


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``; ``None`` if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def gateway_sample(client: Client, name: str, **labels: str) -> float | None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return sample(await resp.text(), name, **labels)


async def ready_detail(client: Client) -> dict[str, Any]:
    resp = await client.get("/ready")
    body: dict[str, Any] = await resp.json()
    return body


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail (never on speed: the deadline is generous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} never became true")
        await asyncio.sleep(0.02)


def background_task(name: str) -> asyncio.Task[Any]:
    """The gateway's running background task called ``name`` (``scrape:<endpoint>``, ...)."""
    found = [t for t in asyncio.all_tasks() if t.get_name() == name]
    assert found, f"no task named {name!r}"
    return found[0]


def log_field(record: logging.LogRecord, name: str) -> Any:
    """A structured field a log call passed in ``extra``."""
    return getattr(record, name, None)
