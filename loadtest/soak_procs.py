"""The soak benchmark's processes: one sim per pod (so one can be SIGKILLed and restarted on
its port), the gateway as ``python -m gateway.cli serve`` with a config file, and a sampler of
their RSS, open file descriptors and CPU time from ``/proc``.

Every process writes its output to a log file (appended to across a pod's restarts) and is
stopped by its own pid: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from loadtest.fleet import MODEL
from loadtest.routers import free_port

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0
"""A gateway given SIGTERM keeps serving for ``server.readiness_delay_s`` (5 s) first, then
gives in-flight requests up to ``server.shutdown_timeout_s`` (30 s)."""
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Managed:
    """A child process started from a fixed command line, restartable."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.starts += 1

    def send_signal(self, signum: int) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(signum)

    async def wait(self) -> int | None:
        """Until the process ends (at once when it never started); its return code."""
        if self.proc is None:
            return None
        return await self.proc.wait()

    async def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, signum: int = signal.SIGTERM) -> None:
        """``signum`` (SIGTERM), then SIGKILL after :data:`STOP_TIMEOUT_S`."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signum)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def wait_until(
        self, ready: _Check, session: aiohttp.ClientSession, timeout_s: float = READY_TIMEOUT_S
    ) -> float:
        """Poll ``ready`` until it holds; the seconds it took. Raises if the process exits or
        the time runs out, with the end of its log."""
        started = time.monotonic()
        while not await ready(session):
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.returncode} before it was ready:\n"
                    f"{tail(self.log_path)}"
                )
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(
                    f"{self.name} was not ready within {timeout_s:g} s:\n{tail(self.log_path)}"
                )
            await asyncio.sleep(0.1)
        return time.monotonic() - started


class _Check(Protocol):
    """Whether a process is ready (or healthy), asked over HTTP."""

    async def __call__(self, session: aiohttp.ClientSession) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    """The settings every pod of the soak fleet runs with (``python -m loadtest.sim`` flags)."""

    time_scale: float = 0.25
    max_num_seqs: int = 512
    kv_blocks: int = 8192

    def flags(self) -> list[str]:
        return [
            "--time-scale", repr(self.time_scale),
            "--max-num-seqs", str(self.max_num_seqs),
            "--kv-blocks", str(self.kv_blocks),
        ]  # fmt: skip


class SimPod(Managed):
    """One simulated pod in its own process, on a port fixed for its whole life."""

    def __init__(self, index: int, settings: SimSettings, log_dir: Path) -> None:
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        name = f"pod{index}"
        command = [
            sys.executable, "-m", "loadtest.sim", "--host", "127.0.0.1", "--port", str(self.port),
            "--seed", str(index), *settings.flags(),
        ]  # fmt: skip
        super().__init__(name, command, log_dir / f"{name}.log")
        self.ready = _SimReady(self.url)

    async def start_ready(self, session: aiohttp.ClientSession) -> float:
        """Start and wait until it serves; the seconds from the start until then."""
        started = time.monotonic()
        await self.start()
        await self.wait_until(self.ready, session)
        return time.monotonic() - started


class _SimReady(_Check):
    def __init__(self, url: str) -> None:
        self.url = url

    async def __call__(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/v1/models", timeout=PROBE_TIMEOUT) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def gateway_config_yaml(read_idle_timeout_s: float, preset: str) -> str:
    """The config file the soak's gateways run with: defaults but the read-idle timeout and
    the preset (in the file, not a flag, so that a reload can change it)."""
    return (
        f"upstream:\n  read_idle_timeout_s: {read_idle_timeout_s!r}\n"
        f"scheduling:\n  preset: {preset}\n"
    )


class GatewayProcess(Managed):
    """``python -m gateway.cli serve --config FILE --endpoint NAME=URL...`` on a free port (the
    config file names the preset)."""

    def __init__(
        self,
        name: str,
        endpoints: Mapping[str, str],
        *,
        config_path: Path,
        log_dir: Path,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoints = dict(endpoints)
        command = [
            sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path),
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
            *(f for n, u in endpoints.items() for f in ("--endpoint", f"{n}={u}")),
        ]  # fmt: skip
        super().__init__(name, command, log_dir / f"{name}.log")
        self.ready = _GatewayReady(self.url, tuple(endpoints))
        self.healthy = _Healthy(self.url)

    async def start_ready(self, session: aiohttp.ClientSession) -> float:
        started = time.monotonic()
        await self.start()
        await self.wait_until(self.ready, session)
        return time.monotonic() - started


class _GatewayReady(_Check):
    """``/ready`` 200 with every endpoint usable and scraped, and the model listed."""

    def __init__(self, url: str, names: Sequence[str]) -> None:
        self.url = url
        self.names = set(names)

    async def __call__(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/ready", timeout=PROBE_TIMEOUT) as resp:
                if resp.status != 200:
                    return False
                ready = await resp.json()
            if not self.names <= set(ready["endpoints"]):
                return False
            detail = ready.get("detail", {})
            if any(detail.get(n, {}).get("state", "up") != "up" for n in self.names):
                return False
            async with session.get(f"{self.url}/v1/models", timeout=PROBE_TIMEOUT) as resp:
                models = {m["id"] for m in (await resp.json())["data"]}
            return MODEL in models
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return False


class _Healthy(_Check):
    def __init__(self, url: str) -> None:
        self.url = url

    async def __call__(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/health", timeout=PROBE_TIMEOUT) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


# -- resources -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProcSample:
    rss_kib: int
    fds: int
    cpu_s: float
    """User + system CPU time since the process started."""


def proc_sample(pid: int) -> ProcSample | None:
    """RSS (``VmRSS``), open file descriptors and CPU time of ``pid``; ``None`` once gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command name (which may hold spaces) start after the last ')'.
            fields = f.read().rpartition(")")[2].split()
        cpu_ticks = int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    if rss_pages == 0:  # a zombie: exited, not reaped yet
        return None
    return ProcSample(rss_kib=rss_pages * PAGE_KIB, fds=fds, cpu_s=cpu_ticks / CLOCK_TICKS)


