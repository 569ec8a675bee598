"""The replica benchmark end to end: one gateway, then two in front of fresh sims, the driver
alternating requests between them, and the report built from both (sims at 20x real time,
~2 s of load per run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from loadtest.bench_replicas import (
    THRESHOLD,
    ReplicaRun,
    arm_report,
    compare_arm,
    gateway_for,
    summary_table,
)
from loadtest.fleet import ClientRecord, Phase, Pod, SimSpec, WorkloadSpec
from loadtest.matrix import ArmRun, MatrixSettings
from loadtest.report import write_report
from loadtest.routers import arm_named
from loadtest.simctl import PodCounters

SIMS = SimSpec(speeds=(2.0, 1.0), time_scale=20.0, max_num_seqs=16, kv_blocks=2048)
WORKLOAD = WorkloadSpec(
    trace="azure-code",
    length_scale=0.05,
    seed=1,
    phases=(Phase("load70", 1.0, 10.0), Phase("load90", 1.0, 10.0)),
)
SETTINGS = MatrixSettings(duration_s=2.0, drain_s=3.0, lead_s=0.5)
PODS = {"pod0-x2", "pod1-x1"}


def test_requests_alternate_between_the_replicas() -> None:
    assert [gateway_for(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [gateway_for(i, 3) for i in range(5)] == [0, 1, 2, 0, 1]


async def test_two_replicas_split_the_same_workload_and_the_report_compares_them(
    tmp_path: Path,
) -> None:
    runs = await compare_arm(
        arm_named("predicted-latency"),
        SIMS,
        WORKLOAD,
        SETTINGS,
        replicas=2,
        log_dir=tmp_path,
        progress=lambda _: None,
    )
    assert [r.replicas for r in runs] == [1, 2]
    sent = len(WORKLOAD.arrivals())
    for run in runs:
        assert len(run.run.records) == sent  # the same workload both times
        assert len(run.gateways) == run.replicas
    # Both replicas answered completions, each about half of them (the client's split).
    for g, state in enumerate(runs[1].gateways):
        assert state["completions_answered"] == sum(
            gateway_for(r.index, 2) == g for r in runs[1].run.records if r.error is None
        )
        assert state["completions_answered"] > 0

    report = arm_report(runs)
    out = tmp_path / "bench_replicas.json"
    write_report(out, "bench_replicas", cells=[{"cell": "smoke", "arms": {"pl": report}}])
    loaded = json.loads(out.read_text())["cells"][0]["arms"]["pl"]
    assert set(loaded["gateways"]) == {"1", "2"}
    one, two = loaded["gateways"]["1"], loaded["gateways"]["2"]
    for entry in (one, two):
        median = entry["median"]
        assert {"ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p90_s"} <= set(median)
        assert set(median["share"]) == PODS
        assert median["errors"] == 0
        assert 0 < median["cpu_busy"] <= 1  # the machine's view, for judging the run
        assert median["send_late_ms_p99"] >= 0
        assert median["sims_cpu_s"] > 0
    assert len(one["runs"][0]["gateways"]) == 1
    per_gateway = two["runs"][0]["gateways"]
    assert [g["requests"] for g in per_gateway] == [(sent + 1) // 2, sent // 2]
    assert all(set(g["share_by_header"]) == PODS for g in per_gateway)
    assert all(g["state"]["completions_answered"] > 0 for g in per_gateway)
    ratio = loaded["ratio"]["ttft_p90_s"]
    assert ratio == two["median"]["ttft_p90_s"] / one["median"]["ttft_p90_s"]
    assert loaded["worse_than_threshold"] == (ratio > THRESHOLD)
    table = summary_table([{"cell": "smoke", "arms": {"pl": report, "x": {"skipped": "no"}}}])
    assert table["smoke"]["x"] == "skipped"
    assert not math.isnan(float(table["smoke"]["pl"]))


def replica_run(replicas: int, routing: int, ttft_s: float) -> ReplicaRun:
    run = ArmRun(arm=arm_named("load-prefix"), pods=[Pod("pod0-x2", "http://a", 2.0)])
    run.records = [
        ClientRecord(i, "load70", 0.0, 200, "pod0-x2", ttft_s, 0.02, 1.0, 10, 5) for i in range(6)
    ]
    run.final = {"pod0-x2": PodCounters(6, 6, 0)}
    host = {"cpu_busy": 0.5, "send_late_ms_p99": 1.0, "sims_late_ms_p99": 2.0}
    return ReplicaRun(replicas, routing, run, [{}] * replicas, host)


def test_the_control_run_is_reported_against_one_gateway_and_medians_span_repeats() -> None:
    runs = [
        replica_run(1, 1, 0.1),
        replica_run(3, 3, 0.2),
        replica_run(3, 1, 0.1),
        replica_run(1, 1, 0.3),
        replica_run(3, 3, 0.2),
        replica_run(3, 1, 0.1),
    ]
    report = arm_report(runs)
    assert list(report["gateways"]) == ["1", "3", "3-up-1-routing"]
    assert report["gateways"]["1"]["median"]["ttft_p90_s"] == 0.2  # of 0.1 and 0.3
    assert report["ratio"]["ttft_p90_s"] == 1.0
    assert report["control_ratio"]["ttft_p90_s"] == 0.5
    assert not report["worse_than_threshold"]
    # Nothing went to the replicas the control run left idle.
    control = report["gateways"]["3-up-1-routing"]["runs"][0]["gateways"]
    assert [g["requests"] for g in control] == [6, 0, 0]
    split = report["gateways"]["3"]["runs"][0]["gateways"]
    assert [g["requests"] for g in split] == [2, 2, 2]
    table = summary_table([{"cell": "c", "arms": {"load-prefix": report}}])
    assert table["c"] == {"load-prefix": 1.0, "load-prefix (control)": 0.5}
