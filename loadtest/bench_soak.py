"""Benchmark: reliability under faults and load (issue 11's proof).

The two runs whose figures go in docs/benchmarks.md, 5 minutes each after a 30 s warm-up
(about 10 minutes of wall time each with the calibration and the idle wait; one at a time):

    .venv/bin/python -m loadtest.bench_soak
    .venv/bin/python -m loadtest.bench_soak --reload-every-s 20 --out results/bench_soak_sighup.json

A short run (the test's is shorter still):

    .venv/bin/python -m loadtest.bench_soak --duration-s 30 --concurrency 100 --kill-every-s 10

What runs, each in its own process on this machine:

- ``--pods`` simulated vLLM pods (``python -m loadtest.sim``, one process each, so that one can
  be SIGKILLed and started again on its port). Sized so 1,000 streams do not make the sims the
  bottleneck on two cores: ``--time-scale 0.25`` (simulated time runs at a quarter of real
  time: with 250 streams a pod's decode step of ~40 ms takes ~160 ms of wall time, so the
  fleet produces ~4k tokens/s instead of ~16k), short requests (32 prompt tokens as ids, 32
  output tokens on average, ``ignore_eos``), ``--max-num-seqs 512`` so three pods hold all
  1,000 streams while the fourth is down (nothing waits in a pod's queue), 8,192 KV blocks.
  Measured in the 5-minute runs (1,000 streams, ~130 requests/s, ~4k tokens/s): the four sims
  together used 27 % of one core, the gateway 38-39 %, the client 14-15 %, so the machine was
  not saturated and the sims were not the bottleneck; each run reports its own shares
  (``cpu_percent_of_one_core``).
- the gateway, ``python -m gateway.cli serve --config FILE --endpoint podN=URL... --preset P``
  on a free port; the config file sets only ``upstream.read_idle_timeout_s``
  (``--read-idle-timeout-s``, default 5 s: 20 times a normal gap between tokens, and above
  the worst TTFT seen in trials on a busy machine, 3.3 s; the stall is longer).
- the client (:mod:`loadtest.soak_drive`): ``--concurrency`` virtual users in a closed loop,
  each sending a streamed completion, reading it to the end and sending the next, for
  ``--warmup-s`` + ``--duration-s``. Every request is classified completed, explicit error,
  lost or hung (:mod:`loadtest.soak_classify`); hung means no byte for twice the gateway's
  read-idle timeout.

The faults (:mod:`loadtest.soak_faults`) start after the warm-up: every ``--kill-every-s`` the
next pod gets SIGKILL and comes back ``--down-s`` later; from ``--stall-at-s`` (default half
the kill period) every ``--stall-every-s`` another pod is slowed to ``--stall-speed`` (0.001)
for ``--stall-s``, long enough for the gateway's read-idle timeout to end its streams; with
``--reload-every-s`` the gateway gets SIGHUP, each time after its config file was rewritten
with another preset (the soak's and ``least-request`` in turn), so every reload swaps the
scheduler under load (``config_reloads_by_result`` in the report counts them). Whether the
gateway survives SIGHUP is first tried on a throwaway gateway: if it does not, the run says
"SIGHUP not supported" and sends none (the rest of the run goes on); if the real one dies of a
later SIGHUP, the run stops there and says so.

What is reported (printed, and JSON to ``--out`` via :mod:`loadtest.report`):

- every request's class, with reasons, per pod and per 10 s; the claims "zero lost" and "zero
  hung" checked;
- the gateway's RSS and open file descriptors (``/proc``), sampled every ``--sample-every-s``:
  before the load, at the warm-up's end (start), at the window's end (end), max, slope, and
  ``--idle-s`` (125 s) after the drain, when the gateway has closed its idle upstream
  connections; FDs split into client connections, upstream connections and the rest (from
  ``/proc/<pid>/net/tcp``); each role's CPU share;
- added latency, two ways: **gateway-side**, p50/p99 of the gateway's own
  ``slogate_request_dispatch_duration_seconds`` (receipt to dispatch: parse, tokenize,
  schedule) over the fault window, from its ``/metrics`` (bucket-interpolated); **client-side**,
  a calibration before the faults: the same closed loop at ``--calibration-concurrency``
  (50) sent straight to pod0 and through a second gateway whose only endpoint is pod0,
  alternated ``--calibration-rounds`` times (after ``--calibration-warmup-rounds``, 1, not
  counted) for
  ``--calibration-s`` each: TTFT and e2e p50/p99, gateway minus direct (this one includes
  relaying every token and the extra hop, but cannot resolve less than the sim's step noise,
  tens of ms here: ``loadtest.bench_overhead`` measures sub-ms overhead);
- the gateway's counters over the window (upstream errors, retries, ejections, answers by
  status), its log lines by level and event, the fault log.

Modules: this one wires the run; :mod:`loadtest.soak_run` (settings, the client process, the
SIGHUP probe, the calibration), :mod:`loadtest.soak_procs` (processes, ``/proc`` sampling),
:mod:`loadtest.soak_faults`, :mod:`loadtest.soak_drive` with :mod:`loadtest.soak_classify`,
:mod:`loadtest.soak_report` (the math) and :mod:`loadtest.soak_table` (the printed summary).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from gateway.cli import new_event_loop
from loadtest.report import write_report
from loadtest.soak_faults import FaultRunner, fault_plan
from loadtest.soak_procs import (
    GatewayProcess,
    ResourceSampler,
    SimPod,
    SimSettings,
    describe_exit,
    fd_kinds,
    gateway_config_yaml,
    proc_sample,
)
from loadtest.soak_report import (
    counters_by,
    delta,
    dispatch_summary,
    latency_summary,
    log_summary,
    resource_summary,
)
from loadtest.soak_run import (
    LEAD_S,
    SoakSettings,
    calibrate,
    gateway_metrics,
    sighup_probe,
    start_driver,
)
from loadtest.soak_table import table_lines

BENCHMARK = "bench_soak"
RELOAD_PRESET = "least-request"
"""What each even-numbered reload switches the preset to (odd ones switch it back)."""


async def run_soak(
    settings: SoakSettings, log_dir: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The whole benchmark; the report's fields (module docstring)."""
    config_path = log_dir / "gateway.yaml"
    config_path.write_text(gateway_config_yaml(settings.read_idle_timeout_s, settings.preset))
    pods = [SimPod(i, settings.sims, log_dir) for i in range(settings.pods)]
    report: dict[str, Any] = {
        "settings": _settings_json(settings),
        "fault_plan": [asdict(f) for f in fault_plan(settings.schedule())],
    }
    async with aiohttp.ClientSession() as session:
        try:
            took = await asyncio.gather(*(p.start_ready(session) for p in pods))
            progress(f"{len(pods)} sims serving after {max(took):.1f} s")
            endpoints = {p.name: p.url for p in pods}
            sighup: dict[str, Any] = {"requested": settings.reload_every_s > 0}
            if settings.reload_every_s > 0:
                probe = GatewayProcess(
                    "sighup-probe-gateway", endpoints, config_path=config_path, log_dir=log_dir
                )
                sighup |= await sighup_probe(session, probe)
                progress(f"SIGHUP probe: {sighup['detail']}")
            report["sighup"] = sighup
            if settings.calibration_rounds > 0:
                report["calibration"] = await calibrate(
                    settings, session, pods[0], config_path, log_dir, progress
                )
            gateway = GatewayProcess("gateway", endpoints, config_path=config_path, log_dir=log_dir)
            report["gateway_command"] = " ".join(gateway.command[1:])
            await gateway.start_ready(session)
            try:
                report |= await _soak(settings, session, pods, gateway, sighup, log_dir, progress)
            finally:
                await gateway.stop()
                report["gateway_exit"] = describe_exit(gateway.returncode)
                report["gateway_log"] = log_summary(gateway.log_path.read_text(errors="replace"))
        finally:
            await asyncio.gather(*(p.stop() for p in pods))
    return report


