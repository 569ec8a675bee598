"""Benchmark: routing quality with N gateway replicas against one, in front of the same fleet.

Each replica is a separate gateway process that sees only its own in-flight requests (and
trains its predictor only on its own samples); the pods' scraped metrics are all they share.
This measures what that costs. For each (engine, fleet, workload) cell of the routing matrix
(:mod:`loadtest.matrix`, steady scenario) and each arm (a slogate preset, or any arm
:func:`loadtest.routers.arm_named` knows), the same workload is replayed twice, each time on a
freshly started fleet of sims:

1. through one router process (:func:`loadtest.routers.running_router`), as in the matrix;
2. through ``--replicas`` router processes of the same arm in front of the same pods, request
   ``i`` of the trace going to gateway ``i % N``: a deterministic stand-in for a Kubernetes
   Service spreading connections over the replicas (kube-proxy balances connections, not
   requests; many clients with short-lived connections come out close to this).

Same trace rows, arrival times, prompts, seeds and load (the matrix's two phases at 70 % then
90 % of the fleet's measured capacity, :mod:`loadtest.capacity`) in both runs; predictors
start cold. The driver is the matrix's (:func:`loadtest.fleet.run_driver`, given every
replica's URL), used for the single gateway too, so both runs go through the same client
code. ``--repeats`` runs each pair again (interleaved: 1, N, 1, N, ...) and the
report takes the median of each metric over the repeats.

On a small machine N gateway processes (each scraping every pod, each training its own
predictor) compete for CPU with the sims and the driver, which is not what a replica costs in a
cluster. Each run therefore records the machine's CPU busy share, how late the driver sent and
the sims stepped (``GET /sim/stats``), and ``--control`` adds a third condition: N gateways up,
every request through the first (what merely running N costs here, apart from splitting their
view of the fleet).

Reported per cell and arm: TTFT p50/p90/p99 and TPOT p90 with one gateway and with N, the
ratio N/1 of each (p90 TTFT over 1.10 is flagged), each pod's share of the completed requests
(from the pods' counters), and per replica its requests, its p90 TTFT, the pods it chose
(``x-slogate-endpoint``) and its predictor's state. Printed as a table; JSON to
``results/bench_replicas.json``.

    .venv/bin/python -m loadtest.bench_replicas
    .venv/bin/python -m loadtest.bench_replicas --engines vllm,slots --fleets hetero \
        --workloads azure-conv,mooncake --arms predicted-latency,load-prefix --duration-s 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.capacity import CapacitySpec, capacity
from loadtest.client import percentile
from loadtest.fleet import SimSpec, WorkloadSpec, run_driver, sim_fleet, target_of
from loadtest.matrix import (
    ENGINES,
    FLEETS,
    WORKLOADS,
    ArmRun,
    Cell,
    CellRun,
    MatrixSettings,
    cell_info,
    describe_load,
    matrix_from_args,
    sim_spec,
    workload_spec,
)
from loadtest.matrix_report import METRICS, RANKED_BY, arm_summary
from loadtest.report import write_report
from loadtest.routers import (
    SLOGATE,
    SLOGATE_ARMS,
    Arm,
    free_port,
    running_router,
    slogate_predictor_state,
)
from loadtest.simctl import counters_from_stats, pod_stats

THRESHOLD = 1.10
"""N gateways are flagged when their p90 TTFT exceeds one gateway's by more than this."""
ROUTING = "request i of the trace to gateway i % N (round robin by request)"
COMPLETIONS = "/v1/completions"


def gateway_for(index: int, replicas: int) -> int:
    """The replica request ``index`` goes to (the driver's :func:`loadtest.fleet.target_of`)."""
    return target_of(index, replicas)


# -- one run: N router processes in front of fresh sims ------------------------------------------
@dataclass(slots=True)
class ReplicaRun:
    replicas: int
    """Router processes running."""
    routing: int
    """How many of them the driver sent requests to: all, or one in the control run."""
    run: ArmRun
    """The records and the pods' final counters, as a matrix arm has them."""
    gateways: list[dict[str, float]] = field(default_factory=list)
    """Per replica, from its ``/metrics``: completions answered, predictor state."""
    host: dict[str, float] = field(default_factory=dict)
    """Whether the machine kept up: its CPUs' busy share from the driver's start to its end,
    the sims' process CPU seconds and step lateness (``GET /sim/stats``)."""

    @property
    def condition(self) -> str:
        if self.routing == self.replicas:
            return str(self.replicas)
        return f"{self.replicas}-up-{self.routing}-routing"