_LISTEN = "0A"


def fd_kinds(pid: int, *, listen_port: int, peer_ports: Collection[int]) -> dict[str, int]:
    """``pid``'s open file descriptors by what they are: ``client`` (TCP connections accepted
    on ``listen_port``), ``upstream`` (TCP connections to one of ``peer_ports``), ``other``
    (listeners, other sockets, pipes, files, epoll...). Empty once the process is gone."""
    sockets: list[str] = []
    other = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets.append(target[8:-1])
                else:
                    other += 1
        connections = _tcp_connections(pid)
    except OSError:
        return {}
    out = {"client": 0, "upstream": 0, "other": other}
    for inode in sockets:
        local, remote, state = connections.get(inode, (0, 0, ""))
        if state and state != _LISTEN and local == listen_port:
            out["client"] += 1
        elif state and state != _LISTEN and remote in peer_ports:
            out["upstream"] += 1
        else:
            out["other"] += 1
    return out


def _tcp_connections(pid: int) -> dict[str, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state) from the process's ``/proc/net``."""
    out: dict[str, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{name}") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote = fields[1].rpartition(":")[2], fields[2].rpartition(":")[2]
                out[fields[9]] = (int(local, 16), int(remote, 16), fields[3])
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    """Seconds after the run's start."""
    gateway: ProcSample | None
    gateway_fds: dict[str, int] | None
    """The gateway's FDs by kind (:func:`fd_kinds`), when the sampler was given the ports."""
    cpu_s: dict[str, float]
    """CPU seconds used per role (``gateway``, ``driver``, ``sims``) since the sampler's
    first sample, over every process the role had (a killed pod's CPU stays counted)."""


@dataclass(slots=True)
class ResourceSampler:
    """Samples the gateway's RSS and FDs and every role's CPU time every ``interval_s``."""

    start_at: float
    interval_s: float
    roles: Mapping[str, Sequence[Managed]]
    fd_kinds: Callable[[int], dict[str, int]] | None = None
    """Applied to the gateway's pid at every sample (e.g. :func:`fd_kinds` with its ports)."""
    samples: list[Sample] = field(default_factory=list)
    _cpu_seen: dict[int, float] = field(default_factory=dict)
    _cpu_total: dict[str, float] = field(default_factory=dict)

    def take(self) -> Sample:
        gateway: ProcSample | None = None
        kinds: dict[str, int] | None = None
        for role, procs in self.roles.items():
            total = self._cpu_total.setdefault(role, 0.0)
            for proc in procs:
                pid = proc.pid
                if pid is None or not proc.running:
                    continue
                got = proc_sample(pid)
                if got is None:
                    continue
                # The first sample is the baseline; a process first seen later (a restarted
                # pod, the driver) counts from its start.
                baseline = got.cpu_s if not self.samples else 0.0
                total += got.cpu_s - self._cpu_seen.get(pid, baseline)
                self._cpu_seen[pid] = got.cpu_s
                if role == "gateway":
                    gateway = got
                    kinds = None if self.fd_kinds is None else self.fd_kinds(pid)
            self._cpu_total[role] = total
        sample = Sample(
            at_s=time.monotonic() - self.start_at,
            gateway=gateway,
            gateway_fds=kinds,
            cpu_s=dict(self._cpu_total),
        )
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        k = 0
        while True:
            delay = self.start_at + k * self.interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.take()
            k += 1


SIGNAL_NAMES = {int(s): s.name for s in signal.Signals}


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "running"
    if returncode < 0:
        return f"killed by {SIGNAL_NAMES.get(-returncode, str(-returncode))}"
    return f"exited with {returncode}"