def alternate_preset(settings: SoakSettings, config_path: Path, k: int) -> str:
    """Each reload changes something live: the preset, in turn the other one and back."""
    other = RELOAD_PRESET if settings.preset != RELOAD_PRESET else "load-prefix"
    preset = other if k % 2 == 0 else settings.preset
    config_path.write_text(gateway_config_yaml(settings.read_idle_timeout_s, preset))
    return f"(preset {preset})"


async def _soak(
    settings: SoakSettings,
    session: aiohttp.ClientSession,
    pods: Sequence[SimPod],
    gateway: GatewayProcess,
    sighup: dict[str, Any],
    log_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    assert gateway.pid is not None
    kinds = functools.partial(fd_kinds, listen_port=gateway.port, peer_ports={p.port for p in pods})
    baseline, fds_before = proc_sample(gateway.pid), kinds(gateway.pid)
    start_at = time.monotonic() + LEAD_S
    window_at = start_at + settings.warmup_s
    window_end_s = settings.warmup_s + settings.duration_s
    drive = settings.drive(
        gateway.url,
        concurrency=settings.concurrency,
        duration_s=window_end_s,
        start_at=start_at,
    )
    driven = await start_driver(drive, "driver", log_dir)
    sampler = ResourceSampler(
        start_at=start_at,
        interval_s=settings.sample_every_s,
        roles={"gateway": [gateway], "driver": [driven.proc], "sims": pods},
        fd_kinds=kinds,
    )
    stopped: list[str] = []

    def gateway_gone(detail: str) -> None:
        """The run cannot go on: the client stops sending (and drains)."""
        if not stopped:
            stopped.append(detail)
            progress(f"stopping early: {detail}")
            driven.proc.send_signal(signal.SIGTERM)

    def gateway_exited(task: asyncio.Task[int]) -> None:
        if not task.cancelled():
            gateway_gone(f"the gateway {describe_exit(gateway.returncode)}")

    runner = FaultRunner(
        session=session,
        pods=pods,
        gateway=gateway,
        schedule=settings.schedule(),
        stall_speed=settings.stall_speed,
        run_start_at=start_at,
        window_at=window_at,
        reloads=bool(sighup.get("supported", True)),
        on_gateway_exit=gateway_gone,
        before_reload=functools.partial(alternate_preset, settings, log_dir / "gateway.yaml"),
    )
    assert gateway.proc is not None
    watcher = asyncio.create_task(gateway.proc.wait())
    watcher.add_done_callback(gateway_exited)
    sampling = asyncio.create_task(sampler.run())
    progress(
        f"driving {settings.concurrency} streams: warm-up {settings.warmup_s:g} s, then "
        f"{settings.duration_s:g} s with {len(fault_plan(settings.schedule()))} faults"
    )
    try:
        await asyncio.sleep(max(0.0, window_at - time.monotonic()))
        metrics_start = await gateway_metrics(session, gateway)
        progress("warm-up over: faults start")
        faults = asyncio.create_task(runner.run())
        client_done = asyncio.ensure_future(driven.proc.wait())
        await asyncio.wait([faults, client_done], return_when=asyncio.FIRST_COMPLETED)
        if not faults.done():
            faults.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await faults
        if not stopped:
            await asyncio.sleep(max(0.0, start_at + window_end_s - time.monotonic()))
            progress("window over: draining")
        tally = await driven.result()
        metrics_end = await gateway_metrics(session, gateway)
        progress(f"drained: idle for {settings.idle_s:g} s")
        await asyncio.sleep(settings.idle_s)
        after_idle, fds_after_idle = proc_sample(gateway.pid), kinds(gateway.pid)
    finally:
        sampling.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(sampling, watcher)
    window = delta(metrics_start, metrics_end)
    counts = tally["counts"]
    if settings.reload_every_s > 0:
        sighup |= {
            "sent": sum(e.kind == "reload" for e in runner.events),
            "survived": runner.reloads_survived,
        }
    return {
        "sighup": sighup,
        "stopped_early": stopped[0] if stopped else None,
        "counts": counts | {"total": sum(counts.values())},
        "claims": {"zero_lost": counts["lost"] == 0, "zero_hung": counts["hung"] == 0},
        "reasons": tally["reasons"],
        "short": tally["short"],
        "no_openai_body": tally["no_openai_body"],
        "by_endpoint": tally["by_endpoint"],
        "by_bucket_10s": tally["by_bucket"],
        "examples": tally["examples"],
        "client_ended_s": tally["ended_s"],
        "latency": {
            "warmup": latency_summary(tally["completed"], from_s=0, to_s=settings.warmup_s),
            "window": latency_summary(
                tally["completed"], from_s=settings.warmup_s, to_s=window_end_s
            ),
        },
        "dispatch": {
            "window": dispatch_summary(window),
            "whole_run": dispatch_summary(metrics_end),
        },
        "resources": resource_summary(
            sampler.samples,
            window_start_s=settings.warmup_s,
            window_end_s=window_end_s,
            baseline=baseline,
            after_idle=after_idle,
            fds_before=fds_before,
            fds_after_idle=fds_after_idle,
        ),
        "gateway_counters": {
            "upstream_errors_by_reason": counters_by(
                window, "slogate_upstream_errors_total", "reason"
            ),
            "upstream_errors_by_endpoint": counters_by(
                window, "slogate_upstream_errors_total", "endpoint"
            ),
            "retries_by_reason": counters_by(window, "slogate_upstream_retries_total", "reason"),
            "retries_denied_by_reason": counters_by(
                window, "slogate_upstream_retries_denied_total", "reason"
            ),
            "ejections_by_endpoint": counters_by(
                window, "slogate_endpoint_ejections_total", "endpoint"
            ),
            "answers_by_code": counters_by(window, "slogate_http_requests_total", "code"),
            "config_reloads_by_result": counters_by(
                window, "slogate_config_reloads_total", "result"
            ),
            "background_task_errors_by_task": counters_by(
                window, "slogate_background_task_errors_total", "task"
            ),
            "request_errors_by_code": counters_by(
                window, "inference_objective_request_error_total", "error_code"
            ),
        },
        "events": [e.to_json() for e in runner.events],
        "fault_failures": runner.failures,
        "restart_s": [round(t, 2) for t in runner.restart_s],
    }


def _settings_json(settings: SoakSettings) -> dict[str, Any]:
    out = asdict(settings)
    out["hung_s"] = settings.hung_s
    return out


# -- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = SoakSettings()
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench_soak",
        description="Soak: streams through the gateway while pods are killed and stalled.",
    )
    a = p.add_argument
    a("--pods", type=int, default=d.pods, help="simulated pods, each its own process")
    a("--preset", default=d.preset, help="the gateway's scheduling preset")
    a("--concurrency", type=int, default=d.concurrency, help="closed-loop streams")
    a("--duration-s", type=float, default=d.duration_s, help="the fault window, after warm-up")
    a("--warmup-s", type=float, default=d.warmup_s, help="load without faults first")
    a(
        "--kill-every-s",
        type=float,
        default=d.kill_every_s,
        help="SIGKILL a pod this often; 0: never",
    )
    a("--down-s", type=float, default=d.down_s, help="a killed pod restarts this much later")
    a(
        "--stall-every-s",
        type=float,
        default=d.stall_every_s,
        help="stall a pod this often; 0: never",
    )
    a("--stall-at-s", type=float, default=None, help="first stall (default: half the kill period)")
    a("--stall-s", type=float, default=d.stall_s, help="how long a stall lasts")
    a("--stall-speed", type=float, default=d.stall_speed, help="a stalled pod's speed")
    a("--reload-every-s", type=float, default=d.reload_every_s, help="SIGHUP the gateway; 0: never")
    a("--read-idle-timeout-s", type=float, default=d.read_idle_timeout_s,
      help="the gateway's upstream.read_idle_timeout_s")  # fmt: skip
    a("--hung-factor", type=float, default=d.hung_factor,
      help="no byte for this many read-idle timeouts: hung")  # fmt: skip
    a("--drain-s", type=float, default=d.drain_s, help="after the window, for what still runs")
    a("--idle-s", type=float, default=d.idle_s,
      help="idle after the drain before the last RSS/FD sample")  # fmt: skip
    a("--ramp-s", type=float, default=d.ramp_s, help="the streams start spread over this")
    a("--sample-every-s", type=float, default=d.sample_every_s, help="RSS/FD sampling period")
    a("--time-scale", type=float, default=d.sims.time_scale, help="the sims' time scale")
    a("--max-num-seqs", type=int, default=d.sims.max_num_seqs, help="the sims' batch limit")
    a("--kv-blocks", type=int, default=d.sims.kv_blocks, help="the sims' KV cache")
    a("--prompt-tokens", type=int, default=d.prompt_tokens)
    a("--max-tokens", type=int, default=d.max_tokens)
    a("--calibration-concurrency", type=int, default=d.calibration_concurrency)
    a("--calibration-s", type=float, default=d.calibration_s, help="per arm and round")
    a("--calibration-rounds", type=int, default=d.calibration_rounds, help="0: no calibration")
    a("--calibration-warmup-rounds", type=int, default=d.calibration_warmup_rounds,
      help="rounds run first and not counted")  # fmt: skip
    a("--seed", type=int, default=d.seed)
    a("--log-dir", type=Path, help="keep every process's log here (default: a temporary dir)")
    a("--out", type=Path, default=Path("results/bench_soak.json"))
    return p