def cpu_times() -> tuple[float, float]:
    """``(busy, total)`` time of all CPUs since boot, in ticks (``/proc/stat``; zeros where
    there is none)."""
    try:
        with open("/proc/stat") as f:
            ticks = [float(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    total = sum(ticks)
    return total - sum(ticks[3:5]), total  # idle and iowait


def send_lateness_ms(run: ArmRun, spec: WorkloadSpec) -> float:
    """p99 of how late the driver sent requests against their arrival times."""
    due = {a.index: run.start_at + a.at_s for a in spec.arrivals()}
    late = [(r.sent_at - due[r.index]) * 1000 for r in run.records]
    return percentile(late, 99) if late else float("nan")


def sims_timing(stats: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The sims' CPU seconds (one process) and their worst step lateness."""
    timing = [s.get("step_timing", {}) for s in stats]
    return {
        "sims_cpu_s": max(float(s.get("process_cpu_s", 0.0)) for s in stats),
        "sims_late_ms_p99": max(float(t.get("late_ms_p99", 0.0)) for t in timing),
        "sims_resyncs": sum(float(t.get("resyncs", 0.0)) for t in timing),
    }


async def gateway_state(session: aiohttp.ClientSession, arm: Arm, url: str) -> dict[str, float]:
    """A slogate replica's completions answered (``slogate_http_requests_total``) and its
    predictor's state; nothing for other routers."""
    if arm.kind != SLOGATE:
        return {}
    async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        text = await resp.text()
    answered = sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "slogate_http_requests_total" and s.labels.get("route") == COMPLETIONS
    )
    return {"completions_answered": answered, **await slogate_predictor_state(session, url)}


async def run_replicas(
    arm: Arm,
    sims: SimSpec,
    spec: WorkloadSpec,
    settings: MatrixSettings,
    *,
    replicas: int,
    routing: int | None = None,
    share: bool = True,
    log_dir: Path,
    tag: str = "run",
) -> ReplicaRun:
    """``replicas`` processes of ``arm`` in front of one fresh fleet, driven by one driver
    that spreads requests over the first ``routing`` of them (all by default). With ``share``,
    slogate replicas are each other's peers (``--peer``: they share in-flight counts), as the
    Kubernetes manifests deploy them."""
    started = time.monotonic()
    routing = replicas if routing is None else routing
    out = ReplicaRun(replicas=replicas, routing=routing, run=ArmRun(arm=arm))
    async with (
        sim_fleet(sims) as pods,
        aiohttp.ClientSession() as control,
        contextlib.AsyncExitStack() as routers,  # stopped before the sims
    ):
        out.run.pods = list(pods)
        running = []
        ports = [free_port() for _ in range(replicas)]
        peered = share and replicas > 1 and arm.kind == SLOGATE
        for g in range(replicas):
            name = f"{tag}_{arm.name.replace(':', '_')}_{out.condition}gw_{g}.log"
            log_path = log_dir / name
            peers = [
                flag
                for other, port in enumerate(ports)
                if other != g and peered
                for flag in ("--peer", f"http://127.0.0.1:{port}")
            ]
            running.append(
                await routers.enter_async_context(
                    running_router(arm, pods, log_path=log_path, port=ports[g], extra_args=peers)
                )
            )
        out.run.ready_after_s = max(r.ready_after_s for r in running)
        out.run.start_at = time.monotonic() + settings.lead_s
        cpu_before = cpu_times()
        out.run.records = await run_driver(
            [r.url for r in running[:routing]],
            spec,
            start_at=out.run.start_at,
            drain_s=settings.drain_s,
        )
        busy, total = (b - a for a, b in zip(cpu_before, cpu_times(), strict=True))
        out.gateways = [await gateway_state(control, arm, r.url) for r in running]
        stats = await asyncio.gather(*(pod_stats(control, p) for p in pods))
        out.run.final = {p.name: counters_from_stats(s) for p, s in zip(pods, stats, strict=True)}
        out.host = {
            "cpu_busy": busy / total if total else float("nan"),
            "send_late_ms_p99": send_lateness_ms(out.run, spec),
            **sims_timing(stats),
        }
    out.run.wall_s = time.monotonic() - started
    return out


async def compare_arm(
    arm: Arm,
    sims: SimSpec,
    spec: WorkloadSpec,
    settings: MatrixSettings,
    *,
    replicas: int,
    repeats: int = 1,
    control: bool = False,
    share: bool = True,
    log_dir: Path,
    tag: str = "run",
    progress: Callable[[str], None] = print,
) -> list[ReplicaRun]:
    """One gateway, then ``replicas``, ``repeats`` times over (each run on fresh sims); with
    ``control`` also ``replicas`` gateways of which only one is sent requests (what merely
    running N gateways costs on this machine, apart from splitting their view)."""
    conditions = [(1, 1), (replicas, replicas)] + ([(replicas, 1)] if control else [])
    out = []
    for r in range(repeats):
        for n, routing in conditions:
            progress(
                f"  {tag}: {arm.name}, {n} gateway(s) up, {routing} routing, "
                f"repeat {r + 1}/{repeats} ..."
            )
            run = await run_replicas(
                arm,
                sims,
                spec,
                settings,
                replicas=n,
                routing=routing,
                share=share,
                log_dir=log_dir,
                tag=f"{tag}_r{r}",
            )
            out.append(run)
    return out


@dataclass(slots=True)
class CellComparison:
    info: CellRun
    """The cell's fleet, workload, capacity and load (its ``arms`` stay empty)."""
    arms: dict[str, list[ReplicaRun]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


async def run_cell(
    cell: Cell,
    arms: Sequence[Arm],
    settings: MatrixSettings,
    *,
    replicas: int,
    repeats: int,
    control: bool = False,
    share: bool = True,
    log_dir: Path,
    progress: Callable[[str], None] = print,
) -> CellComparison:
    sims = sim_spec(cell, settings)
    out = CellComparison(info=CellRun(cell=cell, sims=sims))
    try:
        sims.sim_config_fields()
    except ValueError as exc:
        out.info.skipped = f"engine {cell.engine}: {exc}"
        return out
    cap = await capacity(
        CapacitySpec(
            sims=sims,
            workload=workload_spec(cell, settings, 1.0),
            warmup_s=settings.calibration_warmup_s,
            measure_s=settings.calibration_measure_s,
        ),
        fresh=settings.recalibrate,
    )
    out.info.capacity = cap
    out.info.workload = spec = workload_spec(cell, settings, cap.rps_per_speed * sum(sims.speeds))
    out.info.load = describe_load(cell, settings, cap)
    tag = cell.key.replace("/", "_")
    for arm in arms:
        try:
            out.arms[arm.name] = await compare_arm(
                arm,
                sims,
                spec,
                settings,
                replicas=replicas,
                repeats=repeats,
                control=control,
                share=share,
                log_dir=log_dir,
                tag=tag,
                progress=progress,
            )
        except (RuntimeError, OSError, aiohttp.ClientError) as exc:
            out.skipped[arm.name] = f"failed: {exc}"
    return out


# -- the report (pure) ---------------------------------------------------------------------------
def run_summary(run: ReplicaRun) -> dict[str, Any]:
    """The matrix's arm summary plus, per replica, what it was sent and what it did."""
    out = arm_summary(run.run) | run.host
    out["wall_s"] = run.run.wall_s
    pods = [p.name for p in run.run.pods]
    per_gateway = []
    for g in range(run.replicas):
        mine = [r for r in run.run.records if gateway_for(r.index, run.routing) == g]
        served = [r for r in mine if r.error is None or r.cut]
        chosen = Counter(r.endpoint for r in mine if r.endpoint)
        seen = sum(chosen.values()) or 1
        entry: dict[str, Any] = {
            "requests": len(mine),
            "ok": sum(r.error is None for r in mine),
            "ttft_p90_s": _p90([r.ttft_s if r.ttft_s is not None else r.e2e_s for r in served]),
            "share_by_header": {p: chosen.get(p, 0) / seen for p in pods},
        }
        if g < len(run.gateways):
            entry["state"] = run.gateways[g]
        per_gateway.append(entry)
    out["gateways"] = per_gateway
    return out


HOST_KEYS = ("cpu_busy", "send_late_ms_p99", "sims_cpu_s", "sims_late_ms_p99", "sims_resyncs")


def arm_report(runs: Sequence[ReplicaRun]) -> dict[str, Any]:
    """Per condition (``"1"``, ``"N"``, the control ``"N-up-1-routing"``): every run's
    summary and the medians over repeats; ``ratio`` is N over 1, ``control_ratio`` the
    control over 1."""
    by_condition: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (r.replicas, -r.routing)):
        by_condition.setdefault(run.condition, []).append(run_summary(run))
    medians = {
        name: {
            **{
                key: _median([s.get(key, float("nan")) for s in summaries])
                for key in (*(m[1] for m in METRICS), *HOST_KEYS)
            },
            "share": {
                pod: _median([s["share"].get(pod, 0.0) for s in summaries])
                for pod in summaries[0]["share"]
            },
            "cut": sum(s["cut"] for s in summaries),
            "errors": sum(s["errors"] for s in summaries),
        }
        for name, summaries in by_condition.items()
    }
    one, many, *control = list(by_condition)

    def ratios(name: str) -> dict[str, float]:
        return {key: _ratio(medians[name][key], medians[one][key]) for _, key, _, _ in METRICS}

    out: dict[str, Any] = {
        "gateways": {n: {"median": medians[n], "runs": by_condition[n]} for n in by_condition},
        "ratio": ratios(many),
    }
    out["worse_than_threshold"] = out["ratio"][RANKED_BY] > THRESHOLD
    if control:
        out["control_ratio"] = ratios(control[0])
    return out


def _p90(values: list[float]) -> float:
    """As the matrix counts them: cut requests with their lower bounds."""
    return percentile(values, 90) if values else float("nan")


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def _ratio(value: float, base: float) -> float:
    return value / base if base and base == base else float("nan")


def cell_report(comparison: CellComparison) -> dict[str, Any]:
    report: dict[str, Any] = {
        "cell": comparison.info.cell.key,
        **cell_info(comparison.info),
        "arms": {name: arm_report(runs) for name, runs in comparison.arms.items()},
    }
    for name, reason in comparison.skipped.items():
        report["arms"][name] = {"skipped": reason}
    return report


# -- printing ------------------------------------------------------------------------------------
def _ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.0f}"


def print_cell(report: Mapping[str, Any], replicas: int) -> None:
    print(f"\n== {report['cell']}")
    if report.get("skipped"):
        print(f"   skipped: {report['skipped']}")
        return
    print(f"   fleet: {report['fleet']}\n   load: {report['load']}")
    arms = {n: e for n, e in report["arms"].items() if "skipped" not in e}
    pods = next((list(e["gateways"]["1"]["median"]["share"]) for e in arms.values()), [])
    print(
        f"{'arm':<18}{'gateways':>15}{'TTFT p50':>10}{'p90':>7}{'p99':>7}{'TPOT p90':>9}"
        f"{'cut':>5}{'cpu':>6}{'send':>6}{'step':>6}"
        + "".join(f"{p:>11}" for p in pods)
        + "\n   (ms; cpu: the machine's CPUs busy; send, step: p99 ms late of the driver's"
        " sends and the sims' steps; then the pods' shares of completions)"
    )
    for name, entry in report["arms"].items():
        if "skipped" in entry:
            print(f"{name:<18}  skipped: {entry['skipped']}")
            continue
        for condition, data in entry["gateways"].items():
            m = data["median"]
            print(
                f"{name:<18}{condition:>15}{_ms(m['ttft_p50_s']):>10}{_ms(m['ttft_p90_s']):>7}"
                f"{_ms(m['ttft_p99_s']):>7}{_ms(m['tpot_p90_s']):>9}{m['cut']:>5}"
                f"{m['cpu_busy']:>6.0%}{m['send_late_ms_p99']:>6.0f}{m['sims_late_ms_p99']:>6.0f}"
                + "".join(f"{m['share'].get(p, 0.0):>11.0%}" for p in pods)
            )
        for label, key in ((f"{replicas}/1", "ratio"), ("control/1", "control_ratio")):
            if key in entry:
                r = entry[key]
                flag = (
                    f"  > {THRESHOLD:.2f}"
                    if key == "ratio" and entry["worse_than_threshold"]
                    else ""
                )
                print(
                    f"{'':<18}{label:>15}{r['ttft_p50_s']:>9.2f}x{r['ttft_p90_s']:>6.2f}x"
                    f"{r['ttft_p99_s']:>6.2f}x{r['tpot_p90_s']:>8.2f}x{flag}"
                )
        for g, gw in enumerate(entry["gateways"][str(replicas)]["runs"][0]["gateways"]):
            state = gw.get("state", {})
            predicted = state.get("decisions_predicted")
            decided = (predicted or 0.0) + state.get("decisions_fallback", 0.0)
            by_prediction = f", {predicted / decided:.0%} by prediction" if decided else ""
            print(
                f"{'':<18}   gw{g}: {gw['requests']} requests, p90 TTFT "
                f"{_ms(gw['ttft_p90_s'])} ms{by_prediction}; chose "
                + ", ".join(f"{p} {s:.0%}" for p, s in gw["share_by_header"].items())
            )


def summary_table(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | str]]:
    """Rows = cells, columns = arms (and their controls): p90 TTFT over one gateway's."""
    table: dict[str, dict[str, float | str]] = {}
    for report in reports:
        row: dict[str, float | str] = {}
        for name, entry in report["arms"].items():
            row[name] = "skipped" if "skipped" in entry else entry["ratio"][RANKED_BY]
            if "control_ratio" in entry:
                row[f"{name} (control)"] = entry["control_ratio"][RANKED_BY]
        table[report["cell"]] = row
    return table


