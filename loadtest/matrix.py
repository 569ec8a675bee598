"""The routing matrix: slogate's presets against vllm-router's policies, cell by cell.

A cell is (engine, fleet, workload, scenario). In each cell every arm (:mod:`loadtest.routers`)
gets the same treatment, one arm after the other:

1. a fresh fleet (``loadtest.fleet``: freshly started sims, empty caches and queues);
2. its router in its own process, waited for until ready (the predictor starts cold);
3. the same workload (same trace rows, arrival times, prompts, seeds), replayed open loop by
   the driver process; requests still running ``drain_s`` after the workload's end are cut
   (counted, their latencies kept as lower bounds);
4. meanwhile every pod's counters are sampled each second (``GET /sim/stats``), and in the
   ``slowdown`` scenario the fastest pod is slowed ``slowdown_factor`` times at
   ``slowdown_at`` of the run (``POST /sim/speed``).

Load: two phases of equal length at ``utilisation`` (0.7, then 0.9) of the fleet's capacity,
the measured capacity of one speed-1 pod for this (engine, workload) (:mod:`loadtest.capacity`)
times the sum of the fleet's speeds. In the slowdown scenario it is the capacity the fleet has
*after* the slowdown (a fleet driven at 90 % that loses a quarter of its capacity is overloaded,
and every router drowns alike); before the slowdown the load is lighter, and
:func:`describe_load` says how much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.capacity import Capacity, CapacitySpec, capacity
from loadtest.fleet import ClientRecord, Phase, Pod, SimSpec, WorkloadSpec, run_driver, sim_fleet
from loadtest.routers import (
    SLOGATE,
    Arm,
    arm_named,
    find_vllm_router,
    running_router,
    slogate_predictor_state,
)
from loadtest.simctl import (
    CounterSample,
    CounterSampler,
    PodCounters,
    counters_from_stats,
    has_speed_control,
    pod_stats,
    sampling,
    set_speed,
)


@dataclass(frozen=True, slots=True)
class EngineSetup:
    max_num_seqs: int
    kv_blocks: int = 4096
    params: tuple[tuple[str, float], ...] = ()
    """Engine-specific ``SimConfig`` fields."""


@dataclass(frozen=True, slots=True)
class WorkloadSetup:
    trace: str
    length_scale: float = 1.0


ENGINES: dict[str, EngineSetup] = {
    # vLLM's own default batch limit; 4,096 blocks of 16 tokens = 65k tokens of KV cache.
    "vllm": EngineSetup(max_num_seqs=256),
    # The llm-d simulator's slots, as few as in the user's report; inter-token and prefill
    # times 3x at a full batch (the middle of the llm-d simulator's suggested 2.5-3.5).
    "slots": EngineSetup(max_num_seqs=8, params=(("time_factor_under_load", 3.0),)),
}
FLEETS: dict[str, tuple[float, ...]] = {
    "homo": (1.0, 1.0, 1.0, 1.0),
    # two fast, one medium, one slow
    "hetero": (2.0, 2.0, 1.0, 0.5),
}
WORKLOADS: dict[str, WorkloadSetup] = {
    "azure-conv": WorkloadSetup("azure-conv"),
    "azure-code": WorkloadSetup("azure-code"),
    # Mooncake prompts are long (median ~11.6k tokens): lengths and prefix blocks x 0.125.
    "mooncake": WorkloadSetup("mooncake", length_scale=0.125),
}
SCENARIOS = ("steady", "slowdown")


@dataclass(frozen=True, slots=True)
class Cell:
    engine: str
    fleet: str
    workload: str
    scenario: str

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.fleet}/{self.workload}/{self.scenario}"


def matrix_cells(
    engines: Sequence[str] = tuple(ENGINES),
    fleets: Sequence[str] = tuple(FLEETS),
    workloads: Sequence[str] = tuple(WORKLOADS),
    scenarios: Sequence[str] = SCENARIOS,
) -> list[Cell]:
    """Every combination, grouped by (engine, workload) so each capacity is measured once."""
    for name, known in (
        (engines, ENGINES),
        (fleets, FLEETS),
        (workloads, WORKLOADS),
        (scenarios, SCENARIOS),
    ):
        unknown = [n for n in name if n not in known]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return [
        Cell(engine, fleet, workload, scenario)
        for engine in engines
        for workload in workloads
        for fleet in fleets
        for scenario in scenarios
    ]


def split_list(text: str) -> list[str]:
    """A comma-separated command-line list (empty parts ignored)."""
    return [part for part in text.split(",") if part]


def matrix_from_args(
    args: argparse.Namespace, scenarios: Sequence[str]
) -> tuple[list[Cell], list[Arm], MatrixSettings]:
    """The cells, arms and settings the matrix flags (``--engines``, ``--fleets``,
    ``--workloads``, ``--arms``, ``--duration-s``, ``--drain-s``, ``--seed``, ``--start-row``,
    ``--recalibrate``) ask for. Raises ``ValueError`` naming an unknown one."""
    cells = matrix_cells(
        split_list(args.engines), split_list(args.fleets), split_list(args.workloads), scenarios
    )
    arms = [arm_named(name) for name in split_list(args.arms)]
    settings = MatrixSettings(
        duration_s=args.duration_s,
        drain_s=args.drain_s,
        seed=args.seed,
        start_row=args.start_row,
        recalibrate=args.recalibrate,
    )
    return cells, arms, settings


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixSettings:
    duration_s: float = 20.0
    """Driven seconds per arm (two phases of half each); startup and drain come on top."""
    utilisation: tuple[float, float] = (0.7, 0.9)
    drain_s: float = 8.0
    slowdown_factor: float = 4.0
    slowdown_at: float = 1 / 3
    """Share of the driven duration after which the fastest pod slows (rounded to a second,
    so it falls on a counter sample)."""
    seed: int = 5
    start_row: int = 0
    time_scale: float = 1.0
    lead_s: float = 1.5
    """From the router being ready to the first request (the driver process starts and builds
    its request bodies meanwhile)."""
    calibration_warmup_s: float = 10.0
    calibration_measure_s: float = 30.0
    recalibrate: bool = False

    @property
    def slowdown_s(self) -> float:
        return float(round(self.duration_s * self.slowdown_at))


def sim_spec(cell: Cell, settings: MatrixSettings) -> SimSpec:
    engine = ENGINES[cell.engine]
    return SimSpec(
        speeds=FLEETS[cell.fleet],
        max_num_seqs=engine.max_num_seqs,
        kv_blocks=engine.kv_blocks,
        time_scale=settings.time_scale,
        seed=settings.seed,
        engine=cell.engine,
        engine_params=engine.params,
    )


def workload_spec(cell: Cell, settings: MatrixSettings, fleet_capacity_rps: float) -> WorkloadSpec:
    setup = WORKLOADS[cell.workload]
    half = settings.duration_s / 2
    if cell.scenario == "slowdown":
        fleet_capacity_rps *= capacity_left(cell, settings)
    return WorkloadSpec(
        trace=setup.trace,
        seed=settings.seed,
        start_row=settings.start_row,
        length_scale=setup.length_scale,
        phases=tuple(
            Phase(f"load{round(u * 100)}", half, round(u * fleet_capacity_rps, 2))
            for u in settings.utilisation
        ),
    )


def slowed_pod(pods: Sequence[Pod]) -> Pod:
    """The fastest pod (the first of them)."""
    return max(pods, key=lambda p: p.speed)


def capacity_left(cell: Cell, settings: MatrixSettings) -> float:
    """The share of the fleet's capacity left once the fastest pod is slowed."""
    speeds = FLEETS[cell.fleet]
    fastest = max(speeds)
    return (sum(speeds) - fastest + fastest / settings.slowdown_factor) / sum(speeds)


