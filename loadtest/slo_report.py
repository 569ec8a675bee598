"""What the SLO benchmark reports: per-class attainment, goodput and shedding, and the targets.

Pure functions of the driver's records and the class of each arrival, so they are tested on
made-up records.

- Only requests of the measured phase count. A request answered 429 was **shed**; every other
  request was **admitted** (a 5xx or a broken stream is admitted and failed).
- An admitted request **meets** its class's objectives when each stated one is measured and
  met: TTFT when its first token came within the objective; TPOT only once it finished (a
  request cut at the drain deadline or failed has no TPOT, so it misses; a finished one with a
  single token has none to judge and meets it). A class with a TTFT objective alone (the
  sheddable background) is judged when its first token arrives, cut later or not.
- **Attainment** of a class = admitted requests meeting its objectives / admitted requests;
  **goodput** = those requests per second of the measured window; **shed rate** = shed / sent.
- Latency percentiles of a class are over its admitted requests that did not fail; a cut
  request counts with lower bounds (its TTFT, if no token had come, is the time it had waited,
  as in the routing matrix); TPOT over finished requests. Per pod counts come from the
  ``x-slogate-endpoint`` response header (slogate only).

The targets (issue 9), for ``slogate:predicted-latency-slo`` (the *SLO arm*):

1. attainment of admitted interactive requests >= 99 % at every measured load below 1.0;
2. >= 90 % at 1.3x the load where load-prefix's attainment falls under 90 % (the first
   crossing, linearly interpolated between measured loads; the SLO arm's attainment there
   interpolated the same way);
3. goodput >= 1.5x the best of load-prefix and the vllm-router policies at saturation: load
   1.1, or else the first measured load >= 1.0.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loadtest.client import percentile
from loadtest.fleet import ClientRecord
from loadtest.slo_mix import TrafficClass

SHED_STATUS = 429
HEADLINE = "interactive"
"""The class the table, goodput and the targets are about."""
MEASURED = "measured"
ATTAINMENT_BELOW_SATURATION = 0.99
ATTAINMENT_PAST_CROSSING = 0.90
CROSSING = 0.90
CROSSING_FACTOR = 1.3
GOODPUT_RATIO = 1.5
SATURATION_LOAD = 1.1


def is_shed(record: ClientRecord) -> bool:
    return record.status == SHED_STATUS


def failed(record: ClientRecord) -> bool:
    """Admitted and ended with an error other than the drain deadline's cut."""
    return record.error is not None and not record.cut and not is_shed(record)


def meets(record: ClientRecord, cls: TrafficClass) -> bool:
    """Whether an admitted request met every objective of ``cls`` (see the module doc)."""
    if failed(record) or is_shed(record):
        return False
    if cls.tpot_ms is not None:
        if record.cut:
            return False
        if record.tpot_s is not None and record.tpot_s * 1000 > cls.tpot_ms:
            return False
    if cls.ttft_ms is not None:
        return record.ttft_s is not None and record.ttft_s * 1000 <= cls.ttft_ms
    return True


def _q(values: list[float], p: float) -> float:
    return percentile(values, p) if values else math.nan


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def class_summary(
    records: Sequence[ClientRecord], cls: TrafficClass, window_s: float
) -> dict[str, Any]:
    """Counts, shedding, latencies and (for a class with objectives) attainment and goodput."""
    shed = sum(is_shed(r) for r in records)
    admitted = [r for r in records if not is_shed(r)]
    served = [r for r in admitted if not failed(r)]
    out: dict[str, Any] = {
        "sent": len(records),
        "admitted": len(admitted),
        "shed": shed,
        "errors": sum(failed(r) for r in admitted),
        "cut": sum(r.cut for r in admitted),
        "completed": sum(r.error is None for r in admitted),
        "shed_rate": _ratio(shed, len(records)),
        "ttft_p50_s": _q([r.ttft_s if r.ttft_s is not None else r.e2e_s for r in served], 50),
        "ttft_p90_s": _q([r.ttft_s if r.ttft_s is not None else r.e2e_s for r in served], 90),
        "tpot_p90_s": _q(
            [r.tpot_s for r in served if r.error is None and r.tpot_s is not None], 90
        ),
        # Which pod served them, when the router says (slogate's x-slogate-endpoint).
        "by_endpoint": dict(sorted(Counter(r.endpoint for r in admitted if r.endpoint).items())),
    }
    if cls.has_objectives:
        met = sum(meets(r, cls) for r in admitted)
        out["met"] = met
        out["attainment"] = _ratio(met, len(admitted))
        out["goodput_rps"] = met / window_s if window_s > 0 else math.nan
    return out


