"""What the routing matrix reports: per-arm summaries, ratios to the best peer, time-to-adapt.

All pure functions of what :mod:`loadtest.matrix` collected, so they are tested on made-up
records.

- Latency percentiles are over every request the driver sent. A request cut at the drain
  deadline counts with lower bounds (its TTFT, if no token had come, and its e2e are the time
  it had waited when cut), so a router that leaves more requests unfinished does not look
  better for it; TPOT is over finished requests only.
- Shares per pod come from the pods' own counters (completed requests), the same for every
  arm; slogate's ``x-slogate-endpoint`` header gives a client-side count too.
- The best peer of a cell is the vllm-router policy with the lowest p90 TTFT there; every
  arm's metrics are also given as ratios to it.
- Time-to-adapt (slowdown scenario): the slowed pod's share of newly dispatched requests
  before the slowdown, then per 2 s window sliding by 1 s after it; adapted at the end of the
  first window whose share is under half the share before, settled at the end of the first
  window from which every later one is. From the client side for slogate (dispatch = send
  time, pod from the header); from the pods' counters sampled each second for every arm (the
  only view there is for vllm-router).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from loadtest.client import percentile
from loadtest.fleet import WorkloadSpec
from loadtest.matrix import ArmRun, CellRun, MatrixSettings, cell_info, slowed_pod
from loadtest.simctl import CounterSample

WINDOW_S = 2.0
STEP_S = 1.0

# (label, key, scale, unit) of the rows in a cell's table; ratios are taken for each.
METRICS = (
    ("TTFT p50", "ttft_p50_s", 1000, "ms"),
    ("TTFT p90", "ttft_p90_s", 1000, "ms"),
    ("TTFT p99", "ttft_p99_s", 1000, "ms"),
    ("TPOT p50", "tpot_p50_s", 1000, "ms"),
    ("TPOT p90", "tpot_p90_s", 1000, "ms"),
    ("e2e p90", "e2e_p90_s", 1, "s"),
)
RANKED_BY = "ttft_p90_s"


def _q(values: list[float], p: float) -> float:
    return percentile(values, p) if values else math.nan


def arm_summary(run: ArmRun) -> dict[str, Any]:
    """Latency percentiles, errors, cuts and shares of one arm's run."""
    records = run.records
    failed = [r for r in records if r.error is not None and not r.cut]
    served = [r for r in records if r.error is None or r.cut]
    ttft = [r.ttft_s if r.ttft_s is not None else r.e2e_s for r in served]
    tpot = [r.tpot_s for r in served if not r.cut and r.tpot_s is not None]
    e2e = [r.e2e_s for r in served]
    completed = {name: c.completed for name, c in run.final.items()}
    total = sum(completed.values()) or 1
    out: dict[str, Any] = {
        "requests": len(records),
        "errors": len(failed),
        "cut": sum(r.cut for r in records),
        "ttft_p50_s": _q(ttft, 50),
        "ttft_p90_s": _q(ttft, 90),
        "ttft_p99_s": _q(ttft, 99),
        "tpot_p50_s": _q(tpot, 50),
        "tpot_p90_s": _q(tpot, 90),
        "e2e_p90_s": _q(e2e, 90),
        "share": {name: n / total for name, n in completed.items()},
        "completed_at_pods": completed,
        "phase_ttft_p90_s": {
            phase: _q(
                [r.ttft_s if r.ttft_s is not None else r.e2e_s for r in served if r.phase == phase],
                90,
            )
            for phase in dict.fromkeys(r.phase for r in records)
        },
    }
    if not run.arm.is_peer:
        by_header = Counter(r.endpoint for r in records if r.endpoint)
        seen = sum(by_header.values()) or 1
        out["share_by_header"] = {p.name: by_header.get(p.name, 0) / seen for p in run.pods}
    return out


def best_peer(summaries: Mapping[str, Mapping[str, Any]], peers: Sequence[str]) -> str | None:
    """The peer with the lowest p90 TTFT (None when no peer has one)."""
    ranked = [
        (summaries[name][RANKED_BY], name)
        for name in peers
        if name in summaries and not math.isnan(summaries[name][RANKED_BY])
    ]
    return min(ranked)[1] if ranked else None