def describe_load(cell: Cell, settings: MatrixSettings, cap: Capacity) -> str:
    total = sum(FLEETS[cell.fleet])
    text = (
        f"capacity {cap.rps_per_speed:.2f} req/s per unit of speed (measured, one saturated "
        f"speed-1 pod) x {total:g} = {cap.rps_per_speed * total:.2f} req/s; load "
    )
    if cell.scenario != "slowdown":
        return text + " then ".join(f"{u:.0%}" for u in settings.utilisation)
    left = capacity_left(cell, settings)
    return text + (
        " then ".join(f"{u * left:.0%}" for u in settings.utilisation)
        + f"; from {settings.slowdown_s:g} s the fastest pod at 1/{settings.slowdown_factor:g}"
        f" speed: fleet capacity x{left:.2f}, so the load is "
        + " then ".join(f"{u:.0%}" for u in settings.utilisation)
        + " of what is left"
    )


@dataclass(slots=True)
class ArmRun:
    """What one arm produced in one cell."""

    arm: Arm
    pods: list[Pod] = field(default_factory=list)
    records: list[ClientRecord] = field(default_factory=list)
    samples: list[CounterSample] = field(default_factory=list)
    final: dict[str, PodCounters] = field(default_factory=dict)
    start_at: float = 0.0
    ready_after_s: float = 0.0
    wall_s: float = 0.0
    router_state: dict[str, float] = field(default_factory=dict)
    """slogate's predictor at the end of the run (decisions by prediction and fallback)."""
    skipped: str | None = None
    """Why the arm did not run (not installed, the sim lacks a feature, it failed)."""


