"""Benchmark: latency objectives under rising load (issue 9), ``predicted-latency-slo`` against
``predicted-latency`` without objectives, ``load-prefix`` and vllm-router's policies.

    .venv/bin/python -m loadtest.bench_slo
    .venv/bin/python -m loadtest.bench_slo --engines vllm --loads 0.7,1.1 \\
        --arms slogate:predicted-latency-slo,slogate:load-prefix --duration-s 20

Setup, per engine (``vllm`` and ``slots``, as in the routing matrix: :mod:`loadtest.matrix`):

- the matrix's heterogeneous fleet (speeds 2, 2, 1, 0.5) of that engine, the matrix's sim
  settings, and its capacity: one speed-1 pod's measured throughput for the workload times the
  sum of the speeds (:mod:`loadtest.capacity`, the same cache entry as the matrix);
- a trace (``--workload``, default azure-conv), arrivals as in the matrix, each arrival given a
  traffic class (:mod:`loadtest.slo_mix`: interactive with objectives, batch without,
  sheddable background) whose headers it is sent with, to every arm alike;
- per load (a fraction of the capacity, ``--loads``) and arm (``--arms``): a fresh fleet, the
  router in its own process (:mod:`loadtest.routers`, the predictor cold), a warm-up at
  ``--warmup-load`` for ``--warmup-s`` so the predictor has trained (not measured), then the
  measured window of ``--duration-s`` at the load, then up to ``--drain-s`` for what still
  runs (then cut: an unfinished interactive request is a miss).

The default drain (60 s) lets an interactive request that meets its objectives finish even
when it left at the window's last instant with the longest output (1,024 tokens x 50 ms +
1 s = 52 s), so no request is counted a miss for the benchmark's sake; a run ends as soon as
every request has. Summary math: :mod:`loadtest.slo_report`. From slogate arms the gateway's own
counters (``/metrics``: shed and SLO requests, decisions by the predictor) are read when the
measured window starts and at the end, as a cross-check.

Starting a fleet (:func:`run_one`) is kept apart from driving a router URL
(:mod:`loadtest.slo_drive`) and from the report (:mod:`loadtest.slo_report`), so real pods can
take the sims' place.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.cli import new_event_loop
from loadtest.capacity import CapacitySpec, capacity
from loadtest.fleet import Phase, SimSpec, WorkloadSpec, sim_fleet
from loadtest.matrix import ENGINES, WORKLOADS, Cell, MatrixSettings, sim_spec, workload_spec
from loadtest.report import write_report
from loadtest.routers import (
    SLOGATE,
    VLLM_ROUTER_INSTALL,
    Arm,
    arm_named,
    find_vllm_router,
    running_router,
)
from loadtest.slo_drive import Driven, drive_router, gateway_view
from loadtest.slo_mix import (
    DEFAULT_MIX,
    TrafficClass,
    assign,
    format_mix,
    header_sets,
    parse_mix,
)
from loadtest.slo_report import (
    MEASURED,
    describe_targets,
    evaluate_targets,
    run_summary,
    table_lines,
)

FLEET = "hetero"
SLO_PRESET = "predicted-latency-slo"
LOAD_PREFIX = "load-prefix"
DEFAULT_ARMS = (
    "slogate:predicted-latency-slo",
    "slogate:predicted-latency",
    "slogate:load-prefix",
    "vllm-router:power_of_two",
    "vllm-router:cache_aware",
)
LABELS = {"predicted-latency-slo": "sg:pl-slo", "predicted-latency": "sg:pred-lat"}
RUN_OVERHEAD_S = 3.0
"""Starting the sims, the router and the driver, roughly (for the estimate printed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SloSettings:
    engines: tuple[str, ...] = tuple(ENGINES)
    workload: str = "azure-conv"
    loads: tuple[float, ...] = (0.5, 0.7, 0.9, 1.1, 1.3, 1.6)
    """Measured loads, as fractions of the fleet's capacity."""
    duration_s: float = 30.0
    warmup_s: float = 20.0
    warmup_load: float = 0.5
    drain_s: float = 60.0
    mix: tuple[TrafficClass, ...] = DEFAULT_MIX
    seed: int = 5
    start_row: int = 0
    time_scale: float = 1.0
    """Sims run this many times faster (tests only: the objectives are not scaled)."""
    lead_s: float = 1.5
    capacity_rps_per_speed: float | None = None
    """Given instead of measured (tests; pods whose capacity is known)."""
    recalibrate: bool = False
    calibration_warmup_s: float = 10.0
    calibration_measure_s: float = 30.0

    def matrix_settings(self) -> MatrixSettings:
        """The routing matrix's settings these correspond to (fleet, capacity, trace rows)."""
        return MatrixSettings(
            seed=self.seed,
            start_row=self.start_row,
            time_scale=self.time_scale,
            calibration_warmup_s=self.calibration_warmup_s,
            calibration_measure_s=self.calibration_measure_s,
            recalibrate=self.recalibrate,
        )


def matrix_cell(engine: str, settings: SloSettings) -> Cell:
    return Cell(engine, FLEET, settings.workload, "steady")


def fleet_sims(engine: str, settings: SloSettings) -> SimSpec:
    """Exactly the matrix's heterogeneous fleet of ``engine``."""
    return sim_spec(matrix_cell(engine, settings), settings.matrix_settings())


def capacity_spec(engine: str, settings: SloSettings) -> CapacitySpec:
    """The matrix's calibration for this engine and workload (so its cache entry is reused)."""
    cell = matrix_cell(engine, settings)
    matrix = settings.matrix_settings()
    return CapacitySpec(
        sims=sim_spec(cell, matrix),
        workload=workload_spec(cell, matrix, 1.0),
        warmup_s=matrix.calibration_warmup_s,
        measure_s=matrix.calibration_measure_s,
    )


def workload_at(settings: SloSettings, fleet_capacity_rps: float, load: float) -> WorkloadSpec:
    """The warm-up, then the measured window at ``load`` x the fleet's capacity."""
    setup = WORKLOADS[settings.workload]
    phases = [Phase(MEASURED, settings.duration_s, round(load * fleet_capacity_rps, 2))]
    if settings.warmup_s > 0:
        rate = round(settings.warmup_load * fleet_capacity_rps, 2)
        phases.insert(0, Phase("warmup", settings.warmup_s, rate))
    return WorkloadSpec(
        trace=setup.trace,
        seed=settings.seed,
        start_row=settings.start_row,
        length_scale=setup.length_scale,
        phases=tuple(phases),
    )


def slo_arm(name: str) -> Arm:
    """An arm of :func:`loadtest.routers.arm_named`, slogate's named ``slogate:PRESET``."""
    arm = arm_named(name)
    if arm.kind != SLOGATE:
        return arm
    return Arm(f"slogate:{arm.setting}", SLOGATE, arm.setting, LABELS.get(arm.setting, arm.label))


# -- runs on sim fleets --------------------------------------------------------------------------
@dataclass(slots=True)
class SloRun:
    """One arm at one load."""

    arm: Arm
    load: float
    rate_rps: float
    classes: list[TrafficClass] = field(default_factory=list)
    """The class of each arrival, by index."""
    driven: Driven | None = None
    ready_after_s: float = 0.0
    wall_s: float = 0.0
    skipped: str | None = None


@dataclass(slots=True)
class EngineRun:
    engine: str
    sims: SimSpec
    rps_per_speed: float = math.nan
    capacity: dict[str, Any] = field(default_factory=dict)
    """How the capacity was had: measured (from cache or not) or given."""
    runs: list[SloRun] = field(default_factory=list)
    skipped: str | None = None

    @property
    def fleet_capacity_rps(self) -> float:
        return self.rps_per_speed * sum(self.sims.speeds)


async def run_one(
    arm: Arm,
    load: float,
    sims: SimSpec,
    spec: WorkloadSpec,
    settings: SloSettings,
    *,
    log_path: Path,
    vllm_router: Path | None,
) -> SloRun:
    """A fresh fleet, ``arm``'s router in front of it, and the workload driven through it."""
    started = time.monotonic()
    classes = assign(settings.mix, settings.seed, len(spec.arrivals()))
    out = SloRun(arm=arm, load=load, rate_rps=spec.phases[-1].rate_rps, classes=classes)
    async with (
        sim_fleet(sims) as pods,
        running_router(arm, pods, log_path=log_path, vllm_router=vllm_router) as router,
    ):
        out.ready_after_s = router.ready_after_s
        start_at = time.monotonic() + settings.lead_s
        out.driven = await drive_router(
            router.url,
            spec,
            header_sets(classes),
            start_at=start_at,
            drain_s=settings.drain_s,
            window_at=start_at + spec.duration_s - settings.duration_s,
            read_gateway=arm.kind == SLOGATE,
        )
    out.wall_s = time.monotonic() - started
    return out


async def run_engine(
    engine: str,
    arms: Sequence[Arm],
    settings: SloSettings,
    *,
    log_dir: Path,
    progress: Callable[[str], None],
) -> EngineRun:
    sims = fleet_sims(engine, settings)
    out = EngineRun(engine=engine, sims=sims)
    try:
        sims.sim_config_fields()
    except ValueError as exc:
        out.skipped = f"engine {engine}: {exc}"
        return out
    if settings.capacity_rps_per_speed is not None:
        out.rps_per_speed = settings.capacity_rps_per_speed
        out.capacity = {"given_rps_per_speed": settings.capacity_rps_per_speed}
    else:
        progress(f"{engine}: capacity (cached, else measured: about a minute) ...")
        cap = await capacity(capacity_spec(engine, settings), fresh=settings.recalibrate)
        out.rps_per_speed = cap.rps_per_speed
        out.capacity = asdict(cap)
    vllm_router = find_vllm_router()
    for load in settings.loads:
        spec = workload_at(settings, out.fleet_capacity_rps, load)
        for arm in arms:
            if arm.is_peer and vllm_router is None:
                out.runs.append(
                    SloRun(arm, load, spec.phases[-1].rate_rps, skipped="vllm-router not installed")
                )
                continue
            progress(f"{engine} load {load:g} ({spec.phases[-1].rate_rps:g} req/s): {arm.name} ...")
            log_path = log_dir / f"{engine}_load{load:g}_{arm.name.replace(':', '_')}.log"
            try:
                run = await run_one(
                    arm, load, sims, spec, settings, log_path=log_path, vllm_router=vllm_router
                )
            except (RuntimeError, OSError, aiohttp.ClientError) as exc:
                run = SloRun(arm, load, spec.phases[-1].rate_rps, skipped=f"failed: {exc}")
            out.runs.append(run)
            if run.driven is not None:
                s = summarize(run, settings)
                progress(
                    f"  attainment {s['attainment']:.1%}, goodput {s['goodput_rps']:.2f} req/s, "
                    f"shed {s['shed_rate']:.1%}, cut {s['cut']}, errors {s['errors']} "
                    f"({run.wall_s:.0f} s)"
                )
    return out


async def run_benchmark(
    settings: SloSettings,
    arms: Sequence[Arm],
    *,
    log_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> list[EngineRun]:
    """Every engine, load and arm; router logs go to ``log_dir`` (a temporary one by default)."""
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log_dir.mkdir(parents=True, exist_ok=True)
        return [
            await run_engine(engine, arms, settings, log_dir=log_dir, progress=progress)
            for engine in settings.engines
        ]


# -- the report ----------------------------------------------------------------------------------
def summarize(run: SloRun, settings: SloSettings) -> dict[str, Any]:
    assert run.driven is not None
    out = run_summary(run.driven.records, settings.mix, run.classes, settings.duration_s)
    if run.arm.kind == SLOGATE:
        out["gateway"] = gateway_view(run.driven)
    return out


def engine_report(run: EngineRun, settings: SloSettings) -> dict[str, Any]:
    """Per-run summaries, the table's numbers and the targets of one engine."""
    report: dict[str, Any] = {
        "engine": run.engine,
        "fleet": run.sims.describe(),
        "capacity": run.capacity,
        "fleet_capacity_rps": run.fleet_capacity_rps,
        "skipped": run.skipped,
        "runs": [],
    }
    if run.skipped is not None:
        return report
    report["workload"] = workload_at(settings, run.fleet_capacity_rps, settings.loads[0]).describe()
    results: dict[str, dict[float, dict[str, Any]]] = {}
    arms: dict[str, Arm] = {}
    for r in run.runs:
        arms[r.arm.name] = r.arm
        entry: dict[str, Any] = {"arm": r.arm.name, "load": r.load, "rate_rps": r.rate_rps}
        if r.skipped is not None or r.driven is None:
            entry["skipped"] = r.skipped
        else:
            summary = summarize(r, settings)
            results.setdefault(r.arm.name, {})[r.load] = summary
            entry |= {"summary": summary, "ready_after_s": r.ready_after_s, "wall_s": r.wall_s}
        report["runs"].append(entry)
    report["rates_rps"] = {str(r.load): r.rate_rps for r in run.runs}
    report["table"] = {
        arm: {
            str(load): {k: s[k] for k in ("attainment", "goodput_rps", "shed_rate")}
            for load, s in by_load.items()
        }
        for arm, by_load in results.items()
    }
    slo = next((a.name for a in arms.values() if _is_slogate(a, SLO_PRESET)), SLO_PRESET)
    load_prefix = next((a.name for a in arms.values() if _is_slogate(a, LOAD_PREFIX)), None)
    baselines = [a.name for a in arms.values() if a.is_peer or _is_slogate(a, LOAD_PREFIX)]
    report["targets"] = evaluate_targets(
        results, slo_arm=slo, load_prefix_arm=load_prefix, baselines=baselines
    )
    report["_results"] = results  # for printing; dropped before writing
    report["_labels"] = {name: a.label for name, a in arms.items()}
    return report


def _is_slogate(arm: Arm, preset: str) -> bool:
    return arm.kind == SLOGATE and arm.setting == preset


def print_engine(report: Mapping[str, Any]) -> None:
    print(f"\n== {report['engine']}: {report['fleet']}")
    if report["skipped"]:
        print(f"   skipped: {report['skipped']}")
        return
    print(
        f"   capacity {report['fleet_capacity_rps']:.2f} req/s "
        f"({'given' if 'given_rps_per_speed' in report['capacity'] else 'measured'})"
    )
    print(f"   workload: {report['workload']}")
    print("   interactive requests: SLO attainment of admitted %, goodput req/s, shed % (all)")
    rates = {r["load"]: r["rate_rps"] for r in report["runs"]}
    for line in table_lines(report["_results"], report["_labels"], rates):
        print(f"   {line}")
    for r in report["runs"]:
        if "skipped" in r:
            print(f"   {r['arm']} at {r['load']:g}: skipped ({r['skipped']})")
    for line in describe_targets(report["targets"]):
        print(f"   {line}")


# -- the command ---------------------------------------------------------------------------------
def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part)


def _names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = SloSettings()
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench_slo",
        description="SLO attainment, goodput and shedding under rising load (issue 9).",
    )
    p.add_argument("--engines", default=",".join(defaults.engines), help="vllm, slots")
    p.add_argument("--workload", default=defaults.workload, choices=tuple(WORKLOADS))
    p.add_argument(
        "--loads",
        default=",".join(f"{x:g}" for x in defaults.loads),
        help="measured loads, fractions of the fleet's capacity",
    )
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS))
    p.add_argument("--duration-s", type=float, default=defaults.duration_s, help="measured")
    p.add_argument("--warmup-s", type=float, default=defaults.warmup_s)
    p.add_argument("--warmup-load", type=float, default=defaults.warmup_load)
    p.add_argument(
        "--drain-s", type=float, default=defaults.drain_s, help="then cut what still runs"
    )
    p.add_argument(
        "--mix",
        default=format_mix(defaults.mix),
        help="classes: NAME=SHARE[:OBJECTIVE][:ttft=MS][:tpot=MS],...",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--start-row", type=int, default=defaults.start_row)
    p.add_argument("--recalibrate", action="store_true", help="measure capacities again")
    p.add_argument(
        "--capacity-rps-per-speed",
        type=float,
        help="use this capacity (req/s per unit of speed) instead of the calibration",
    )
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="sims run X times faster (tests only)"
    )
    p.add_argument("--log-dir", type=Path, help="keep each router's log here")
    p.add_argument("--out", type=Path, default=Path("results/bench_slo.json"))
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> SloSettings:
    engines = tuple(_names(args.engines))
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise ValueError(f"unknown engine {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    loads = tuple(sorted(set(_floats(args.loads))))
    if not loads or any(not (x > 0 and math.isfinite(x)) for x in loads):
        raise ValueError(f"--loads must be positive numbers (got {args.loads!r})")
    return SloSettings(
        engines=engines,
        workload=args.workload,
        loads=loads,
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        warmup_load=args.warmup_load,
        drain_s=args.drain_s,
        mix=parse_mix(args.mix),
        seed=args.seed,
        start_row=args.start_row,
        time_scale=args.time_scale,
        capacity_rps_per_speed=args.capacity_rps_per_speed,
        recalibrate=args.recalibrate,
    )


def estimate_min(settings: SloSettings, arms: int) -> tuple[float, float]:
    """Rough wall time in minutes: every run drained at once, and every run drained fully."""
    per_run = RUN_OVERHEAD_S + settings.lead_s + settings.warmup_s + settings.duration_s
    runs = len(settings.engines) * len(settings.loads) * arms
    return runs * per_run / 60, runs * (per_run + settings.drain_s) / 60


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        arms = list(dict.fromkeys(slo_arm(name) for name in _names(args.arms)))
    except ValueError as exc:
        print(f"bench_slo: {exc}", file=sys.stderr)
        return 2
    if any(a.is_peer for a in arms) and find_vllm_router() is None:
        print(
            f"vllm-router is not installed; its arms are skipped. To include them: "
            f"{VLLM_ROUTER_INSTALL}",
            file=sys.stderr,
        )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    low, high = estimate_min(settings, len(arms))
    progress(
        f"{len(settings.engines)} engines x {len(settings.loads)} loads x {len(arms)} arms; "
        f"about {low:.0f}-{high:.0f} min (plus any capacity calibration)"
    )
    started = time.monotonic()
    loop = new_event_loop()
    try:
        runs = loop.run_until_complete(
            run_benchmark(settings, arms, log_dir=args.log_dir, progress=progress)
        )
    finally:
        loop.close()
    reports = [engine_report(run, settings) for run in runs]
    print(f"mix: {'; '.join(c.describe() for c in settings.mix)}")
    for report in reports:
        print_engine(report)
    wall_min = (time.monotonic() - started) / 60
    print(
        f"\n{len(settings.engines)} engines x {len(settings.loads)} loads x {len(arms)} arms in "
        f"{wall_min:.1f} min; per run {settings.warmup_s:g} s warm-up at "
        f"{settings.warmup_load:g}, {settings.duration_s:g} s measured, drain up to "
        f"{settings.drain_s:g} s"
    )
    write_report(
        args.out,
        "bench_slo",
        args=vars(args) | {"out": str(args.out), "log_dir": str(args.log_dir)},
        settings=asdict(settings),
        mix=[asdict(c) for c in settings.mix],
        arms={a.name: {"kind": a.kind, "setting": a.setting, "label": a.label} for a in arms},
        wall_min=wall_min,
        engines=[{k: v for k, v in r.items() if not k.startswith("_")} for r in reports],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