def ratios_to(summaries: Mapping[str, Mapping[str, Any]], best: str) -> dict[str, dict[str, float]]:
    """Each arm's metric divided by the same metric of arm ``best``."""
    base = summaries[best]
    out: dict[str, dict[str, float]] = {}
    for name, summary in summaries.items():
        out[name] = {}
        for _, key, _, _ in METRICS:
            value, ref = summary[key], base[key]
            out[name][key] = value / ref if ref and not math.isnan(ref) else math.nan
    return out


def time_to_adapt(
    before: float, windows: Sequence[tuple[float, float]], *, factor: float = 0.5
) -> float | None:
    """End of the first window (seconds after the slowdown) whose share is under
    ``factor x before``; ``windows`` are ``(end_s, share)`` in order. None: never."""
    for end_s, share in windows:
        if share < factor * before:
            return end_s
    return None


def time_to_settle(
    before: float, windows: Sequence[tuple[float, float]], *, factor: float = 0.5
) -> float | None:
    """Like :func:`time_to_adapt`, but the share must stay under ``factor x before`` in every
    later window too (with a handful of requests per window, one window can dip by chance)."""
    settled = None
    for end_s, share in windows:
        if share >= factor * before:
            settled = None
        elif settled is None:
            settled = end_s
    return settled


def _share(counts: Mapping[str, float], pod: str) -> float:
    total = sum(counts.values())
    return counts.get(pod, 0) / total if total > 0 else math.nan


def adapt_from_events(
    events: Sequence[tuple[float, str]], pod: str, slowdown_s: float, end_s: float
) -> dict[str, Any]:
    """Time-to-adapt from ``(dispatch time after the workload's start, pod)`` events."""
    before = _share(Counter(p for t, p in events if 0 <= t < slowdown_s), pod)
    windows = []
    lo = slowdown_s
    while lo + WINDOW_S <= end_s + 1e-9:
        counts = Counter(p for t, p in events if lo <= t < lo + WINDOW_S)
        windows.append((lo + WINDOW_S - slowdown_s, _share(counts, pod)))
        lo += STEP_S
    return _adapt(before, windows)


def adapt_from_samples(
    samples: Sequence[CounterSample], pod: str, slowdown_s: float, end_s: float
) -> dict[str, Any]:
    """Time-to-adapt from cumulative per-pod dispatch counters sampled at whole seconds."""
    at = {round(s.at_s, 6): s.dispatched for s in samples}

    def delta(lo: float, hi: float) -> dict[str, float] | None:
        a, b = at.get(round(lo, 6)), at.get(round(hi, 6))
        if a is None or b is None:
            return None
        return {name: b[name] - a[name] for name in b}

    first = delta(0.0, slowdown_s)
    before = math.nan if first is None else _share(first, pod)
    windows = []
    lo = slowdown_s
    while lo + WINDOW_S <= end_s + 1e-9:
        counts = delta(lo, lo + WINDOW_S)
        if counts is not None:
            windows.append((lo + WINDOW_S - slowdown_s, _share(counts, pod)))
        lo += STEP_S
    return _adapt(before, windows)


def _adapt(before: float, windows: list[tuple[float, float]]) -> dict[str, Any]:
    valid = [(end, share) for end, share in windows if not math.isnan(share)]
    return {
        "share_before": before,
        "adapt_s": None if math.isnan(before) else time_to_adapt(before, valid),
        "settled_s": None if math.isnan(before) else time_to_settle(before, valid),
        "observed_s": valid[-1][0] if valid else 0.0,
        "windows": windows,
    }


def arm_adapt(run: ArmRun, spec: WorkloadSpec, settings: MatrixSettings) -> dict[str, Any]:
    """Time-to-adapt of one arm in the slowdown scenario, by every method available."""
    pod = slowed_pod(run.pods).name
    out = {
        "slowed_pod": pod,
        "sims": adapt_from_samples(run.samples, pod, settings.slowdown_s, spec.duration_s),
    }
    if not run.arm.is_peer:
        events = [(r.sent_at - run.start_at, r.endpoint) for r in run.records if r.endpoint]
        out["client"] = adapt_from_events(events, pod, settings.slowdown_s, spec.duration_s)
    return out


