"""The soak benchmark's summary math: resources over time, latency percentiles, the gateway's
own counters and histograms (from ``/metrics``), its log, and the printed table."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtest.client import percentile
from loadtest.soak_procs import ProcSample, Sample

MIB = 1024.0
DISPATCH = "slogate_request_dispatch_duration_seconds"
COUNTERS = (
    "slogate_upstream_errors_total",
    "slogate_upstream_retries_total",
    "slogate_upstream_retries_denied_total",
    "slogate_endpoint_ejections_total",
    "slogate_http_requests_total",
    "inference_objective_request_error_total",
    "slogate_background_task_errors_total",
    "slogate_config_reloads_total",
)
RSS_GROWTH_LIMIT = 0.10
"""RSS counts as flat when it ends at most 10 % above its start (after the warm-up)."""
FD_GROWTH_LIMIT = 0.05
"""Open file descriptors count as flat within 5 % of their start (under the same load)."""


def quantile(values: Sequence[float], q: float) -> float:
    return percentile(list(values), q) if values else math.nan


# -- resources -----------------------------------------------------------------------------------
def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, per minute."""
    if len(points) < 2:
        return math.nan
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return math.nan
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def resource_summary(
    samples: Sequence[Sample],
    *,
    window_start_s: float,
    window_end_s: float,
    baseline: ProcSample | None,
    after_idle: ProcSample | None,
    fds_before: Mapping[str, int] | None = None,
    fds_after_idle: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The gateway's RSS (MiB) and open FDs: before the load, at the window's start (the end of
    the warm-up) and end (under load), their max and slope over the window, and after the
    idle time; every role's CPU use over the window as a share of one core."""
    window = [
        s for s in samples if window_start_s <= s.at_s <= window_end_s and s.gateway is not None
    ]
    out: dict[str, Any] = {
        "samples": len(window),
        "baseline": _proc_json(baseline),
        "after_idle": _proc_json(after_idle),
    }
    if not window:
        return out
    first, last = window[0], window[-1]
    assert first.gateway is not None
    assert last.gateway is not None
    rss = [(s.at_s, s.gateway.rss_kib / MIB) for s in window if s.gateway is not None]
    fds = [(s.at_s, float(s.gateway.fds)) for s in window if s.gateway is not None]
    start_rss, end_rss = first.gateway.rss_kib / MIB, last.gateway.rss_kib / MIB
    out |= {
        "start_at_s": first.at_s,
        "end_at_s": last.at_s,
        "rss_mib": {
            "start": round(start_rss, 1),
            "end": round(end_rss, 1),
            "max": round(max(v for _, v in rss), 1),
            "slope_per_min": round(slope_per_min(rss), 3),
            "growth": round(end_rss / start_rss - 1, 4),
        },
        "fds": {
            "start": first.gateway.fds,
            "end": last.gateway.fds,
            "max": int(max(v for _, v in fds)),
            "slope_per_min": round(slope_per_min(fds), 2),
            "growth": round(last.gateway.fds / max(first.gateway.fds, 1) - 1, 4),
        },
    }
    if first.gateway_fds is not None and last.gateway_fds is not None:
        out["fds_by_kind"] = {
            "before_load": dict(fds_before or {}),
            "start": first.gateway_fds,
            "end": last.gateway_fds,
            "after_idle": dict(fds_after_idle or {}),
        }
    if baseline is not None and after_idle is not None:
        out["fds_after_idle_minus_before_load"] = after_idle.fds - baseline.fds
        out["rss_mib_after_idle_minus_start"] = round(after_idle.rss_kib / MIB - start_rss, 1)
    out["rss_flat"] = out["rss_mib"]["growth"] <= RSS_GROWTH_LIMIT
    out["fds_flat"] = abs(out["fds"]["growth"]) <= FD_GROWTH_LIMIT
    out["flat_rule"] = (
        f"RSS end <= start x {1 + RSS_GROWTH_LIMIT:g}; FDs end within "
        f"{FD_GROWTH_LIMIT:.0%} of start (both under load, after the warm-up)"
    )
    elapsed = last.at_s - first.at_s
    if elapsed > 0:
        out["cpu_percent_of_one_core"] = {
            role: round((last.cpu_s.get(role, 0.0) - first.cpu_s.get(role, 0.0)) / elapsed * 100, 1)
            for role in last.cpu_s
        }
    out["series"] = [
        {
            "at_s": round(s.at_s, 1),
            "rss_mib": round(s.gateway.rss_kib / MIB, 1),
            "fds": s.gateway.fds,
        }
        for s in samples
        if s.gateway is not None
    ]
    return out


def _proc_json(sample: ProcSample | None) -> dict[str, float] | None:
    if sample is None:
        return None
    return {"rss_mib": round(sample.rss_kib / MIB, 1), "fds": sample.fds}


# -- latency -------------------------------------------------------------------------------------
def latency_summary(
    completed: Iterable[Sequence[float]], *, from_s: float, to_s: float
) -> dict[str, float]:
    """TTFT and e2e percentiles (ms) of completed requests sent in ``[from_s, to_s)``."""
    rows = [r for r in completed if from_s <= r[0] < to_s]
    ttft = [r[1] * 1000 for r in rows if r[1] >= 0]
    e2e = [r[2] * 1000 for r in rows]
    return {
        "requests": len(rows),
        "ttft_p50_ms": round(quantile(ttft, 50), 2),
        "ttft_p99_ms": round(quantile(ttft, 99), 2),
        "e2e_p50_ms": round(quantile(e2e, 50), 2),
        "e2e_p99_ms": round(quantile(e2e, 99), 2),
    }


def added_latency(direct: Mapping[str, float], gateway: Mapping[str, float]) -> dict[str, float]:
    """Gateway minus direct, per percentile of :func:`latency_summary`."""
    return {
        key.replace("_ms", "_added_ms"): round(gateway[key] - direct[key], 2)
        for key in ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms")
    }


# -- the gateway's /metrics ----------------------------------------------------------------------
def read_metrics(text: str) -> dict[str, float]:
    """The samples this benchmark reads, keyed ``name{label=value,...}`` (labels sorted)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(DISPATCH) or sample.name in COUNTERS:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def histogram_quantile(buckets: Mapping[float, float], q: float) -> float:
    """Prometheus's ``histogram_quantile``: linear within the bucket holding rank ``q``
    (``buckets``: upper bound -> cumulative count, ``inf`` included)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def dispatch_summary(counts: Mapping[str, float]) -> dict[str, float]:
    """p50, p99 and mean (ms) of the dispatch histogram in ``counts`` (a delta or a total)."""
    buckets: dict[float, float] = {}
    for key, value in counts.items():
        if key.startswith(f"{DISPATCH}_bucket{{"):
            le = key.split("le=", 1)[1].rstrip("}").split(",", 1)[0]
            buckets[float(le)] = value
    total = counts.get(f"{DISPATCH}_count{{}}", 0.0)
    seconds = counts.get(f"{DISPATCH}_sum{{}}", 0.0)
    return {
        "requests": int(total),
        "p50_ms": round(histogram_quantile(buckets, 0.50) * 1000, 3),
        "p99_ms": round(histogram_quantile(buckets, 0.99) * 1000, 3),
        "mean_ms": round(seconds / total * 1000, 3) if total else math.nan,
    }


def counters_by(counts: Mapping[str, float], name: str, label: str) -> dict[str, float]:
    """``name``'s samples in ``counts`` summed by one label."""
    out: dict[str, float] = {}
    for key, value in counts.items():
        metric, _, labels = key.partition("{")
        if metric != name:
            continue
        pairs = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if "=" in p)
        name_of = pairs.get(label, "")
        out[name_of] = out.get(name_of, 0.0) + value
    return dict(sorted(out.items()))


# -- the gateway's log ---------------------------------------------------------------------------
def log_summary(text: str) -> dict[str, Any]:
    """Lines by level and event name (``<date> <time> LEVEL event k=v...``), and tracebacks."""
    events: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split(maxsplit=4)
        if len(parts) >= 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
            events[f"{parts[2]} {parts[3]}"] += 1
    return {
        "lines": dict(events.most_common()),
        "tracebacks": text.count("Traceback (most recent call last)"),
    }
