"""One matrix arm end to end: fresh sims, the router in its own process, the driver, the pods'
counters, a slowdown, and the summary built from them (sims at 20x real time, ~3 s of load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.fleet import Phase, SimSpec, WorkloadSpec
from loadtest.matrix import Cell, MatrixSettings, run_arm
from loadtest.matrix_report import arm_adapt, arm_summary
from loadtest.routers import Arm, arm_named, find_vllm_router

SIMS = SimSpec(speeds=(2.0, 1.0), time_scale=20.0, max_num_seqs=16, kv_blocks=2048)
WORKLOAD = WorkloadSpec(
    trace="azure-code",
    length_scale=0.05,
    seed=1,
    phases=(Phase("load70", 1.5, 10.0), Phase("load90", 1.5, 10.0)),
)
SETTINGS = MatrixSettings(duration_s=3.0, drain_s=3.0, lead_s=0.5, slowdown_at=1 / 3)
CELL = Cell("vllm", "hetero", "azure-code", "slowdown")


async def run_smoke(arm: Arm, tmp_path: Path) -> None:
    run = await run_arm(
        arm, CELL, SIMS, WORKLOAD, SETTINGS, log_dir=tmp_path, vllm_router=find_vllm_router()
    )
    if run.skipped is not None:
        pytest.skip(run.skipped)
    summary = arm_summary(run)
    assert summary["requests"] == len(WORKLOAD.arrivals())
    assert summary["errors"] == 0
    assert set(summary["share"]) == {"pod0-x2", "pod1-x1"}
    assert (
        sum(run.final[p].completed for p in summary["share"])
        == summary["requests"] - (summary["cut"])
    )
    assert summary["ttft_p90_s"] > 0
    assert run.samples, "the pods' counters were sampled"
    adapt = arm_adapt(run, WORKLOAD, SETTINGS)
    assert adapt["slowed_pod"] == "pod0-x2"
    assert adapt["sims"]["windows"]
    if not arm.is_peer:
        assert summary["share_by_header"].keys() == summary["share"].keys()
        assert "client" in adapt
        state = run.router_state
        assert state["decisions_predicted"] + state["decisions_fallback"] == summary["requests"]


async def test_a_slogate_arm_in_its_own_process(tmp_path: Path) -> None:
    await run_smoke(arm_named("predicted-latency"), tmp_path)


async def test_a_slogate_arm_with_its_own_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "mean.yaml"
    config.write_text("predictor:\n  objective: mean\n")
    await run_smoke(arm_named(f"slogate:predicted-latency@{config}"), tmp_path)


@pytest.mark.skipif(find_vllm_router() is None, reason="vllm-router is not installed")
async def test_a_vllm_router_arm_in_its_own_process(tmp_path: Path) -> None:
    await run_smoke(arm_named("round_robin"), tmp_path)