def print_summary(table: Mapping[str, Mapping[str, float | str]], replicas: int) -> None:
    names = list(dict.fromkeys(n for row in table.values() for n in row))
    width = max(20, *(len(n) + 2 for n in names))
    print(
        f"\np90 TTFT with {replicas} gateways / with 1 (> {THRESHOLD:.2f} flagged with !); "
        f"control: {replicas} gateways up, all requests through one"
    )
    print(f"{'cell':<36}" + "".join(f"{n:>{width}}" for n in names))
    for cell, row in table.items():
        cells = []
        for n in names:
            value = row.get(n, "")
            if isinstance(value, str):
                cells.append(value)
            else:
                cells.append(f"{value:.2f}{'!' if value > THRESHOLD else ' '}")
        print(f"{cell:<36}" + "".join(f"{c:>{width}}" for c in cells))


# -- the command ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_replicas",
        description="Routing quality with N gateway replicas against one.",
    )
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--fleets", default=",".join(FLEETS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--arms", default=",".join(a.name for a in SLOGATE_ARMS))
    parser.add_argument("--replicas", type=int, default=2, help="gateways in the replica run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (median taken)")
    parser.add_argument(
        "--no-share",
        action="store_true",
        help="slogate replicas do not share in-flight counts (no --peer): each sees only its own",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also run N gateways with all requests through one (the cost of running N here)",
    )
    parser.add_argument("--duration-s", type=float, default=MatrixSettings().duration_s)
    parser.add_argument("--drain-s", type=float, default=MatrixSettings().drain_s)
    parser.add_argument("--seed", type=int, default=MatrixSettings().seed)
    parser.add_argument("--start-row", type=int, default=0)
    parser.add_argument("--recalibrate", action="store_true", help="measure capacities again")
    parser.add_argument("--log-dir", type=Path, help="keep each router's log here")
    parser.add_argument("--out", type=Path, default=Path("results/bench_replicas.json"))
    args = parser.parse_args(argv)

    try:
        if args.replicas < 2 or args.repeats < 1:
            raise ValueError("--replicas must be at least 2 and --repeats at least 1")
        cells, arms, settings = matrix_from_args(args, ["steady"])
    except ValueError as exc:
        print(f"bench_replicas: {exc}", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async def run_all(log_dir: Path) -> list[CellComparison]:
        out = []
        for cell in cells:
            progress(f"cell {cell.key}")
            out.append(
                await run_cell(
                    cell,
                    arms,
                    settings,
                    replicas=args.replicas,
                    repeats=args.repeats,
                    control=args.control,
                    share=not args.no_share,
                    log_dir=log_dir,
                    progress=progress,
                )
            )
        return out

    from gateway.cli import new_event_loop

    started = time.monotonic()
    loop = new_event_loop()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log_dir = args.log_dir or Path(tmp)
            log_dir.mkdir(parents=True, exist_ok=True)
            runs = loop.run_until_complete(run_all(log_dir))
    finally:
        loop.close()
    reports = [cell_report(run) for run in runs]
    for report in reports:
        print_cell(report, args.replicas)
    table = summary_table(reports)
    print_summary(table, args.replicas)
    print(
        f"\n{len(cells)} cells x {len(arms)} arms x (1 and {args.replicas} gateways) x "
        f"{args.repeats} in {(time.monotonic() - started) / 60:.1f} min; {ROUTING}; "
        f"{settings.duration_s:g} s driven per run, drain up to {settings.drain_s:g} s"
    )
    write_report(
        args.out,
        "bench_replicas",
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        settings=asdict(settings),
        replicas=args.replicas,
        routing=ROUTING,
        threshold=THRESHOLD,
        summary=table,
        cells=reports,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
