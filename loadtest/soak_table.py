"""The soak benchmark's printed summary, from its report (the JSON's fields)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _reasons(reasons: Mapping[str, int], limit: int = 4) -> str:
    items = sorted(reasons.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{name} {count:,}" for name, count in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "")


def table_lines(report: Mapping[str, Any]) -> list[str]:
    s = report["settings"]
    lines = [
        "",
        f"soak: {s['concurrency']} streams, {s['pods']} pods (time scale "
        f"{s['sims']['time_scale']:g}, max_num_seqs {s['sims']['max_num_seqs']}), preset "
        f"{s['preset']}, warm-up {s['warmup_s']:g} s + {s['duration_s']:g} s of faults; "
        f"read-idle timeout {s['read_idle_timeout_s']:g} s, hung after {s['hung_s']:g} s silent",
    ]
    sighup = report.get("sighup", {})
    if sighup.get("requested"):
        line = f"SIGHUP every {s['reload_every_s']:g} s: {sighup.get('detail', '?')}"
        if sighup.get("supported"):
            line += f"; sent {sighup.get('sent', 0)}, survived {sighup.get('survived', 0)}"
        else:
            line += " -> no SIGHUP sent during the run"
        lines.append(line)
    if report.get("stopped_early"):
        lines.append(f"STOPPED EARLY: {report['stopped_early']}")
    counts = report.get("counts")
    if counts:
        reasons = report.get("reasons", {})
        lines += ["", "| class | requests | reasons |", "|---|---:|---|"]
        for name in ("completed", "error", "lost", "hung"):
            lines.append(f"| {name} | {counts[name]:,} | {_reasons(reasons.get(name, {}))} |")
        lines.append(f"| total | {counts['total']:,} | |")
        claims = report["claims"]
        lines.append(
            f"zero lost: {'yes' if claims['zero_lost'] else 'NO'}; "
            f"zero hung: {'yes' if claims['zero_hung'] else 'NO'}; "
            f"completed short of max_tokens: {report['short']:,}; "
            f"non-2xx without an OpenAI body: {report['no_openai_body']:,}"
        )
    res = report.get("resources", {})
    if "rss_mib" in res:
        rss, fds = res["rss_mib"], res["fds"]
        base, idle = res.get("baseline") or {}, res.get("after_idle") or {}
        lines += [
            "",
            "| gateway | before load | start (warmed up) | end | max | slope /min | idle after |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| RSS MiB | {_fmt(base.get('rss_mib'))} | {rss['start']} | {rss['end']} | "
            f"{rss['max']} | {rss['slope_per_min']:+.2f} | {_fmt(idle.get('rss_mib'))} |",
            f"| open FDs | {_fmt(base.get('fds'))} | {fds['start']} | {fds['end']} | "
            f"{fds['max']} | {fds['slope_per_min']:+.1f} | {_fmt(idle.get('fds'))} |",
            f"flat ({res['flat_rule']}): RSS {'yes' if res['rss_flat'] else 'NO'} "
            f"({rss['growth']:+.1%}), FDs {'yes' if res['fds_flat'] else 'NO'} "
            f"({fds['growth']:+.1%})",
        ]
        kinds = res.get("fds_by_kind")
        if kinds:
            lines.append(
                "FDs by kind (client connections / upstream connections / other): "
                + ", ".join(
                    f"{when} {k.get('client', 0):,} / {k.get('upstream', 0):,} / "
                    f"{k.get('other', 0):,}"
                    for when, k in kinds.items()
                    if k
                )
            )
        released = res.get("fds_after_idle_minus_before_load")
        if released is not None:
            lines.append(
                f"after the load and {s['idle_s']:g} s idle: FDs {released:+,} vs before the load "
                "(what the gateway still holds: pooled upstream connections, or leaks)"
            )
        cpu = res.get("cpu_percent_of_one_core")
        if cpu:
            lines.append(
                "CPU over the window, % of one core: "
                + ", ".join(f"{role} {pct:g}" for role, pct in cpu.items())
            )
    lines += ["", "added latency:"]
    dispatch = report.get("dispatch", {}).get("window")
    if dispatch:
        lines.append(
            f"  gateway-side, receipt to dispatch (slogate_request_dispatch_duration_seconds, "
            f"fault window, {dispatch['requests']:,} requests): p50 {dispatch['p50_ms']} ms, "
            f"p99 {dispatch['p99_ms']} ms, mean {dispatch['mean_ms']} ms"
        )
    cal = report.get("calibration")
    if cal:
        d, g, add = cal["direct"], cal["gateway"], cal["added"]
        lines.append(
            f"  client-side, {cal['concurrency']} streams to {cal['pod']} direct vs through a "
            f"gateway ({cal['rounds']} x {cal['seconds_per_arm']:g} s per arm, after "
            f"{cal.get('warmup_rounds', 0)} round(s) not counted): TTFT p50 "
            f"{d['ttft_p50_ms']} -> {g['ttft_p50_ms']} ms ({add['ttft_p50_added_ms']:+} ms), "
            f"p99 {d['ttft_p99_ms']} -> {g['ttft_p99_ms']} ms ({add['ttft_p99_added_ms']:+} ms); "
            f"e2e p99 {add['e2e_p99_added_ms']:+} ms "
            f"({d['requests']:,} / {g['requests']:,} requests)"
        )
    latency = report.get("latency", {})
    for phase in ("warmup", "window"):
        lat = latency.get(phase)
        if lat:
            lines.append(
                f"  soak {phase}, completed requests through the gateway: TTFT p50 "
                f"{lat['ttft_p50_ms']} ms, p99 {lat['ttft_p99_ms']} ms; e2e p50 "
                f"{lat['e2e_p50_ms']} ms, p99 {lat['e2e_p99_ms']} ms"
            )
    counters = report.get("gateway_counters")
    if counters:
        lines += ["", "gateway counters over the window:"]
        for name, values in counters.items():
            if values:
                lines.append(f"  {name}: " + ", ".join(f"{k} {v:g}" for k, v in values.items()))
    log = report.get("gateway_log")
    if log:
        lines.append(
            f"gateway log: {log['tracebacks']} tracebacks; "
            + (_reasons(log["lines"], limit=6) or "no warnings")
        )
    if report.get("fault_failures"):
        lines.append("fault failures: " + "; ".join(report["fault_failures"]))
    events = report.get("events", [])
    if events:
        lines.append(
            "faults: " + ", ".join(f"{e['at_s']:.0f}s {e['kind']} {e['target']}" for e in events)
        )
    lines.append(f"gateway at the end: {report.get('gateway_exit', '?')}")
    return lines