def run_summary(
    records: Sequence[ClientRecord],
    mix: Sequence[TrafficClass],
    assigned: Sequence[TrafficClass],
    window_s: float,
    *,
    phase: str = MEASURED,
) -> dict[str, Any]:
    """Everything one run is judged by, over the requests of ``phase``; ``assigned[i]`` is the
    class of arrival ``i``. Headline keys (``attainment``, ``goodput_rps``, latencies) are
    the :data:`HEADLINE` class's."""
    measured = [r for r in records if r.phase == phase]
    by_class = {
        c.name: class_summary(
            [r for r in measured if assigned[r.index].name == c.name], c, window_s
        )
        for c in mix
    }
    shed = sum(is_shed(r) for r in measured)
    headline = by_class.get(HEADLINE, {})
    return {
        "window_s": window_s,
        "sent": len(measured),
        "admitted": len(measured) - shed,
        "shed": shed,
        "errors": sum(failed(r) for r in measured),
        "cut": sum(r.cut for r in measured),
        "shed_rate": _ratio(shed, len(measured)),
        "attainment": headline.get("attainment", math.nan),
        "goodput_rps": headline.get("goodput_rps", math.nan),
        "ttft_p50_s": headline.get("ttft_p50_s", math.nan),
        "ttft_p90_s": headline.get("ttft_p90_s", math.nan),
        "tpot_p90_s": headline.get("tpot_p90_s", math.nan),
        "classes": by_class,
        # Every phase, for the cross-check with the gateway's own counters (which see all).
        "shed_all_phases": {
            c.name: sum(is_shed(r) for r in records if assigned[r.index].name == c.name)
            for c in mix
        },
    }


# -- curves over load ----------------------------------------------------------------------------
Curve = Sequence[tuple[float, float]]
"""``(load, value)`` points in increasing load; values may be NaN (nothing to judge)."""


