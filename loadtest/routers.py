"""Router arms for the routing matrix: slogate presets and vllm-router policies, each router in
its own process, started the way a user would start it and driven only over HTTP.

- slogate: ``python -m gateway.cli serve --endpoint NAME=URL ... --preset P`` on a free
  loopback port, default configuration otherwise (so the predictor starts cold: no state
  directory). Ready when ``/ready`` answers 200 with every pod usable and ``up`` and
  ``/v1/models`` lists the sims' model.
- vllm-router (PyPI ``vllm-router``, a Rust router with a Python launcher; the ``peers``
  extra): ``vllm-router --worker-urls URL... --policy P`` on a free port, its own Prometheus
  exporter on another free port (its default, 29000, would collide between runs), the startup
  health check polled every second instead of every 30 s (the sims are already up, so this
  only saves waiting), logs at ``warn`` (``RUST_LOG``: its ``--log-level warning`` does not
  reach the Rust logger, which at ``info`` logs every power-of-two decision).
  Everything else keeps its defaults: ``cache_aware`` with cache threshold 0.3 and balance
  thresholds 64 / 1.5; runtime health checks every 60 s on ``/health``, 3 failures to mark a
  worker down. Ready when ``/readiness`` answers 200 with every worker healthy.

The executable is looked for beside ``sys.executable`` (the virtualenv's ``bin``), then on
``PATH``; :func:`find_vllm_router` returns ``None`` when it is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.fleet import MODEL, Pod

SLOGATE = "slogate"
VLLM_ROUTER = "vllm-router"
VLLM_ROUTER_INSTALL = ".venv/bin/pip install -e '.[peers]'   (or: pip install vllm-router)"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Arm:
    """One router configuration under test."""

    name: str
    """As given to ``--arms`` and written to JSON."""
    kind: str
    """``slogate`` or ``vllm-router``."""
    setting: str
    """The slogate preset or the vllm-router policy."""
    label: str
    """Short column header."""
    config: str | None = None
    """slogate only: a configuration file passed as ``--config`` (the preset and the
    endpoints still come from the command line), to compare settings a preset cannot hold
    (the predictor's, for one)."""

    @property
    def is_peer(self) -> bool:
        """A router users would pick instead of slogate (ratios are taken against these)."""
        return self.kind != SLOGATE


SLOGATE_ARMS = (
    Arm("predicted-latency", SLOGATE, "predicted-latency", "sg:pred-lat"),
    Arm("load-prefix", SLOGATE, "load-prefix", "sg:load-pfx"),
    Arm("least-request", SLOGATE, "least-request", "sg:least-req"),
)
PEER_ARMS = (
    Arm("vllm-router:round_robin", VLLM_ROUTER, "round_robin", "vr:round-robin"),
    Arm("vllm-router:power_of_two", VLLM_ROUTER, "power_of_two", "vr:pow-of-two"),
    Arm("vllm-router:cache_aware", VLLM_ROUTER, "cache_aware", "vr:cache-aware"),
)
ARMS = SLOGATE_ARMS + PEER_ARMS


def arm_named(name: str) -> Arm:
    """An arm by its full name, or a vllm-router policy by the policy alone; ``slogate:PRESET``
    is slogate with any preset of ``config/presets``, and ``slogate:PRESET@FILE`` the same
    with ``--config FILE`` (a gateway configuration file, which must exist)."""
    for arm in ARMS:
        if name in (arm.name, arm.label) or (arm.is_peer and name == arm.setting):
            return arm
    kind, _, setting = name.partition(":")
    preset, _, config = setting.partition("@")
    if kind == SLOGATE and preset:
        label = f"sg:{preset[:12]}"
        if config:
            if not Path(config).is_file():
                raise ValueError(f"arm {name!r}: no configuration file {config!r}")
            label = f"sg:{preset[:6]}@{Path(config).stem[:6]}"
        return Arm(name, SLOGATE, preset, label, config or None)
    raise ValueError(
        f"unknown arm {name!r}; choose from {', '.join(a.name for a in ARMS)}, "
        "slogate:PRESET or slogate:PRESET@CONFIG_FILE"
    )


def find_vllm_router() -> Path | None:
    """The ``vllm-router`` executable beside this interpreter, else on ``PATH``."""
    beside = Path(sys.executable).parent / VLLM_ROUTER
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(VLLM_ROUTER)
    return None if found is None else Path(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def router_command(
    arm: Arm,
    pods: Sequence[Pod],
    port: int,
    vllm_router: Path | None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line that starts ``arm`` in front of ``pods`` on ``port`` (``extra_args``:
    more flags, slogate's only)."""
    if arm.kind == SLOGATE:
        endpoints = [flag for p in pods for flag in ("--endpoint", f"{p.name}={p.url}")]
        return [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--preset",
            arm.setting,
            "--log-level",
            "warning",
            *endpoints,
            *(("--config", arm.config) if arm.config else ()),
            *extra_args,
        ]
    if vllm_router is None:
        raise RuntimeError(f"vllm-router is not installed: {VLLM_ROUTER_INSTALL}")
    return [
        str(vllm_router),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *(p.url for p in pods),
        "--policy",
        arm.setting,
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(free_port()),
        "--worker-startup-check-interval",
        "1",
        "--worker-startup-timeout-secs",
        "30",
        "--log-level",
        "warning",
    ]


def router_env(arm: Arm) -> dict[str, str]:
    """The environment ``arm``'s process runs with."""
    env = dict(os.environ)
    if arm.kind == VLLM_ROUTER:
        env["RUST_LOG"] = "warn"
    return env


@dataclass(frozen=True, slots=True)
class RunningRouter:
    arm: Arm
    url: str
    pid: int
    ready_after_s: float
    """From the process start until it was ready."""


async def _is_ready(
    session: aiohttp.ClientSession, arm: Arm, url: str, pods: Sequence[Pod]
) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        if arm.kind == SLOGATE:
            async with session.get(f"{url}/ready", timeout=timeout) as resp:
                if resp.status != 200:
                    return False
                ready = await resp.json()
            if not {p.name for p in pods} <= set(ready["endpoints"]):
                return False
            # Newer gateways say per endpoint whether its metrics are known: wait for all up.
            detail = ready.get("detail", {})
            if any(detail.get(p.name, {}).get("state", "up") != "up" for p in pods):
                return False
            async with session.get(f"{url}/v1/models", timeout=timeout) as resp:
                models = {m["id"] for m in (await resp.json())["data"]}
            return MODEL in models
        async with session.get(f"{url}/readiness", timeout=timeout) as resp:
            if resp.status != 200:
                return False
            body = await resp.json()
        return int(body.get("healthy_workers", 0)) >= len(pods)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def running_router(
    arm: Arm,
    pods: Sequence[Pod],
    *,
    log_path: Path,
    vllm_router: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[RunningRouter]:
    """``arm``'s router in its own process in front of ``pods``, once it is ready; stopped
    (SIGTERM, then SIGKILL) at the end of the block. Its output goes to ``log_path``.
    ``port``: where it listens (default: a free one); ``extra_args``: more slogate flags."""
    port = free_port() if port is None else port
    command = router_command(arm, pods, port, vllm_router, extra_args)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=router_env(arm)
        )
    try:
        async with aiohttp.ClientSession() as session:
            while not await _is_ready(session, arm, url, pods):
                if proc.returncode is not None:
                    raise RuntimeError(
                        f"{arm.name} exited with {proc.returncode} before it was ready:\n"
                        f"{_tail(log_path)}"
                    )
                if time.monotonic() - started > ready_timeout_s:
                    raise RuntimeError(
                        f"{arm.name} was not ready within {ready_timeout_s:g} s:\n{_tail(log_path)}"
                    )
                await asyncio.sleep(0.1)
        yield RunningRouter(
            arm=arm, url=url, pid=proc.pid, ready_after_s=time.monotonic() - started
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


PREDICTOR_SAMPLES = {
    "slogate_predictor_decisions_total": "decisions",
    "slogate_predictor_model_version": "model_version",
    "slogate_predictor_training_runs_total": "training_runs",
}


async def slogate_predictor_state(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """From slogate's ``/metrics``: decisions by prediction and by the fallback, the model
    version, training runs by result (keys like ``decisions_predicted``)."""
    async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = PREDICTOR_SAMPLES.get(sample.name)
            if name is not None:
                label = sample.labels.get("mode") or sample.labels.get("result")
                out[f"{name}_{label}" if label else name] = sample.value
    return out
