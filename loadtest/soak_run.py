"""The soak benchmark's settings and its phases before the soak: the client process
(:mod:`loadtest.soak_drive`) started and read, the SIGHUP probe on a throwaway gateway, and the
client-side calibration of the gateway's added latency (:mod:`loadtest.bench_soak`)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.soak_drive import DriveSettings, driver_command
from loadtest.soak_faults import FaultSchedule
from loadtest.soak_procs import GatewayProcess, Managed, SimPod, SimSettings, describe_exit, tail
from loadtest.soak_report import added_latency, latency_summary, read_metrics

LEAD_S = 1.5
"""Between starting the client process and its t=0 (its imports take ~0.6 s)."""
SIGHUP_PROBE_S = 2.0
METRICS_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakSettings:
    pods: int = 4
    preset: str = "predicted-latency"
    concurrency: int = 1000
    duration_s: float = 300.0
    warmup_s: float = 30.0
    kill_every_s: float = 30.0
    down_s: float = 5.0
    stall_every_s: float = 30.0
    stall_at_s: float | None = None
    stall_s: float = 10.0
    stall_speed: float = 0.001
    reload_every_s: float = 0.0
    read_idle_timeout_s: float = 5.0
    hung_factor: float = 2.0
    drain_s: float = 30.0
    idle_s: float = 125.0
    """After the drain, before the last resource sample: the gateway keeps idle upstream
    connections 60 s, and aiohttp closes them at a cleanup pass every 60 s, so all are closed
    within 120 s (measured: all still open after 66 s, all closed after 100 s)."""
    ramp_s: float = 10.0
    sample_every_s: float = 5.0
    sims: SimSettings = field(default_factory=SimSettings)
    prompt_tokens: int = 32
    max_tokens: int = 32
    calibration_concurrency: int = 50
    calibration_s: float = 15.0
    calibration_rounds: int = 2
    calibration_warmup_rounds: int = 1
    """Rounds run first and not counted."""
    seed: int = 0

    @property
    def hung_s(self) -> float:
        return self.hung_factor * self.read_idle_timeout_s

    def schedule(self) -> FaultSchedule:
        return FaultSchedule(
            window_s=self.duration_s,
            pods=self.pods,
            kill_every_s=self.kill_every_s,
            down_s=self.down_s,
            stall_every_s=self.stall_every_s,
            stall_at_s=self.stall_at_s,
            stall_s=self.stall_s,
            reload_every_s=self.reload_every_s,
        )

    def drive(
        self, url: str, *, concurrency: int, duration_s: float, start_at: float
    ) -> DriveSettings:
        return DriveSettings(
            url=f"{url}/v1/completions",
            concurrency=concurrency,
            duration_s=duration_s,
            start_at=start_at,
            hung_s=self.hung_s,
            drain_s=self.drain_s,
            ramp_s=min(self.ramp_s, (self.warmup_s or duration_s) / 2),
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


@dataclass(slots=True)
class Driven:
    proc: Managed
    out: Path

    async def result(self) -> dict[str, Any]:
        assert self.proc.proc is not None
        await self.proc.proc.wait()
        if self.proc.returncode != 0 or not self.out.exists():
            ended = describe_exit(self.proc.returncode)
            raise RuntimeError(f"{self.proc.name} {ended}:\n{tail(self.proc.log_path)}")
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result


async def start_driver(drive: DriveSettings, name: str, log_dir: Path) -> Driven:
    out = log_dir / f"{name}.json"
    command = [sys.executable, "-m", "loadtest.soak_drive", *driver_command(drive, out)]
    proc = Managed(name, command, log_dir / f"{name}.log")
    await proc.start()
    return Driven(proc, out)


async def gateway_metrics(
    session: aiohttp.ClientSession, gateway: GatewayProcess
) -> dict[str, float]:
    """The samples :func:`read_metrics` reads; empty when the gateway does not answer."""
    try:
        async with session.get(f"{gateway.url}/metrics", timeout=METRICS_TIMEOUT) as resp:
            return read_metrics(await resp.text())
    except (aiohttp.ClientError, TimeoutError):
        return {}


# -- phases --------------------------------------------------------------------------------------
async def sighup_probe(session: aiohttp.ClientSession, gateway: GatewayProcess) -> dict[str, Any]:
    """Start ``gateway`` (a throwaway one), SIGHUP it, and see whether it still serves."""
    await gateway.start_ready(session)
    try:
        gateway.send_signal(signal.SIGHUP)
        await asyncio.sleep(SIGHUP_PROBE_S)
        if not gateway.running:
            return {
                "supported": False,
                "detail": f"SIGHUP not supported: the gateway {describe_exit(gateway.returncode)}",
            }
        try:
            await gateway.wait_until(gateway.healthy, session, timeout_s=5.0)
        except RuntimeError:
            return {"supported": False, "detail": "after SIGHUP /health did not answer 200"}
        return {"supported": True, "detail": f"alive and healthy {SIGHUP_PROBE_S:g} s after SIGHUP"}
    finally:
        await gateway.stop(signal.SIGINT)  # a throwaway: no readiness delay


async def calibrate(
    settings: SoakSettings,
    session: aiohttp.ClientSession,
    pod: SimPod,
    config_path: Path,
    log_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Added latency seen by a client: the closed loop straight to ``pod`` and through a gateway
    whose only endpoint is ``pod``, alternated round by round (in turn first), after
    ``calibration_warmup_rounds`` that are not counted."""
    gateway = GatewayProcess(
        "calibration-gateway", {pod.name: pod.url}, config_path=config_path, log_dir=log_dir
    )
    await gateway.start_ready(session)
    completed: dict[str, list[list[float]]] = {"direct": [], "gateway": []}
    per_round: list[dict[str, Any]] = []
    try:
        # The first rounds are a warm-up, not counted: in trials the first direct arm ran
        # 10-20 ms slower at p50 than the same arm a round later, with or without a warm-up
        # through the gateway before it.
        skipped = settings.calibration_warmup_rounds
        for rnd in range(skipped + settings.calibration_rounds):
            arms = [("direct", pod.url), ("gateway", gateway.url)]
            for arm, url in arms if rnd % 2 == 0 else arms[::-1]:  # order drift cancels out
                start_at = time.monotonic() + LEAD_S
                drive = settings.drive(
                    url,
                    concurrency=settings.calibration_concurrency,
                    duration_s=settings.calibration_s,
                    start_at=start_at,
                )
                drive = replace(drive, ramp_s=min(1.0, settings.calibration_s / 4))
                tally = await (
                    await start_driver(drive, f"calibration-{arm}-{rnd}", log_dir)
                ).result()
                # Requests sent during the ramp are left out: connections are being opened.
                kept = [r for r in tally["completed"] if r[0] >= drive.ramp_s]
                if rnd >= skipped:
                    completed[arm] += kept
                summary = latency_summary(kept, from_s=0, to_s=settings.calibration_s)
                per_round.append({"round": rnd, "arm": arm, "counted": rnd >= skipped, **summary})
                progress(f"calibration round {rnd} {arm}: {tally['counts']}")
    finally:
        await gateway.stop(signal.SIGINT)  # a throwaway: no readiness delay
    span = settings.calibration_s
    direct = latency_summary(completed["direct"], from_s=0, to_s=span)
    through = latency_summary(completed["gateway"], from_s=0, to_s=span)
    return {
        "concurrency": settings.calibration_concurrency,
        "rounds": settings.calibration_rounds,
        "warmup_rounds": settings.calibration_warmup_rounds,
        "seconds_per_arm": span,
        "pod": pod.name,
        "direct": direct,
        "gateway": through,
        "added": added_latency(direct, through),
        "per_round": per_round,
        "note": "closed loop on a simulated pod whose engine steps take tens of ms: the "
        "difference is bounded by that step noise, not a measurement of sub-ms overhead "
        "(loadtest.bench_overhead measures that against an instant backend)",
    }