@dataclass(slots=True)
class CellRun:
    cell: Cell
    sims: SimSpec
    workload: WorkloadSpec | None = None
    capacity: Capacity | None = None
    load: str = ""
    arms: list[ArmRun] = field(default_factory=list)
    skipped: str | None = None
    repeat: int = 0
    """Which run of the cell this is (``run_matrix``'s ``repeats``), from 0."""


async def run_arm(
    arm: Arm,
    cell: Cell,
    sims: SimSpec,
    spec: WorkloadSpec,
    settings: MatrixSettings,
    *,
    log_dir: Path,
    vllm_router: Path | None,
    repeat: int = 0,
) -> ArmRun:
    started = time.monotonic()
    out = ArmRun(arm=arm)
    async with sim_fleet(sims) as pods, aiohttp.ClientSession() as control:
        out.pods = list(pods)
        slowed = slowed_pod(pods)
        if cell.scenario == "slowdown" and not await has_speed_control(control, slowed):
            out.skipped = "this simulator has no POST /sim/speed"
            return out
        log_path = log_dir / log_name(cell, arm, repeat)
        async with running_router(arm, pods, log_path=log_path, vllm_router=vllm_router) as rr:
            out.ready_after_s = rr.ready_after_s
            out.start_at = time.monotonic() + settings.lead_s
            sampler = CounterSampler(control, pods, out.start_at)
            slowdown = (
                asyncio.create_task(
                    _slow_down_at(
                        control,
                        slowed,
                        slowed.speed / settings.slowdown_factor,
                        out.start_at + settings.slowdown_s,
                    )
                )
                if cell.scenario == "slowdown"
                else None
            )
            try:
                async with sampling(sampler):
                    out.records = await run_driver(
                        rr.url, spec, start_at=out.start_at, drain_s=settings.drain_s
                    )
                    # The windows after the slowdown reach to the workload's end.
                    async with asyncio.timeout(10):
                        await sampler.reached(math.ceil(spec.duration_s))
            finally:
                if slowdown is not None:
                    if not slowdown.done():
                        slowdown.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await slowdown
            out.samples = sampler.samples
            if arm.kind == SLOGATE:
                out.router_state = await slogate_predictor_state(control, rr.url)
            stats = await asyncio.gather(*(pod_stats(control, p) for p in pods))
            out.final = {p.name: counters_from_stats(s) for p, s in zip(pods, stats, strict=True)}
    out.wall_s = time.monotonic() - started
    return out