def headline_adapt(adapt: Mapping[str, Any]) -> dict[str, Any]:
    """The view the tables show: client-side when there is one (slogate), else the pods'."""
    view = adapt.get("client") or adapt["sims"]
    return {"method": "client" if "client" in adapt else "sims", **view}


def cell_report(run: CellRun, settings: MatrixSettings) -> dict[str, Any]:
    """Everything about one cell for the JSON report and the tables."""
    report: dict[str, Any] = {
        "cell": run.cell.key,
        "repeat": run.repeat,
        **cell_info(run),
        "arms": {},
    }
    summaries: dict[str, dict[str, Any]] = {}
    for arm_run in run.arms:
        entry: dict[str, Any] = {"kind": arm_run.arm.kind, "setting": arm_run.arm.setting}
        if arm_run.skipped is not None:
            entry["skipped"] = arm_run.skipped
        else:
            summary = arm_summary(arm_run)
            summaries[arm_run.arm.name] = summary
            entry["summary"] = summary
            entry["ready_after_s"] = arm_run.ready_after_s
            if arm_run.router_state:
                entry["router_state"] = arm_run.router_state
            entry["wall_s"] = arm_run.wall_s
            if run.cell.scenario == "slowdown" and run.workload is not None:
                entry["adapt"] = arm_adapt(arm_run, run.workload, settings)
        report["arms"][arm_run.arm.name] = entry
    peers = [a.arm.name for a in run.arms if a.arm.is_peer]
    best = best_peer(summaries, peers)
    report["best_peer"] = best
    report["ratios"] = {} if best is None else ratios_to(summaries, best)
    return report


# -- printing ------------------------------------------------------------------------------------
def _fmt(value: float, scale: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * scale:.0f}" if scale > 1 else f"{value * scale:.2f}"


def print_cell(report: Mapping[str, Any], labels: Mapping[str, str], width: int = 16) -> None:
    repeat = report.get("repeat", 0)
    print(f"\n== {report['cell']}" + (f" (run {repeat + 1})" if repeat else ""))
    if report.get("skipped"):
        print(f"   skipped: {report['skipped']}")
        return
    print(f"   fleet: {report['fleet']}\n   load: {report['load']}")
    arms = report["arms"]
    names = list(arms)
    best = report["best_peer"]
    ratios = report["ratios"]
    print(f"{'':<16}" + "".join(f"{labels[n]:>{width}}" for n in names))

    def row(label: str, cells: Sequence[str]) -> None:
        print(f"{label:<16}" + "".join(f"{c:>{width}}" for c in cells))

    for label, key, scale, unit in METRICS:
        cells = []
        for n in names:
            if "summary" not in arms[n]:
                cells.append("skipped" if key == RANKED_BY else "")
                continue
            cell = _fmt(arms[n]["summary"][key], scale)
            ratio = ratios.get(n, {}).get(key, math.nan)
            if best is not None and not math.isnan(ratio):
                cell += f" {ratio:.2f}x"
            cells.append(cell)
        row(f"{label} {unit}", cells)
    pods = next((list(a["summary"]["share"]) for a in arms.values() if "summary" in a), [])
    for pod in pods:
        row(
            f"share {pod}",
            [
                f"{arms[n]['summary']['share'][pod]:.0%}" if "summary" in arms[n] else ""
                for n in names
            ],
        )
    for key in ("requests", "errors", "cut"):
        row(key, [str(arms[n]["summary"][key]) if "summary" in arms[n] else "" for n in names])
    if any("router_state" in a for a in arms.values()):
        row("by prediction", [_predicted_share(arms[n].get("router_state")) for n in names])
    if any("adapt" in a for a in arms.values()):
        cells = []
        for n in names:
            if "adapt" not in arms[n]:
                cells.append("")
                continue
            view = headline_adapt(arms[n]["adapt"])
            cells.append(_adapt_cell(view))
        row("adapt/settle s", cells)
    for n in names:
        if "skipped" in arms[n]:
            print(f"   {n}: skipped ({arms[n]['skipped']})")
    print(f"   ratios (Nx) against the best vllm-router policy here: {best or 'none ran'}")


