"""The soak benchmark's faults: a plan fixed before the run (:func:`fault_plan`), and the
:class:`FaultRunner` that carries it out against the pods' and the gateway's processes.

- **kill**: every ``kill_every_s``, the next pod in turn (pod0, pod1, ...) gets SIGKILL; it is
  started again on the same port ``down_s`` later (a fresh sim: empty caches and queues);
- **stall**: from ``stall_at_s``, every ``stall_every_s``, another pod (two places after the
  last one killed, so never the pod that is down) is slowed to ``stall_speed`` with
  ``POST /sim/speed`` for ``stall_s``, then set back to speed 1: its streams go silent;
- **reload**: every ``reload_every_s``, ``before_reload`` (the benchmark rewrites the config
  file, alternating the preset) and SIGHUP to the gateway; then, after ``RELOAD_CHECK_S``,
  whether it still runs and answers ``/health``.

Times are seconds after the fault window's start (the end of the warm-up). Nothing is planned
to still be in effect at the window's end: a kill whose restart would come after it, or a
stall that would outlast it, is left out. Every action is logged as an :class:`Event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from loadtest.soak_procs import GatewayProcess, SimPod, describe_exit

KILL, STALL, RELOAD = "kill", "stall", "reload"
RELOAD_CHECK_S = 2.0
NORMAL_SPEED = 1.0
SPEED_TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSchedule:
    window_s: float
    pods: int
    kill_every_s: float = 30.0
    """0: no kills."""
    down_s: float = 5.0
    stall_every_s: float = 30.0
    """0: no stalls."""
    stall_at_s: float | None = None
    """The first stall; default: half ``kill_every_s`` (between two kills), else 0."""
    stall_s: float = 10.0
    reload_every_s: float = 0.0
    """0: no reloads."""


@dataclass(frozen=True, slots=True)
class PlannedFault:
    at_s: float
    kind: str
    pod: int | None
    """The pod's index (kill, stall); ``None`` for a reload."""


def fault_plan(schedule: FaultSchedule) -> list[PlannedFault]:
    """Every fault of the window, in time order (module docstring)."""
    s = schedule
    out: list[PlannedFault] = []
    if s.kill_every_s > 0 and s.pods > 0:
        k = 1
        while k * s.kill_every_s + s.down_s < s.window_s:
            out.append(PlannedFault(k * s.kill_every_s, KILL, (k - 1) % s.pods))
            k += 1
    if s.stall_every_s > 0 and s.pods > 1:
        first = s.stall_at_s
        if first is None:
            first = s.kill_every_s / 2 if s.kill_every_s > 0 else 0.0
        j = 0
        while first + j * s.stall_every_s + s.stall_s < s.window_s:
            at = first + j * s.stall_every_s
            killed = [f.pod for f in out if f.kind == KILL and f.at_s <= at]
            last = killed[-1] if killed and killed[-1] is not None else j - 1
            out.append(PlannedFault(at, STALL, (last + 2) % s.pods))
            j += 1
    if s.reload_every_s > 0:
        k = 1
        while k * s.reload_every_s < s.window_s:
            out.append(PlannedFault(k * s.reload_every_s, RELOAD, None))
            k += 1
    return sorted(out, key=lambda f: (f.at_s, f.kind))


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    """Seconds after the run's start (the driver's t=0)."""
    kind: str
    target: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def set_speed(session: aiohttp.ClientSession, pod: SimPod, speed: float) -> None:
    async with session.post(
        f"{pod.url}/sim/speed", json={"speed": speed}, timeout=SPEED_TIMEOUT
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{pod.name}: POST /sim/speed -> {resp.status}")


@dataclass(slots=True)
class FaultRunner:
    """Carries out a plan; ``on_gateway_exit`` is called once if the gateway is found gone."""

    session: aiohttp.ClientSession
    pods: Sequence[SimPod]
    gateway: GatewayProcess
    schedule: FaultSchedule
    stall_speed: float
    run_start_at: float
    """``time.monotonic()`` of the run's t=0 (events are logged relative to it)."""
    window_at: float
    """``time.monotonic()`` of the fault window's start."""
    reloads: bool = True
    """False: reloads are planned but not sent (SIGHUP is known to end the gateway)."""
    on_gateway_exit: Callable[[str], None] = lambda detail: None
    before_reload: Callable[[int], str] = lambda k: ""
    """Called with the reload's number (0, 1, ...) before its SIGHUP; returns what it changed."""
    events: list[Event] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    """How long each restarted pod took from its start until it served."""
    reloads_sent: int = 0
    reloads_survived: int = 0
    failures: list[str] = field(default_factory=list)
    """Faults that could not be carried out (a pod that did not come back, ...)."""
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def log(self, kind: str, target: str, detail: str = "") -> None:
        self.events.append(
            Event(round(time.monotonic() - self.run_start_at, 3), kind, target, detail)
        )

    async def run(self) -> None:
        """Carry out the plan, then wait until every pod is back and at full speed."""
        try:
            for fault in fault_plan(self.schedule):
                delay = self.window_at + fault.at_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if fault.kind == RELOAD:
                    if not await self._reload():
                        return
                    continue
                assert fault.pod is not None
                pod = self.pods[fault.pod]
                action = self._kill_and_restart if fault.kind == KILL else self._stall
                task = asyncio.create_task(action(pod))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._tasks:
                await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    async def _kill_and_restart(self, pod: SimPod) -> None:
        if not pod.running:
            self.failures.append(f"{pod.name} was not running when its kill came")
            return
        await pod.kill()
        self.log(KILL, pod.name, "SIGKILL")
        await asyncio.sleep(self.schedule.down_s)
        try:
            took = await pod.start_ready(self.session)
        except RuntimeError as exc:
            self.failures.append(f"{pod.name} did not come back: {exc}")
            self.log("restart-failed", pod.name, str(exc).splitlines()[0])
            return
        self.restart_s.append(took)
        self.log("restarted", pod.name, f"serving {took:.2f} s after its start")

    async def _stall(self, pod: SimPod) -> None:
        try:
            await set_speed(self.session, pod, self.stall_speed)
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            self.failures.append(f"{pod.name}: stall not set: {exc!r}")
            return
        self.log(STALL, pod.name, f"speed {self.stall_speed:g} for {self.schedule.stall_s:g} s")
        await asyncio.sleep(self.schedule.stall_s)
        try:
            await set_speed(self.session, pod, NORMAL_SPEED)
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            self.failures.append(f"{pod.name}: speed not restored: {exc!r}")
            return
        self.log("unstalled", pod.name, f"speed {NORMAL_SPEED:g}")

    async def _reload(self) -> bool:
        """SIGHUP and check; False when the gateway is gone (the run cannot go on)."""
        if not self.reloads:
            return True
        changed = self.before_reload(self.reloads_sent)
        self.reloads_sent += 1
        self.gateway.send_signal(signal.SIGHUP)
        self.log(RELOAD, self.gateway.name, f"SIGHUP {changed}".strip())
        await asyncio.sleep(RELOAD_CHECK_S)
        if not self.gateway.running:
            detail = describe_exit(self.gateway.returncode)
            self.log("gateway-exit", self.gateway.name, f"after SIGHUP: {detail}")
            self.on_gateway_exit(f"the gateway {detail} after SIGHUP")
            return False
        with contextlib.suppress(RuntimeError):
            await self.gateway.wait_until(self.gateway.healthy, self.session, timeout_s=5.0)
            self.reloads_survived += 1
            return True
        self.log("reload-unhealthy", self.gateway.name, "/health not 200 within 5 s")
        return True
