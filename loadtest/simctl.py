"""The benchmark's control client for simulated pods: counters, speed, and a counter sampler.

Every router arm is judged from the pods' side alike (vllm-router names no pod in its
responses): ``GET /sim/stats`` gives each pod's counters, and a pod's *dispatched* count is
what it has ever been given: finished (any reason, aborts too) plus running plus waiting (a
preempted request goes back to waiting, so it is counted once). :class:`CounterSampler` reads
them once a second on the benchmark's own loop while the driver runs in its process.
``POST /sim/speed`` (``{"speed": F}``) slows a pod down or speeds it up live.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtest.fleet import Pod

CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=5, sock_connect=2)


@dataclass(frozen=True, slots=True)
class PodCounters:
    dispatched: int
    """Requests the pod was ever given (finished + running + waiting)."""
    completed: int
    """Finished with ``stop`` or ``length`` (not aborted)."""
    aborted: int


def counters_from_stats(stats: dict[str, Any]) -> PodCounters:
    """:class:`PodCounters` from a ``/sim/stats`` body (``finished`` is per finish reason)."""
    finished = stats["finished"]
    if isinstance(finished, dict):
        aborted = int(finished.get("abort", 0))
        total = sum(int(v) for v in finished.values())
    else:  # an older sim: one number
        aborted, total = 0, int(finished)
    return PodCounters(
        dispatched=total + int(stats["num_running"]) + int(stats["num_waiting"]),
        completed=total - aborted,
        aborted=aborted,
    )


async def pod_stats(session: aiohttp.ClientSession, pod: Pod) -> dict[str, Any]:
    async with session.get(f"{pod.url}/sim/stats", timeout=CONTROL_TIMEOUT) as resp:
        resp.raise_for_status()
        body: dict[str, Any] = await resp.json()
        return body


async def has_speed_control(session: aiohttp.ClientSession, pod: Pod) -> bool:
    """Whether this sim serves ``/sim/speed`` (newer sims do)."""
    async with session.get(f"{pod.url}/sim/speed", timeout=CONTROL_TIMEOUT) as resp:
        return resp.status == 200


async def set_speed(session: aiohttp.ClientSession, pod: Pod, speed: float) -> None:
    async with session.post(
        f"{pod.url}/sim/speed", json={"speed": speed}, timeout=CONTROL_TIMEOUT
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{pod.name}: POST /sim/speed -> {resp.status}: {await resp.text()}")


@dataclass(frozen=True, slots=True)
class CounterSample:
    at_s: float
    """Seconds after the workload's start (negative before it)."""
    dispatched: dict[str, int]
    """Per pod name."""


@dataclass(slots=True)
class CounterSampler:
    """Samples every pod's dispatched count at ``start_at + k * interval_s`` (monotonic)."""

    session: aiohttp.ClientSession
    pods: Sequence[Pod]
    start_at: float
    interval_s: float = 1.0
    samples: list[CounterSample] = field(default_factory=list)
    errors: int = 0
    attempted_s: float = -math.inf
    """The time of the last sample taken or failed."""
    _attempt: asyncio.Event = field(default_factory=asyncio.Event)

    async def reached(self, at_s: float) -> None:
        """Return once the sample at ``at_s`` after the start was taken (or failed)."""
        while self.attempted_s < at_s:
            self._attempt.clear()
            await self._attempt.wait()

    async def run(self) -> None:
        k = 0
        while True:
            delay = self.start_at + k * self.interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                stats = await asyncio.gather(*(pod_stats(self.session, p) for p in self.pods))
            except (aiohttp.ClientError, TimeoutError):
                self.errors += 1  # a missed sample widens one window; the rest stand
            else:
                self.samples.append(
                    CounterSample(
                        at_s=k * self.interval_s,
                        dispatched={
                            p.name: counters_from_stats(s).dispatched
                            for p, s in zip(self.pods, stats, strict=True)
                        },
                    )
                )
            self.attempted_s = k * self.interval_s
            self._attempt.set()
            k += 1


@contextlib.asynccontextmanager
async def sampling(sampler: CounterSampler) -> AsyncIterator[CounterSampler]:
    """Run ``sampler`` for the duration of the block."""
    task = asyncio.create_task(sampler.run())
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