def curve(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted by load, without NaN values."""
    return sorted((x, y) for x, y in points if not math.isnan(y))


def interpolate(points: Curve, x: float) -> float | None:
    """The value at ``x``, linear between the measured points around it; None outside them."""
    if not points or not points[0][0] <= x <= points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]  # a single point, at x


def first_below(points: Curve, threshold: float) -> tuple[float, bool] | None:
    """The load where the curve first falls under ``threshold``, interpolated between the last
    point at or above it and the first under it: ``(load, interpolated)``; ``(lowest load,
    False)`` when it is under already at the lowest measured load; None when never."""
    for i, (x, y) in enumerate(points):
        if y < threshold:
            if i == 0:
                return x, False
            x0, y0 = points[i - 1]
            return x0 + (x - x0) * (y0 - threshold) / (y0 - y), True
    return None


def saturation_load(loads: Iterable[float]) -> float | None:
    """1.1 when measured, else the first measured load >= 1.0."""
    ordered = sorted(loads)
    for load in ordered:
        if math.isclose(load, SATURATION_LOAD):
            return load
    return next((load for load in ordered if load >= 1.0), None)


def evaluate_targets(
    results: Mapping[str, Mapping[float, Mapping[str, Any]]],
    *,
    slo_arm: str,
    load_prefix_arm: str | None,
    baselines: Sequence[str],
) -> dict[str, Any]:
    """The three targets for ``slo_arm``; ``results[arm][load]`` is a :func:`run_summary`.
    ``baselines`` are the arms whose best goodput target 3 compares with (load-prefix and the
    vllm-router policies that ran)."""
    if slo_arm not in results:
        return {"skipped": f"{slo_arm} did not run"}
    slo = results[slo_arm]
    attainment = curve((load, s["attainment"]) for load, s in slo.items())
    return {
        "slo_arm": slo_arm,
        "below_saturation": _target_below_saturation(attainment),
        "past_crossing": _target_past_crossing(
            attainment, None if load_prefix_arm is None else results.get(load_prefix_arm)
        ),
        "goodput_at_saturation": _target_goodput(results, slo_arm, baselines),
    }


def _target_below_saturation(attainment: Curve) -> dict[str, Any]:
    below = [(load, a) for load, a in attainment if load < 1.0]
    if not below:
        return {"met": None, "note": "no measured load below 1.0"}
    load, worst = min(below, key=lambda p: p[1])
    return {
        "target": ATTAINMENT_BELOW_SATURATION,
        "min_attainment": worst,
        "at_load": load,
        "loads": [p[0] for p in below],
        "met": worst >= ATTAINMENT_BELOW_SATURATION,
    }


def _target_past_crossing(
    attainment: Curve, load_prefix: Mapping[float, Mapping[str, Any]] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"target": ATTAINMENT_PAST_CROSSING, "met": None}
    if load_prefix is None:
        return out | {"note": "load-prefix did not run"}
    reference = curve((load, s["attainment"]) for load, s in load_prefix.items())
    crossing = first_below(reference, CROSSING)
    if crossing is None:
        top = reference[-1][0] if reference else math.nan
        return out | {"note": f"load-prefix stays >= {CROSSING:.0%} up to load {top:g}"}
    load, interpolated = crossing
    at = CROSSING_FACTOR * load
    value = interpolate(attainment, at)
    out |= {
        "load_prefix_crossing": load,
        "crossing_interpolated": interpolated,
        "at_load": at,
        "attainment": value,
    }
    notes = []
    if not interpolated:
        notes.append(
            f"load-prefix is under {CROSSING:.0%} already at the lowest load measured ({load:g}), "
            "so its crossing is at or below it: judged at a load at least as high as the "
            "target's (conservative)"
        )
    if value is None:
        notes.append(f"load {at:.2f} is beyond the measured range")
    if notes:
        out["note"] = "; ".join(notes)
    return out if value is None else out | {"met": value >= ATTAINMENT_PAST_CROSSING}


def _target_goodput(
    results: Mapping[str, Mapping[float, Mapping[str, Any]]],
    slo_arm: str,
    baselines: Sequence[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {"target": GOODPUT_RATIO, "met": None}
    load = saturation_load(results[slo_arm])
    if load is None:
        return out | {"note": "no measured load >= 1.0"}
    out["at_load"] = load
    goodput = results[slo_arm][load]["goodput_rps"]
    others = {
        arm: results[arm][load]["goodput_rps"]
        for arm in baselines
        if arm in results and load in results[arm]
    }
    if not others:
        return out | {"goodput_rps": goodput, "note": "no baseline ran at this load"}
    best = max(others, key=lambda arm: others[arm])
    ratio = goodput / others[best] if others[best] > 0 else (math.inf if goodput > 0 else math.nan)
    return out | {
        "goodput_rps": goodput,
        "baselines_goodput_rps": others,
        "best_baseline": best,
        "ratio": ratio,
        "met": ratio >= GOODPUT_RATIO,
    }


def describe_targets(targets: Mapping[str, Any]) -> list[str]:
    """The targets as lines of text, with the measured numbers."""
    if "skipped" in targets:
        return [f"targets not evaluated: {targets['skipped']}"]

    def verdict(t: Mapping[str, Any]) -> str:
        return {True: "MET", False: "NOT MET", None: "not evaluated"}[t["met"]]

    one, two, three = (
        targets["below_saturation"],
        targets["past_crossing"],
        targets["goodput_at_saturation"],
    )
    lines = [f"targets for {targets['slo_arm']}:"]
    if "min_attainment" in one:
        lines.append(
            f"  (1) attainment below saturation >= {one['target']:.0%}: min "
            f"{one['min_attainment']:.1%} at load {one['at_load']:g} (loads "
            f"{', '.join(f'{x:g}' for x in one['loads'])}): {verdict(one)}"
        )
    else:
        lines.append(f"  (1) attainment below saturation: {one['note']}: {verdict(one)}")
    if "load_prefix_crossing" in two:
        value = two["attainment"]
        measured = "beyond the measured range" if value is None else f"{value:.1%}"
        lines.append(
            f"  (2) load-prefix falls under {CROSSING:.0%} at load "
            f"{two['load_prefix_crossing']:.2f}; attainment at {CROSSING_FACTOR:g}x = "
            f"{two['at_load']:.2f}: {measured} (target >= {two['target']:.0%}): {verdict(two)}"
        )
        if two.get("note"):
            lines.append(f"      {two['note']}")
    else:
        lines.append(f"  (2) attainment past load-prefix's crossing: {two['note']}: {verdict(two)}")
    if "ratio" in three:
        lines.append(
            f"  (3) goodput at saturation (load {three['at_load']:g}): "
            f"{three['goodput_rps']:.2f} req/s vs best baseline {three['best_baseline']} "
            f"{three['baselines_goodput_rps'][three['best_baseline']]:.2f} req/s = "
            f"{three['ratio']:.2f}x (target >= {three['target']:g}x): {verdict(three)}"
        )
    else:
        lines.append(f"  (3) goodput at saturation: {three['note']}: {verdict(three)}")
    return lines


# -- the table -----------------------------------------------------------------------------------
def _cell(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return "-"
    att, goodput, shed = summary["attainment"], summary["goodput_rps"], summary["shed_rate"]
    return (
        ("-" if math.isnan(att) else f"{att:.1%}")
        + f" {goodput:.2f}/s"
        + ("" if math.isnan(shed) else f" {shed:.1%}")
    )


def table_lines(
    results: Mapping[str, Mapping[float, Mapping[str, Any]]],
    labels: Mapping[str, str],
    rates: Mapping[float, float],
    *,
    width: int = 24,
) -> list[str]:
    """Rows = loads (x capacity and req/s), columns = arms: attainment, goodput, shed rate."""
    arms = list(results)
    lines = [
        f"{'load':<18}" + "".join(f"{labels.get(a, a):>{width}}" for a in arms),
        f"{'':<18}" + "".join(f"{'attain goodput shed':>{width}}" for _ in arms),
    ]
    for load in sorted(rates):
        lines.append(
            f"{f'{load:.2f}x {rates[load]:.2f}/s':<18}"
            + "".join(f"{_cell(results[a].get(load)):>{width}}" for a in arms)
        )
    return lines
