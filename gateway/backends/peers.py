"""Other replicas of this gateway: each tells the others what it has in flight on every pod.

N replicas behind one Service each see only their own requests; a pod's load from the others
reaches them only through its scraped metrics, late and coarse (the queue, not the prompt work
on its way). So every replica answers ``GET /slogate/v1/inflight`` with its own in-flight
requests and uncached prompt tokens per pod, and polls its peers' every
``pool.peers.interval_ms``; the sum of their latest reports is the remote part of each pod's
in-flight load (:meth:`scheduler.datalayer.inflight.InflightTracker.set_remote`), which every
scorer, the cold-start estimate and the predictor's features read. A report counts for three
intervals, then is dropped (a peer that stopped answering holds nothing). No leader, no
consensus: each replica adds up what the others said last.

Peers are the configured URLs, and/or the ready pods of the gateway's own Deployment found
through the Kubernetes API (the pod watcher of :mod:`gateway.backends.kubernetes`), minus the
gateway's own pod.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from config import EndpointConfig, PeersConfig
from gateway.auth import INFLIGHT_PATH
from scheduler.datalayer.inflight import InflightTracker
from scheduler.framework.types import InflightLoad

logger = logging.getLogger(__name__)

TASK = "peers"
_VALID_FOR = 3
"""A report counts for this many intervals."""


def inflight_report(tracker: InflightTracker) -> bytes:
    """What ``GET /slogate/v1/inflight`` answers: ``{"endpoints": {name: [requests,
    prefill_tokens]}}``, this gateway's own part only."""
    loads = tracker.local_loads()
    return orjson.dumps(
        {"endpoints": {name: [load.requests, load.prefill_tokens] for name, load in loads.items()}}
    )


def parse_report(body: bytes) -> dict[str, InflightLoad]:
    data = orjson.loads(body)
    endpoints = data.get("endpoints") if isinstance(data, dict) else None
    if not isinstance(endpoints, dict):
        raise ValueError("no 'endpoints' object")
    out: dict[str, InflightLoad] = {}
    for name, value in endpoints.items():
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        ):
            out[name] = InflightLoad(value[0], value[1])
    return out


@dataclass(slots=True)
class _Report:
    loads: dict[str, InflightLoad]
    at: float


class PeerLoads:
    """Polls every peer's report and keeps their sum in ``tracker``."""

    def __init__(
        self,
        cfg: PeersConfig,
        tracker: InflightTracker,
        *,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
        headers: Mapping[str, str] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._tracker = tracker
        self._session = session
        self._clock = clock
        self._headers = dict(headers or {})
        """Sent to peers (the ``/metrics`` token, which guards the report as it guards the
        metrics)."""
        self._static = tuple(u.rstrip("/") for u in cfg.urls)
        self._discovered: tuple[str, ...] = ()
        self._reports: dict[str, _Report] = {}
        self._failing: set[str] = set()
        self._on_error = on_error or (lambda: None)

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self._static, *self._discovered)))

    def set_discovered(self, urls: Iterable[str]) -> None:
        self._discovered = tuple(u.rstrip("/") for u in urls)
        for url in [u for u in self._reports if u not in self.peers]:
            del self._reports[url]

    async def run(self) -> None:
        interval_s = self._cfg.interval_ms / 1000
        while True:
            try:
                peers = self.peers
                if peers:
                    await asyncio.gather(*(self._poll(url) for url in peers))
                self._publish()
            except Exception:  # the task outlives whatever went wrong
                self._on_error()
                logger.exception("peers.unexpected_error", extra={"task": TASK})
                await asyncio.sleep(max(1.0, interval_s))
            await asyncio.sleep(interval_s)

    async def _poll(self, url: str) -> None:
        try:
            async with self._session().get(
                f"{url}{INFLIGHT_PATH}",
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._cfg.timeout_ms / 1000),
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                loads = parse_report(await resp.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if url not in self._failing:
                self._failing.add(url)
                logger.warning(
                    "peer.unreachable", extra={"peer": url, "error": str(exc) or type(exc).__name__}
                )
            return
        if url in self._failing:
            self._failing.discard(url)
            logger.info("peer.reachable", extra={"peer": url})
        self._reports[url] = _Report(loads, self._clock())

    def _publish(self) -> None:
        oldest = self._clock() - _VALID_FOR * self._cfg.interval_ms / 1000
        total: dict[str, InflightLoad] = {}
        for report in self._reports.values():
            if report.at < oldest:
                continue
            for name, load in report.loads.items():
                cur = total.get(name)
                total[name] = (
                    load
                    if cur is None
                    else InflightLoad(
                        cur.requests + load.requests, cur.prefill_tokens + load.prefill_tokens
                    )
                )
        self._tracker.set_remote(total)


def peer_urls(pods: Sequence[EndpointConfig], own_name: str) -> list[str]:
    """The discovered gateway pods' URLs, without this gateway's own pod."""
    return [p.url for p in pods if p.name != own_name]
