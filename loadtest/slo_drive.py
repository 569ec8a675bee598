"""Driving one router for the SLO benchmark: the workload with each arrival's class headers, and
slogate's own counters read when the measured window starts and at the end.

Knows nothing of how the router and its pods were started (sims here; real pods later), only
its URL. The counters (``/metrics``) are a cross-check of what the client saw: requests shed
(``slogate_requests_shed_total``), requests with objectives that ended, met or not
(``slogate_slo_requests_total``), and routing decisions by the predictor or its cold-start
estimate (``slogate_predictor_decisions_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.fleet import ClientRecord, WorkloadSpec, run_driver

GATEWAY_SAMPLES = {
    "slogate_requests_shed_total": ("objective", "reason"),
    "slogate_slo_requests_total": ("objective", "met"),
    "slogate_predictor_decisions_total": ("mode",),
}
"""Samples read from a slogate arm's ``/metrics``, and the labels kept (others summed)."""


def parse_counters(text: str) -> dict[str, float]:
    """The :data:`GATEWAY_SAMPLES` of a Prometheus exposition, keyed ``name{label=value,...}``
    with only the kept labels (summed over the others)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kept = GATEWAY_SAMPLES.get(sample.name)
            if kept is None:
                continue
            labels = ",".join(f"{k}={sample.labels[k]}" for k in kept if k in sample.labels)
            key = f"{sample.name}{{{labels}}}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


async def gateway_counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        resp.raise_for_status()
        return parse_counters(await resp.text())


@dataclass(slots=True)
class Driven:
    records: list[ClientRecord]
    gateway_at_window: dict[str, float] = field(default_factory=dict)
    """slogate's counters when the measured window began (empty for other routers)."""
    gateway_at_end: dict[str, float] = field(default_factory=dict)


async def drive_router(
    url: str,
    spec: WorkloadSpec,
    headers: Sequence[Mapping[str, str]],
    *,
    start_at: float,
    drain_s: float,
    window_at: float,
    read_gateway: bool,
) -> Driven:
    """Replay ``spec`` against the router at ``url`` (the driver in its own process), each
    arrival with its headers; with ``read_gateway``, read slogate's counters at ``window_at``
    (monotonic) and at the end."""
    async with aiohttp.ClientSession() as control:
        at_window: asyncio.Task[dict[str, float]] | None = None
        if read_gateway:
            at_window = asyncio.create_task(_counters_at(control, url, window_at))
        try:
            records = await run_driver(
                url, spec, start_at=start_at, drain_s=drain_s, headers=headers
            )
        finally:
            if at_window is not None and not at_window.done():
                at_window.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await at_window
        out = Driven(records=records)
        if at_window is not None:
            if not at_window.cancelled():
                out.gateway_at_window = at_window.result()
            out.gateway_at_end = await _counters_at(control, url, time.monotonic())
        return out


async def _counters_at(
    session: aiohttp.ClientSession, url: str, at_monotonic: float
) -> dict[str, float]:
    await asyncio.sleep(max(0.0, at_monotonic - time.monotonic()))
    try:
        return await gateway_counters(session, url)
    except (aiohttp.ClientError, TimeoutError):
        return {}  # a missed reading loses the window's view, not the run


def gateway_view(driven: Driven) -> dict[str, Any]:
    """slogate's own counters: over the whole run, over the measured window (approximately:
    an SLO request is counted when it ends) and the share of decisions by the predictor."""
    end, start = driven.gateway_at_end, driven.gateway_at_window
    window = {k: v - start.get(k, 0.0) for k, v in end.items()} if start else {}

    def predicted(counts: Mapping[str, float]) -> float:
        total = sum(v for k, v in counts.items() if k.startswith("slogate_predictor_decisions"))
        mine = counts.get("slogate_predictor_decisions_total{mode=predicted}", 0.0)
        return mine / total if total else math.nan

    return {
        "total": end,
        "measured_window": window,
        "shed_total": sum(v for k, v in end.items() if k.startswith("slogate_requests_shed")),
        "by_prediction_in_window": predicted(window) if window else math.nan,
    }
