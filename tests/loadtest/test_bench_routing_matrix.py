"""The routing matrix's bookkeeping: cells, arms, ratios to the best peer, time-to-adapt."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtest.capacity import Capacity
from loadtest.fleet import ClientRecord, Pod, SimSpec
from loadtest.matrix import (
    ArmRun,
    Cell,
    CellRun,
    MatrixSettings,
    arm_order,
    describe_load,
    log_name,
    matrix_cells,
    slowed_pod,
    workload_spec,
)
from loadtest.matrix_report import (
    adapt_from_events,
    adapt_from_samples,
    arm_summary,
    best_peer,
    cell_report,
    print_summary,
    ratios_to,
    summary_runs,
    summary_table,
    time_to_adapt,
    time_to_settle,
)
from loadtest.routers import ARMS, PEER_ARMS, SLOGATE_ARMS, arm_named, router_command
from loadtest.simctl import CounterSample, PodCounters, counters_from_stats

PODS = [Pod("pod0-x2", "http://a", 2.0), Pod("pod1-x1", "http://b", 1.0)]


def record(
    index: int,
    *,
    ttft: float | None = 0.1,
    e2e: float = 1.0,
    endpoint: str = "",
    sent_at: float = 0.0,
    phase: str = "load70",
    error: str | None = None,
    cut: bool = False,
) -> ClientRecord:
    return ClientRecord(
        index=index,
        phase=phase,
        sent_at=sent_at,
        status=200,
        endpoint=endpoint,
        ttft_s=ttft,
        tpot_s=0.02,
        e2e_s=e2e,
        prompt_tokens=10,
        completion_tokens=5,
        error=error,
        cut=cut,
    )


def test_the_full_matrix_has_every_combination_grouped_by_engine_and_workload() -> None:
    cells = matrix_cells()
    assert len(cells) == 2 * 2 * 3 * 2
    assert len(set(cells)) == len(cells)
    assert cells[0] == Cell("vllm", "homo", "azure-conv", "steady")
    assert cells[1] == Cell("vllm", "homo", "azure-conv", "slowdown")
    assert cells[2] == Cell("vllm", "hetero", "azure-conv", "steady")
    # One (engine, workload) pair is contiguous, so its capacity is measured once.
    pairs = [(c.engine, c.workload) for c in cells]
    runs = [p for i, p in enumerate(pairs) if i == 0 or pairs[i - 1] != p]
    assert runs == list(dict.fromkeys(pairs))
    assert len(runs) == 2 * 3


def test_the_matrix_can_be_restricted_and_rejects_unknown_names() -> None:
    cells = matrix_cells(["slots"], ["hetero"], ["azure-conv"], ["steady", "slowdown"])
    assert [c.key for c in cells] == [
        "slots/hetero/azure-conv/steady",
        "slots/hetero/azure-conv/slowdown",
    ]
    with pytest.raises(ValueError, match="unknown sglang"):
        matrix_cells(["sglang"])


def test_six_arms_three_of_them_peers_found_by_name_label_or_policy() -> None:
    assert len(ARMS) == 6
    assert [a.is_peer for a in SLOGATE_ARMS] == [False] * 3
    assert [a.is_peer for a in PEER_ARMS] == [True] * 3
    assert arm_named("cache_aware").name == "vllm-router:cache_aware"
    assert arm_named("vllm-router:round_robin").setting == "round_robin"
    assert arm_named("least-request").kind == "slogate"
    with pytest.raises(ValueError, match="unknown arm"):
        arm_named("random")


def test_router_commands_name_every_pod() -> None:
    slogate = router_command(arm_named("load-prefix"), PODS, 9000, None)
    assert slogate[1:4] == ["-m", "gateway.cli", "serve"]
    assert "pod0-x2=http://a" in slogate
    assert slogate[slogate.index("--preset") + 1] == "load-prefix"
    peer = router_command(arm_named("power_of_two"), PODS, 9000, Path("/bin/vllm-router"))
    assert peer[0] == "/bin/vllm-router"
    assert peer[peer.index("--worker-urls") + 1 : peer.index("--worker-urls") + 3] == [
        "http://a",
        "http://b",
    ]
    assert peer[peer.index("--policy") + 1] == "power_of_two"
    with pytest.raises(RuntimeError, match="pip install"):
        router_command(arm_named("power_of_two"), PODS, 9000, None)


def test_a_slogate_arm_can_add_a_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "mean.yaml"
    config.write_text("predictor:\n  objective: mean\n")
    arm = arm_named(f"slogate:predicted-latency@{config}")
    assert (arm.kind, arm.setting, arm.config) == ("slogate", "predicted-latency", str(config))
    assert arm.label == "sg:predic@mean"
    command = router_command(arm, PODS, 9000, None)
    assert command[command.index("--config") + 1] == str(config)
    assert command[command.index("--preset") + 1] == "predicted-latency"
    assert "--config" not in router_command(arm_named("slogate:load-prefix"), PODS, 9000, None)
    with pytest.raises(ValueError, match="no configuration file"):
        arm_named(f"slogate:load-prefix@{tmp_path / 'missing.yaml'}")


def test_repeated_runs_alternate_the_arm_order_and_keep_their_logs_apart() -> None:
    arms = [arm_named(n) for n in ("predicted-latency", "power_of_two", "cache_aware")]
    assert arm_order(arms, 0) == arms
    assert arm_order(arms, 1) == arms[::-1]
    assert arm_order(arms, 2) == arms
    cell = Cell("vllm", "hetero", "azure-conv", "steady")
    config_arm = arm_named("slogate:load-prefix@config/examples/gateway.yaml")
    names = {log_name(cell, a, r) for a in (*arms, config_arm) for r in (0, 1)}
    assert len(names) == 8
    assert all("/" not in n and ":" not in n and n.endswith(".log") for n in names)


def _report(cell: str, repeat: int, ratios: dict[str, float], best: str) -> dict[str, object]:
    return {
        "cell": cell,
        "repeat": repeat,
        "arms": {name: {"summary": {}} for name in ratios},
        "best_peer": best,
        "ratios": {name: {"ttft_p90_s": value} for name, value in ratios.items()},
    }


def test_a_cell_run_several_times_is_summarised_by_the_median_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    p2c, ca = "vllm-router:power_of_two", "vllm-router:cache_aware"
    reports = [
        _report("c", 0, {"predicted-latency": 0.8, p2c: 1.0, ca: 1.2}, p2c),
        _report("c", 1, {"predicted-latency": 1.4, p2c: 1.1, ca: 1.0}, ca),
        _report("c", 2, {"predicted-latency": 0.9, p2c: 1.0, ca: 1.3}, p2c),
        _report("d", 0, {"predicted-latency": 0.7, p2c: 1.0}, p2c),
    ]
    runs = summary_runs(reports)
    assert runs["c"]["arms"]["predicted-latency"] == [0.8, 1.4, 0.9]
    assert runs["c"]["best_peer"] == [p2c, ca, p2c]
    table = summary_table(reports)
    assert table["c"]["predicted-latency"] == 0.9
    assert table["c"][ca] == 1.2
    assert table["c"]["best_peer"] == p2c
    assert table["d"]["predicted-latency"] == 0.7
    labels = {"predicted-latency": "sg:pred-lat", p2c: "vr:p2c", ca: "vr:ca"}
    print_summary(table, labels, runs=runs)
    out = capsys.readouterr().out
    assert "median over runs" in out
    assert "0.80/1.40/0.90" in out
    print_summary(summary_table(reports[3:]), labels, runs=summary_runs(reports[3:]))
    out = capsys.readouterr().out
    assert "median" not in out
    assert "each run" not in out


def test_the_best_peer_has_the_lowest_p90_ttft_and_ratios_are_to_it() -> None:
    keys = ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "e2e_p90_s")

    def summary(ttft_p90: float, other: float = 1.0) -> dict[str, float]:
        return {k: other for k in keys} | {"ttft_p90_s": ttft_p90}

    summaries = {
        "predicted-latency": summary(0.5, 2.0),
        "vllm-router:round_robin": summary(2.0),
        "vllm-router:power_of_two": summary(1.0, 4.0),
        "vllm-router:cache_aware": summary(math.nan),
    }
    peers = [a.name for a in PEER_ARMS]
    assert best_peer(summaries, peers) == "vllm-router:power_of_two"
    assert best_peer(summaries, []) is None
    ratios = ratios_to(summaries, "vllm-router:power_of_two")
    assert ratios["predicted-latency"]["ttft_p90_s"] == 0.5
    assert ratios["predicted-latency"]["e2e_p90_s"] == 0.5
    assert ratios["vllm-router:round_robin"]["ttft_p90_s"] == 2.0
    assert ratios["vllm-router:power_of_two"]["ttft_p50_s"] == 1.0
    assert math.isnan(ratios["vllm-router:cache_aware"]["ttft_p90_s"])


def test_time_to_adapt_is_the_end_of_the_first_window_under_half_the_share_before() -> None:
    assert time_to_adapt(0.4, [(2.0, 0.4), (3.0, 0.21), (4.0, 0.19), (5.0, 0.0)]) == 4.0
    assert time_to_adapt(0.4, [(2.0, 0.3), (3.0, 0.25)]) is None


def test_settling_needs_every_later_window_under_half() -> None:
    dip = [(2.0, 0.1), (3.0, 0.4), (4.0, 0.1), (5.0, 0.0)]
    assert time_to_adapt(0.4, dip) == 2.0
    assert time_to_settle(0.4, dip) == 4.0
    assert time_to_settle(0.4, [(2.0, 0.1), (3.0, 0.3)]) is None


def test_adapt_from_client_events() -> None:
    # Before the slowdown at 4 s the slowed pod gets every other request (share 0.5); from 6 s
    # on it gets none.
    events = [(t / 2, "pod0-x2" if i % 2 == 0 else "pod1-x1") for i, t in enumerate(range(12))]
    events += [(6.0 + t / 4, "pod1-x1") for t in range(16)]
    adapt = adapt_from_events(events, "pod0-x2", slowdown_s=4.0, end_s=10.0)
    assert adapt["share_before"] == 0.5
    assert adapt["windows"][0] == (2.0, 0.5)  # [4, 6): still every other one
    assert adapt["adapt_s"] == 3.0  # [5, 7): one of six
    assert adapt["observed_s"] == 6.0


def test_adapt_from_pod_counters_sampled_each_second() -> None:
    # 2 requests/s to each pod until 3 s, then only pod1 from 4 s on.
    counts = {"pod0-x2": 0, "pod1-x1": 0}
    samples = []
    for t in range(9):
        samples.append(CounterSample(at_s=float(t), dispatched=dict(counts)))
        counts["pod1-x1"] += 2
        if t < 4:
            counts["pod0-x2"] += 2
    adapt = adapt_from_samples(samples, "pod0-x2", slowdown_s=3.0, end_s=8.0)
    assert adapt["share_before"] == 0.5
    assert [w[0] for w in adapt["windows"]] == [2.0, 3.0, 4.0, 5.0]
    assert adapt["windows"][0] == (2.0, 2 / 6)  # [3, 5): two of six
    assert adapt["adapt_s"] == 3.0  # [4, 6): none
    missing = adapt_from_samples(samples[:2], "pod0-x2", slowdown_s=3.0, end_s=8.0)
    assert missing["adapt_s"] is None
    assert math.isnan(missing["share_before"])


def test_pod_counters_count_every_request_the_pod_was_given() -> None:
    stats = {"finished": {"stop": 1, "length": 5, "abort": 2}, "num_running": 3, "num_waiting": 4}
    assert counters_from_stats(stats) == PodCounters(dispatched=15, completed=6, aborted=2)


def test_summary_counts_cut_requests_with_lower_bounds_and_shares_from_the_pods() -> None:
    run = ArmRun(arm=arm_named("least-request"), pods=PODS)
    run.records = [record(i, ttft=0.1, endpoint="pod0-x2") for i in range(8)]
    run.records.append(record(8, ttft=None, e2e=30.0, cut=True, error="cut"))
    run.records.append(record(9, ttft=None, e2e=0.01, error="HTTP 503"))
    run.final = {
        "pod0-x2": PodCounters(dispatched=9, completed=6, aborted=1),
        "pod1-x1": PodCounters(dispatched=2, completed=2, aborted=0),
    }
    summary = arm_summary(run)
    assert (summary["requests"], summary["errors"], summary["cut"]) == (10, 1, 1)
    assert summary["ttft_p50_s"] == 0.1
    assert summary["ttft_p99_s"] == 30.0  # the cut request waited 30 s without a token
    assert summary["tpot_p90_s"] == 0.02
    assert summary["share"] == {"pod0-x2": 0.75, "pod1-x1": 0.25}
    assert summary["share_by_header"] == {"pod0-x2": 1.0, "pod1-x1": 0.0}


def test_a_cell_report_and_the_summary_show_skipped_arms() -> None:
    cell = Cell("vllm", "hetero", "azure-code", "steady")
    run = CellRun(cell=cell, sims=SimSpec(speeds=(2.0, 1.0)))
    ran = ArmRun(arm=arm_named("predicted-latency"), pods=PODS)
    ran.records = [record(i) for i in range(5)]
    ran.final = {p.name: PodCounters(3, 3, 0) for p in PODS}
    run.arms = [ran, ArmRun(arm=arm_named("round_robin"), skipped="vllm-router is not installed")]
    report = cell_report(run, MatrixSettings())
    assert report["best_peer"] is None
    assert report["arms"]["vllm-router:round_robin"]["skipped"] == "vllm-router is not installed"
    table = summary_table([report])
    assert table[cell.key]["vllm-router:round_robin"] == "skipped"
    assert math.isnan(float(table[cell.key]["predicted-latency"]))
    assert table[cell.key]["best_peer"] == "-"


def test_slowdown_load_is_stated_against_the_capacity_left() -> None:
    cap = Capacity(
        rps_per_speed=2.0,
        completions_rps=2.0,
        output_tokens_per_s=200.0,
        mean_output_tokens=100.0,
        concurrency=320,
        min_waiting=10,
        measured="now",
    )
    text = describe_load(Cell("vllm", "hetero", "azure-conv", "slowdown"), MatrixSettings(), cap)
    # speeds 2, 2, 1, 0.5 (5.5) -> 0.5, 2, 1, 0.5 (4.0) after the slowdown
    assert "x 5.5 = 11.00 req/s" in text
    assert "fleet capacity x0.73" in text
    # 70 % and 90 % of what is left after the slowdown: 51 % and 65 % before it.
    assert "load 51% then 65%" in text
    assert "so the load is 70% then 90% of what is left" in text
    assert slowed_pod(PODS).name == "pod0-x2"
    cell = Cell("vllm", "hetero", "azure-conv", "slowdown")
    rates = [p.rate_rps for p in workload_spec(cell, MatrixSettings(), 11.0).phases]
    assert rates == pytest.approx([0.7 * 8.0, 0.9 * 8.0], abs=0.01)


def test_sim_specs_round_trip_with_engine_params() -> None:
    spec = SimSpec(speeds=(2.0, 1.0), engine="slots", engine_params=(("itl_ms", 20.0),))
    assert SimSpec.from_json(spec.to_json()) == spec
    assert "engine slots, itl_ms 20" in spec.describe()