def arm_order(arms: Sequence[Arm], repeat: int) -> list[Arm]:
    """The order the arms of a cell's run ``repeat`` (from 0) go in: as given, reversed on
    every second run."""
    return list(arms) if repeat % 2 == 0 else list(reversed(arms))


def log_name(cell: Cell, arm: Arm, repeat: int = 0) -> str:
    """The file name of an arm's router log: cell, arm and run, as one safe name."""
    name = f"{cell.key}_{arm.name}" + (f"_run{repeat + 1}" if repeat else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".log"


async def _slow_down_at(
    session: aiohttp.ClientSession, pod: Pod, speed: float, at_monotonic: float
) -> None:
    await asyncio.sleep(max(0.0, at_monotonic - time.monotonic()))
    await set_speed(session, pod, speed)


async def run_cell(
    cell: Cell,
    arms: Sequence[Arm],
    settings: MatrixSettings,
    *,
    log_dir: Path,
    progress: Callable[[str], None] = print,
    repeat: int = 0,
) -> CellRun:
    """Every arm on the cell, one after the other; on an odd ``repeat`` in the reverse order
    (the machine's state drifts over a run: alternating keeps it from favouring one arm), the
    results in the order of ``arms`` either way."""
    sims = sim_spec(cell, settings)
    out = CellRun(cell=cell, sims=sims, repeat=repeat)
    try:
        sims.sim_config_fields()
    except ValueError as exc:
        out.skipped = f"engine {cell.engine}: {exc}"
        return out
    base = workload_spec(cell, settings, 1.0)
    cap = await capacity(
        CapacitySpec(
            sims=sims,
            workload=base,
            warmup_s=settings.calibration_warmup_s,
            measure_s=settings.calibration_measure_s,
        ),
        fresh=settings.recalibrate,
    )
    out.capacity = cap
    out.workload = workload_spec(cell, settings, cap.rps_per_speed * sum(sims.speeds))
    out.load = describe_load(cell, settings, cap)
    vllm_router = find_vllm_router()
    for arm in arm_order(arms, repeat):
        if arm.is_peer and vllm_router is None:
            out.arms.append(ArmRun(arm=arm, skipped="vllm-router is not installed"))
            continue
        suffix = f" (run {repeat + 1})" if repeat else ""
        progress(f"  {cell.key}: {arm.name}{suffix} ...")
        try:
            run = await run_arm(
                arm,
                cell,
                sims,
                out.workload,
                settings,
                log_dir=log_dir,
                vllm_router=vllm_router,
                repeat=repeat,
            )
        except (RuntimeError, OSError, aiohttp.ClientError) as exc:
            run = ArmRun(arm=arm, skipped=f"failed: {exc}")
        out.arms.append(run)
    order = {arm.name: i for i, arm in enumerate(arms)}
    out.arms.sort(key=lambda run: order[run.arm.name])
    return out


async def run_matrix(
    cells: Sequence[Cell],
    arms: Sequence[Arm],
    settings: MatrixSettings,
    *,
    log_dir: Path | None = None,
    progress: Callable[[str], None] = print,
    repeats: int = 1,
) -> list[CellRun]:
    """Run every cell ``repeats`` times in a row (one ``CellRun`` per run); router logs go to
    ``log_dir`` (a temporary directory by default)."""
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for cell in cells:
            progress(f"cell {cell.key}")
            for repeat in range(repeats):
                out.append(
                    await run_cell(
                        cell, arms, settings, log_dir=log_dir, progress=progress, repeat=repeat
                    )
                )
        return out


def cell_info(run: CellRun) -> dict[str, Any]:
    """The cell's setup, for the report."""
    return {
        "fleet": run.sims.describe(),
        "workload": None if run.workload is None else run.workload.describe(),
        "load": run.load,
        "capacity": None if run.capacity is None else asdict(run.capacity),
        "skipped": run.skipped,
    }
