"""The SLO benchmark: traffic classes, the summary math and targets, the header plumbing from the
driver to the router, and the command end to end (sims at 10x real time, a few seconds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from loadtest.bench_slo import SloSettings, capacity_spec, fleet_sims, slo_arm, workload_at
from loadtest.capacity import CapacitySpec
from loadtest.fleet import CUT_ERROR, ClientRecord, Phase, WorkloadSpec, drive, run_driver
from loadtest.matrix import FLEETS, Cell, MatrixSettings, sim_spec, workload_spec
from loadtest.slo_drive import Driven, gateway_view, parse_counters
from loadtest.slo_mix import (
    DEFAULT_MIX,
    OBJECTIVE_HEADER,
    TPOT_HEADER,
    TTFT_HEADER,
    TrafficClass,
    assign,
    class_of,
    format_mix,
    header_sets,
    normalised,
    parse_mix,
)
from loadtest.slo_report import (
    class_summary,
    describe_targets,
    evaluate_targets,
    first_below,
    interpolate,
    meets,
    run_summary,
    saturation_load,
    table_lines,
)

INTERACTIVE, BATCH, BACKGROUND = DEFAULT_MIX


# -- traffic classes -----------------------------------------------------------------------------
def test_classes_are_deterministic_per_seed_and_arrival_index() -> None:
    first = assign(DEFAULT_MIX, 5, 400)
    assert first == assign(DEFAULT_MIX, 5, 400)
    # An arrival's class depends on its index alone, not on how many arrivals there are.
    assert assign(DEFAULT_MIX, 5, 150) == first[:150]
    assert class_of(DEFAULT_MIX, 5, 399) == first[399]
    assert assign(DEFAULT_MIX, 6, 400) != first


def test_class_shares_are_respected() -> None:
    counts = Counter(c.name for c in assign(DEFAULT_MIX, 5, 20_000))
    assert counts["interactive"] / 20_000 == pytest.approx(0.5, abs=0.015)
    assert counts["batch"] / 20_000 == pytest.approx(0.3, abs=0.015)
    assert counts["background"] / 20_000 == pytest.approx(0.2, abs=0.015)
    skewed = parse_mix("a=9,b=1")
    share_a = sum(c.name == "a" for c in assign(skewed, 1, 5000)) / 5000
    assert share_a == pytest.approx(0.9, abs=0.02)
    assert all(c.name == "only" for c in assign(parse_mix("only=1,never=0"), 2, 500))


def test_each_class_sends_llm_d_headers() -> None:
    assert INTERACTIVE.headers() == {
        OBJECTIVE_HEADER: "standard",
        TTFT_HEADER: "1000",
        TPOT_HEADER: "50",
    }
    assert BATCH.headers() == {OBJECTIVE_HEADER: "standard"}
    assert BACKGROUND.headers() == {OBJECTIVE_HEADER: "sheddable", TTFT_HEADER: "3000"}
    assert header_sets([BATCH, INTERACTIVE, BATCH]) == [
        BATCH.headers(),
        INTERACTIVE.headers(),
        BATCH.headers(),
    ]


def test_the_mix_option_round_trips_and_rejects_nonsense() -> None:
    assert parse_mix(format_mix(DEFAULT_MIX)) == DEFAULT_MIX
    mix = parse_mix("chat=60:critical:ttft=500:tpot=40, bulk=40")
    assert mix == (
        TrafficClass(name="chat", share=0.6, objective="critical", ttft_ms=500, tpot_ms=40),
        TrafficClass(name="bulk", share=0.4),
    )
    for bad in ("", "a", "a=x", "a=1:ttft=-5", "a=1:speed=2", "a=1,a=2", "a=0", "a=-1,b=2"):
        with pytest.raises(ValueError):  # noqa: PT011 - each message names its entry
            parse_mix(bad)
    with pytest.raises(ValueError, match="no class"):
        normalised(())


# -- the summary math ----------------------------------------------------------------------------
def record(
    index: int,
    *,
    ttft: float | None = 0.2,
    tpot: float | None = 0.02,
    status: int = 200,
    phase: str = "measured",
    error: str | None = None,
    cut: bool = False,
    e2e: float = 3.0,
) -> ClientRecord:
    return ClientRecord(
        index=index,
        phase=phase,
        sent_at=0.0,
        status=status,
        endpoint="",
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e,
        prompt_tokens=10,
        completion_tokens=50,
        error=error,
        cut=cut,
    )


def shed(index: int, phase: str = "measured") -> ClientRecord:
    return record(index, ttft=None, tpot=None, status=429, error="HTTP 429", phase=phase, e2e=0.01)


def test_an_admitted_request_meets_its_objectives_only_when_each_is_measured_and_met() -> None:
    assert meets(record(0), INTERACTIVE)
    assert meets(record(0, ttft=1.0, tpot=0.05), INTERACTIVE)  # at the objective is within it
    assert not meets(record(0, ttft=1.2), INTERACTIVE)
    assert not meets(record(0, tpot=0.051), INTERACTIVE)
    assert not meets(record(0, ttft=None, tpot=None), INTERACTIVE)
    assert not meets(record(0, error="HTTP 503", status=503), INTERACTIVE)
    assert not meets(shed(0), INTERACTIVE)
    # Cut at the drain deadline: on time so far, but its TPOT is unknown.
    assert not meets(record(0, tpot=None, cut=True, error=CUT_ERROR), INTERACTIVE)
    # A finished single-token answer has no TPOT to judge.
    assert meets(record(0, tpot=None), INTERACTIVE)
    # TTFT alone (background): judged at the first token, cut later or not.
    assert meets(record(0, ttft=2.9, tpot=0.5), BACKGROUND)
    assert meets(record(0, ttft=2.9, tpot=None, cut=True, error=CUT_ERROR), BACKGROUND)
    assert not meets(record(0, ttft=None, tpot=None, cut=True, error=CUT_ERROR), BACKGROUND)
    assert not meets(record(0, ttft=3.1), BACKGROUND)


def test_class_summary_counts_attainment_goodput_and_shedding() -> None:
    records = [
        record(0),
        record(1),
        record(2, ttft=1.5),  # late first token
        record(3, tpot=0.08),  # slow decoding
        record(4, ttft=None, tpot=None, cut=True, error=CUT_ERROR, e2e=9.0),
        record(5, ttft=None, tpot=None, status=503, error="HTTP 503"),
        shed(6),
        shed(7),
    ]
    s = class_summary(records, INTERACTIVE, window_s=2.0)
    assert (s["sent"], s["admitted"], s["shed"], s["errors"], s["cut"]) == (8, 6, 2, 1, 1)
    assert s["completed"] == 4
    assert s["met"] == 2
    assert s["attainment"] == pytest.approx(2 / 6)
    assert s["goodput_rps"] == pytest.approx(1.0)
    assert s["shed_rate"] == pytest.approx(2 / 8)
    # TTFT over admitted requests that did not fail, the cut one with its wait as lower bound.
    assert s["ttft_p90_s"] == pytest.approx(9.0)
    assert s["ttft_p50_s"] == pytest.approx(0.2)
    assert s["tpot_p90_s"] == pytest.approx(0.08)
    assert "attainment" not in class_summary(records, BATCH, window_s=2.0)
    nobody = class_summary([shed(0)], INTERACTIVE, window_s=2.0)
    assert math.isnan(nobody["attainment"])
    assert nobody["goodput_rps"] == 0


def test_run_summary_counts_only_the_measured_window_per_class() -> None:
    classes = [INTERACTIVE, INTERACTIVE, BATCH, BACKGROUND, BACKGROUND, INTERACTIVE]
    records = [
        record(0, phase="warmup", ttft=5.0),  # not counted
        record(1),
        record(2, ttft=4.0),  # batch: no objectives
        shed(3),
        record(4, ttft=2.0),
        shed(5, phase="warmup"),  # a shed interactive request in the warm-up
    ]
    s = run_summary(records, DEFAULT_MIX, classes, window_s=10.0)
    assert (s["sent"], s["admitted"], s["shed"]) == (4, 3, 1)
    assert s["shed_rate"] == pytest.approx(0.25)
    assert s["attainment"] == 1.0
    assert s["goodput_rps"] == pytest.approx(0.1)
    assert s["classes"]["interactive"]["sent"] == 1
    assert s["classes"]["batch"]["sent"] == 1
    assert s["classes"]["background"] == s["classes"]["background"] | {
        "sent": 2,
        "shed": 1,
        "admitted": 1,
        "met": 1,
        "attainment": 1.0,
        "shed_rate": 0.5,
    }
    assert s["shed_all_phases"] == {"interactive": 1, "batch": 0, "background": 1}


# -- curves and targets --------------------------------------------------------------------------
def test_interpolation_between_measured_loads() -> None:
    points = [(0.5, 1.0), (0.9, 0.96), (1.1, 0.8), (1.6, 0.3)]
    assert interpolate(points, 0.9) == pytest.approx(0.96)
    assert interpolate(points, 1.0) == pytest.approx(0.88)
    assert interpolate(points, 1.35) == pytest.approx(0.55)
    assert interpolate(points, 1.7) is None
    assert interpolate(points, 0.4) is None
    assert interpolate([], 1.0) is None
    assert interpolate([(1.0, 0.5)], 1.0) == 0.5
    # 0.96 at 0.9, 0.8 at 1.1: 90 % is crossed 3/8 of the way.
    crossing = first_below(points, 0.9)
    assert crossing is not None
    assert crossing[0] == pytest.approx(0.975)
    assert crossing[1] is True
    assert first_below(points, 0.1) is None
    assert first_below(points, 1.01) == (0.5, False)


def test_saturation_is_load_1_1_else_the_first_load_from_1() -> None:
    assert saturation_load([0.5, 0.9, 1.1, 1.3]) == 1.1
    assert saturation_load([1.3, 0.5, 1.0]) == 1.0
    assert saturation_load([0.5, 0.9]) is None


def summaries(curve: dict[float, tuple[float, float]]) -> dict[float, dict[str, float]]:
    return {
        load: {"attainment": a, "goodput_rps": g, "shed_rate": 0.0}
        for load, (a, g) in curve.items()
    }


RESULTS = {
    "slogate:predicted-latency-slo": summaries(
        {0.5: (1.0, 7.0), 0.9: (0.992, 12.0), 1.1: (0.97, 13.0), 1.3: (0.93, 12.0), 1.6: (0.8, 9.0)}
    ),
    "slogate:load-prefix": summaries(
        {0.5: (1.0, 7.0), 0.9: (0.96, 11.0), 1.1: (0.8, 8.0), 1.3: (0.5, 5.0), 1.6: (0.2, 2.0)}
    ),
    "vllm-router:cache_aware": summaries(
        {0.5: (0.99, 7.0), 0.9: (0.9, 10.0), 1.1: (0.7, 8.5), 1.3: (0.4, 4.0), 1.6: (0.1, 1.0)}
    ),
}


def test_the_three_targets_from_measured_curves() -> None:
    targets = evaluate_targets(
        RESULTS,
        slo_arm="slogate:predicted-latency-slo",
        load_prefix_arm="slogate:load-prefix",
        baselines=["slogate:load-prefix", "vllm-router:cache_aware"],
    )
    one = targets["below_saturation"]
    assert one["min_attainment"] == pytest.approx(0.992)
    assert one["at_load"] == 0.9
    assert one["met"] is True
    two = targets["past_crossing"]
    assert two["load_prefix_crossing"] == pytest.approx(0.975)
    assert two["at_load"] == pytest.approx(1.2675)
    # between 1.1 (0.97) and 1.3 (0.93): 0.97 - 0.04 * 0.8375
    assert two["attainment"] == pytest.approx(0.9365)
    assert two["met"] is True
    three = targets["goodput_at_saturation"]
    assert three["at_load"] == 1.1
    assert three["best_baseline"] == "vllm-router:cache_aware"
    assert three["ratio"] == pytest.approx(13.0 / 8.5)
    assert three["met"] is True
    text = "\n".join(describe_targets(targets))
    assert text.count(": MET") == 3
    assert "1.53x" in text


def test_targets_say_when_they_cannot_be_judged() -> None:
    narrow = {arm: {k: v for k, v in c.items() if k <= 1.1} for arm, c in RESULTS.items()}
    narrow["slogate:load-prefix"][1.1]["attainment"] = 0.8
    targets = evaluate_targets(
        narrow,
        slo_arm="slogate:predicted-latency-slo",
        load_prefix_arm="slogate:load-prefix",
        baselines=["slogate:load-prefix"],
    )
    assert targets["past_crossing"]["attainment"] is None
    assert targets["past_crossing"]["met"] is None
    assert "beyond the measured range" in "\n".join(describe_targets(targets))
    assert targets["goodput_at_saturation"]["ratio"] == pytest.approx(13.0 / 8.0)
    missing = evaluate_targets(
        {"slogate:load-prefix": RESULTS["slogate:load-prefix"]},
        slo_arm="slogate:predicted-latency-slo",
        load_prefix_arm="slogate:load-prefix",
        baselines=[],
    )
    assert "skipped" in missing
    steady = evaluate_targets(
        {"slo": summaries({0.5: (1.0, 5.0)}), "lp": summaries({0.5: (0.95, 0.0)})},
        slo_arm="slo",
        load_prefix_arm="lp",
        baselines=["lp"],
    )
    assert steady["past_crossing"]["met"] is None
    assert steady["goodput_at_saturation"]["met"] is None  # no load >= 1.0
    zero = evaluate_targets(
        {"slo": summaries({1.1: (1.0, 5.0)}), "lp": summaries({1.1: (0.0, 0.0)})},
        slo_arm="slo",
        load_prefix_arm="lp",
        baselines=["lp"],
    )
    assert zero["goodput_at_saturation"]["ratio"] == math.inf


def test_the_table_has_a_row_per_load_and_a_column_per_arm() -> None:
    lines = table_lines(RESULTS, {"slogate:load-prefix": "sg:load-pfx"}, {0.5: 13.86, 1.1: 30.5})
    assert "sg:load-pfx" in lines[0]
    assert len(lines) == 4
    assert lines[2].startswith("0.50x 13.86/s")
    assert "100.0% 7.00/s 0.0%" in lines[2]
    assert "97.0% 13.00/s" in lines[3]


# -- setup: the matrix's fleet, capacity and trace rows ------------------------------------------
def test_the_fleet_and_the_capacity_cache_entry_are_the_matrixs() -> None:
    settings = SloSettings()
    for engine in ("vllm", "slots"):
        cell = Cell(engine, "hetero", "azure-conv", "steady")
        matrix = MatrixSettings()
        assert fleet_sims(engine, settings) == sim_spec(cell, matrix)
        assert fleet_sims(engine, settings).speeds == FLEETS["hetero"]
        theirs = CapacitySpec(
            sims=sim_spec(cell, matrix),
            workload=workload_spec(cell, matrix, 1.0),
            warmup_s=matrix.calibration_warmup_s,
            measure_s=matrix.calibration_measure_s,
        )
        assert capacity_spec(engine, settings).key() == theirs.key()


def test_each_run_warms_up_then_measures_at_its_load() -> None:
    spec = workload_at(SloSettings(), 20.0, 1.3)
    assert spec.phases == (Phase("warmup", 20.0, 10.0), Phase("measured", 30.0, 26.0))
    assert spec.trace == "azure-conv"
    assert spec.seed == 5
    bare = workload_at(SloSettings(warmup_s=0, workload="mooncake"), 20.0, 0.5)
    assert bare.phases == (Phase("measured", 30.0, 10.0),)
    assert bare.length_scale == 0.125


def test_arms_are_named_slogate_preset_or_the_vllm_router_policy() -> None:
    assert slo_arm("slogate:predicted-latency-slo").label == "sg:pl-slo"
    assert slo_arm("load-prefix").name == "slogate:load-prefix"
    assert slo_arm("cache_aware").name == "vllm-router:cache_aware"
    with pytest.raises(ValueError, match="unknown arm"):
        slo_arm("nginx")


EXPOSITION = """\
# HELP slogate_requests_shed_total Requests refused at admission.
# TYPE slogate_requests_shed_total counter
slogate_requests_shed_total{objective="sheddable",reason="rejected-saturated"} 7.0
# HELP slogate_slo_requests_total Requests with a latency objective that ended.
# TYPE slogate_slo_requests_total counter
slogate_slo_requests_total{model_name="m",target_model_name="m",objective="standard",met="true"} 40
slogate_slo_requests_total{model_name="n",target_model_name="n",objective="standard",met="true"} 2
slogate_slo_requests_total{model_name="m",target_model_name="m",objective="standard",met="false"} 3
# HELP slogate_predictor_decisions_total Decisions.
# TYPE slogate_predictor_decisions_total counter
slogate_predictor_decisions_total{mode="predicted"} 30
slogate_predictor_decisions_total{mode="fallback"} 10
# HELP slogate_http_requests_total HTTP requests.
# TYPE slogate_http_requests_total counter
slogate_http_requests_total{route="/v1/completions",code="200"} 50
"""


def test_the_gateways_counters_are_read_and_differenced_over_the_window() -> None:
    end = parse_counters(EXPOSITION)
    assert end == {
        "slogate_requests_shed_total{objective=sheddable,reason=rejected-saturated}": 7.0,
        "slogate_slo_requests_total{objective=standard,met=true}": 42.0,
        "slogate_slo_requests_total{objective=standard,met=false}": 3.0,
        "slogate_predictor_decisions_total{mode=predicted}": 30.0,
        "slogate_predictor_decisions_total{mode=fallback}": 10.0,
    }
    start = {"slogate_predictor_decisions_total{mode=fallback}": 10.0}
    view = gateway_view(Driven(records=[], gateway_at_window=start, gateway_at_end=end))
    assert view["shed_total"] == 7.0
    assert view["by_prediction_in_window"] == 1.0
    assert view["measured_window"]["slogate_slo_requests_total{objective=standard,met=true}"] == 42


# -- the headers reach the router ----------------------------------------------------------------
def echo_app(seen: list[dict[str, str]]) -> web.Application:
    """Records each request's headers; streams two tokens, or 429 for sheddable work."""

    async def complete(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        await request.read()
        if request.headers.get(OBJECTIVE_HEADER) == "sheddable":
            return web.json_response({"error": {"type": "rate_limit_error"}}, status=429)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for text in ("a", "b"):
            await resp.write(
                f'data: {{"choices": [{{"index": 0, "text": "{text}"}}]}}\n\n'.encode()
            )
        usage = '{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
        await resp.write(f"data: {usage}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", complete)
    return app


SMALL = WorkloadSpec(
    trace="azure-conv",
    seed=3,
    phases=(Phase("warmup", 0.2, 20.0), Phase("measured", 0.4, 20.0)),
)


async def test_the_driver_sends_each_arrivals_class_headers(
    aiohttp_server: AiohttpServer,
) -> None:
    seen: list[dict[str, str]] = []
    server = await aiohttp_server(echo_app(seen))
    count = len(SMALL.arrivals())
    classes = assign(DEFAULT_MIX, SMALL.seed, count)
    headers = [{**h, "x-test-arrival": str(i)} for i, h in enumerate(header_sets(classes))]
    records = await run_driver(
        str(server.make_url("")).rstrip("/"),
        SMALL,
        start_at=time.monotonic() + 0.2,
        drain_s=5.0,
        headers=headers,
    )
    assert len(seen) == count == len(records)
    for got in seen:
        sent = headers[int(got["x-test-arrival"])]
        assert {k: got.get(k) for k in sent} == sent
        assert got["Content-Type"] == "application/json"
    summary = run_summary(records, DEFAULT_MIX, classes, window_s=0.4)
    background = [c for c in classes if c.name == "background"]
    assert sum(summary["shed_all_phases"].values()) == len(background) > 0
    assert summary["classes"]["batch"]["shed"] == 0
    assert summary["classes"]["interactive"]["attainment"] == 1.0


async def test_without_headers_the_driver_sends_only_the_content_type(
    aiohttp_server: AiohttpServer,
) -> None:
    seen: list[dict[str, str]] = []
    server = await aiohttp_server(echo_app(seen))
    url = str(server.make_url("/v1/completions"))
    records = await drive(url, SMALL, time.monotonic(), drain_s=5.0)
    assert all(r.error is None for r in records)
    assert seen
    assert all(OBJECTIVE_HEADER not in h and TTFT_HEADER not in h for h in seen)
    with pytest.raises(ValueError, match="header sets"):
        await drive(url, SMALL, time.monotonic(), headers=[{}])


# -- the command ---------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_the_command_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "slo.json"
    argv = [
        "--engines=vllm",
        "--loads=0.5,1.1",
        "--arms=slogate:predicted-latency-slo",
        "--duration-s=2",
        "--warmup-s=1",
        "--drain-s=4",
        "--capacity-rps-per-speed=2",
        "--time-scale=10",
        f"--out={out}",
        f"--log-dir={tmp_path / 'logs'}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_slo", *argv],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sg:pl-slo" in done.stdout
    assert "targets for slogate:predicted-latency-slo" in done.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_slo"
    [engine] = report["engines"]
    assert engine["fleet_capacity_rps"] == pytest.approx(2 * sum(FLEETS["hetero"]))
    assert [(r["arm"], r["load"]) for r in engine["runs"]] == [
        ("slogate:predicted-latency-slo", 0.5),
        ("slogate:predicted-latency-slo", 1.1),
    ]
    for run in engine["runs"]:
        summary = run["summary"]
        assert summary["sent"] == round(run["rate_rps"] * 2) > 0
        assert set(summary["classes"]) == {"interactive", "batch", "background"}
        gateway = summary["gateway"]
        # The gateway saw the objectives (its SLO counters) and shed what the client saw shed.
        assert any(k.startswith("slogate_slo_requests_total") for k in gateway["total"])
        assert gateway["shed_total"] == sum(summary["shed_all_phases"].values())
    assert engine["targets"]["below_saturation"]["loads"] == [0.5]
    assert (tmp_path / "logs" / "vllm_load0.5_slogate_predicted-latency-slo.log").exists()