def settings_from_args(args: argparse.Namespace) -> SoakSettings:
    if args.pods < 2:
        raise SystemExit("bench_soak: --pods must be >= 2 (one is killed, another stalled)")
    return SoakSettings(
        pods=args.pods,
        preset=args.preset,
        concurrency=args.concurrency,
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        kill_every_s=args.kill_every_s,
        down_s=args.down_s,
        stall_every_s=args.stall_every_s,
        stall_at_s=args.stall_at_s,
        stall_s=args.stall_s,
        stall_speed=args.stall_speed,
        reload_every_s=args.reload_every_s,
        read_idle_timeout_s=args.read_idle_timeout_s,
        hung_factor=args.hung_factor,
        drain_s=args.drain_s,
        idle_s=args.idle_s,
        ramp_s=args.ramp_s,
        sample_every_s=args.sample_every_s,
        sims=SimSettings(
            time_scale=args.time_scale, max_num_seqs=args.max_num_seqs, kv_blocks=args.kv_blocks
        ),
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        calibration_concurrency=args.calibration_concurrency,
        calibration_s=args.calibration_s,
        calibration_rounds=args.calibration_rounds,
        calibration_warmup_rounds=args.calibration_warmup_rounds,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    loop = new_event_loop()
    try:
        with contextlib.ExitStack() as stack:
            log_dir = args.log_dir
            if log_dir is None:
                log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            log_dir.mkdir(parents=True, exist_ok=True)
            report = loop.run_until_complete(run_soak(settings, log_dir, progress))
    finally:
        loop.close()
    for line in table_lines(report):
        print(line)
    write_report(args.out, BENCHMARK, **report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