def _predicted_share(state: Mapping[str, float] | None) -> str:
    """Share of slogate's decisions made by the predictor (the rest by its fallback)."""
    if not state:
        return ""
    predicted = state.get("decisions_predicted", 0.0)
    total = predicted + state.get("decisions_fallback", 0.0)
    return f"{predicted / total:.0%}" if total else "-"


def _adapt_cell(view: Mapping[str, Any]) -> str:
    """``first/settled`` seconds, ``>N`` when not within the ``N`` s observed; ``(c)`` from the
    client side, ``(s)`` from the pods' counters."""

    def fmt(value: float | None) -> str:
        return f">{view['observed_s']:g}" if value is None else f"{value:g}"

    tag = "c" if view["method"] == "client" else "s"
    return f"{fmt(view['adapt_s'])}/{fmt(view.get('settled_s'))} ({tag})"


def summary_runs(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per cell, per arm: p90 TTFT as a ratio to the best peer of each run of the cell, in run
    order (``nan`` when the run had no peer; no value for a run the arm was skipped in); and
    the skip reason and best peer of each run."""
    out: dict[str, dict[str, Any]] = {}
    for report in reports:
        row = out.setdefault(report["cell"], {"arms": {}, "best_peer": [], "skipped": None})
        if report.get("skipped"):
            row["skipped"] = report["skipped"]
        row["best_peer"].append(report.get("best_peer") or "-")
        for name, entry in report.get("arms", {}).items():
            values = row["arms"].setdefault(name, [])
            if "skipped" not in entry:
                values.append(report["ratios"].get(name, {}).get(RANKED_BY, math.nan))
    return out


def summary_table(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | str]]:
    """Rows = cells, columns = arms: p90 TTFT as a ratio to the cell's best peer; the median
    over the cell's runs when it ran more than once (each run's ratio is to that run's best
    peer, so a run is compared with itself). The best peer named is the most frequent one."""
    table: dict[str, dict[str, float | str]] = {}
    for cell, runs in summary_runs(reports).items():
        row: dict[str, float | str] = {}
        if runs["skipped"]:
            row["skipped"] = runs["skipped"]
        for name, values in runs["arms"].items():
            known = sorted(v for v in values if not math.isnan(v))
            if not values:
                row[name] = "skipped"
            elif not known:
                row[name] = math.nan
            else:
                row[name] = statistics.median(known)
        row["best_peer"] = Counter(runs["best_peer"]).most_common(1)[0][0]
        table[cell] = row
    return table


def print_summary(
    table: Mapping[str, Mapping[str, float | str]],
    labels: Mapping[str, str],
    width: int = 16,
    runs: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The summary table; with ``runs`` (:func:`summary_runs`) of cells run more than once, the
    median and then every run's ratio."""
    names = list(dict.fromkeys(n for row in table.values() for n in row if n in labels))
    repeated = runs is not None and any(len(r["best_peer"]) > 1 for r in runs.values())
    what = "median over runs of " if repeated else ""
    print(
        f"\n{what}p90 TTFT / best vllm-router policy's p90 TTFT "
        "(lower is better; 1.00 = the best peer)"
    )
    print(f"{'cell':<36}" + "".join(f"{labels[n]:>{width}}" for n in names) + "  best peer")
    for cell, row in table.items():
        if "skipped" in row:
            print(f"{cell:<36}  skipped: {row['skipped']}")
            continue
        cells = []
        for n in names:
            value = row.get(n, "")
            if isinstance(value, str):
                cells.append(value)
            else:
                cells.append("-" if math.isnan(value) else f"{value:.2f}")
        print(f"{cell:<36}" + "".join(f"{c:>{width}}" for c in cells) + f"  {row['best_peer']}")
    if not repeated or runs is None:
        return
    print("\neach run's ratio, in run order")
    for cell, run in runs.items():
        if run["skipped"]:
            continue
        cells = [
            "/".join("-" if math.isnan(v) else f"{v:.2f}" for v in run["arms"].get(n, []))
            for n in names
        ]
        print(f"{cell:<36}" + "".join(f"{c:>{width}}" for c in cells))
