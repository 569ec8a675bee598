"""slo-headroom-producer, slo-headroom-tier-filter, latency-slo-admitter and the latency
scorer's headroom strategies."""

from __future__ import annotations

import math
import random

import pytest

from scheduler.framework.attributes import PREDICTION, SLO_HEADROOM, Headroom, Prediction
from scheduler.framework.errors import AdmissionDenied
from scheduler.framework.plugins import Outcome, RequestRecord
from scheduler.framework.types import (
    Candidate,
    CycleState,
    InferenceRequest,
    ProfileResult,
    SchedulingResult,
    Slo,
)
from scheduler.plugins.admitters.latency_slo import LatencySloAdmitter
from scheduler.plugins.filters.slo_tier import SloHeadroomTierFilter
from scheduler.plugins.producers.slo_headroom import SloHeadroomProducer
from scheduler.plugins.scorers.latency import LatencyScorer
from tests.support.builders import make_candidate, make_request


def predicted(c: Candidate, ttft: float | None, tpot: float | None = None) -> Candidate:
    c.attributes.put(PREDICTION, Prediction(ttft_s=ttft, tpot_s=tpot, e2e_s=None))
    return c


def headroom(c: Candidate, ttft: float | None, tpot: float | None = math.inf) -> Candidate:
    c.attributes.put(SLO_HEADROOM, Headroom(ttft, tpot))
    return c


def dispatch(producer: SloHeadroomProducer, request: InferenceRequest, target: Candidate) -> None:
    result = SchedulingResult(
        primary=ProfileResult(profile="p", targets=[target]),
        candidates=[target],
        state=CycleState(),
    )
    producer.pre_request(request, result)


def end(producer: SloHeadroomProducer, request: InferenceRequest) -> None:
    record = RequestRecord(
        request_id=request.request_id,
        model="m",
        endpoint="x",
        stream=True,
        outcome=Outcome.SUCCESS,
        status=200,
        prompt_tokens=4,
        dispatched_at=0.0,
        ended_at=1.0,
    )
    producer.on_end(request, record)


# -- producer --------------------------------------------------------------------------------
def test_headroom_is_objective_minus_prediction_and_missing_objectives_are_unconstrained() -> None:
    producer = SloHeadroomProducer("h")
    cs = [predicted(make_candidate("a"), 0.2, 0.03), predicted(make_candidate("b"), 0.6, 0.01)]
    producer.produce(CycleState(), make_request(slo=Slo(ttft_ms=500)), cs)
    a, b = (c.attributes.get(SLO_HEADROOM) for c in cs)
    assert a is not None
    assert b is not None
    assert a.ttft_s == pytest.approx(0.3)
    assert a.tpot_s == math.inf
    assert a.valid
    assert b.ttft_s == pytest.approx(-0.1)
    assert b.tpot_s == math.inf
    assert not b.valid


def test_buffer_factor_scales_objectives_and_unpredicted_dimensions_are_unknown() -> None:
    producer = SloHeadroomProducer("h", buffer_factor=0.5)
    cs = [predicted(make_candidate("a"), 0.2, None), make_candidate("b")]
    producer.produce(CycleState(), make_request(slo=Slo(ttft_ms=1000, tpot_ms=40)), cs)
    a, b = (c.attributes.get(SLO_HEADROOM) for c in cs)
    assert a is not None
    assert a.ttft_s == pytest.approx(0.3)
    assert a.tpot_s is None
    assert a.valid
    assert b == Headroom(None, None)
    assert not b.known


def test_non_streamed_requests_have_no_tpot_objective() -> None:
    producer = SloHeadroomProducer("h")
    cs = [predicted(make_candidate("a"), 0.2, 0.5)]
    producer.produce(CycleState(), make_request(stream=False, slo=Slo(tpot_ms=10)), cs)
    assert cs[0].attributes.get(SLO_HEADROOM) == Headroom(math.inf, math.inf)


def test_requests_without_objectives_get_no_headroom_while_nothing_is_protected() -> None:
    producer = SloHeadroomProducer("h")
    cs = [predicted(make_candidate("a"), 0.2, 0.03)]
    producer.produce(CycleState(), make_request(), cs)
    assert cs[0].attributes.get(SLO_HEADROOM) is None


def test_a_running_tpot_objective_binds_every_new_streamed_request_on_that_pod() -> None:
    producer = SloHeadroomProducer("h")
    tight = make_request(request_id="tight", slo=Slo(tpot_ms=20))
    loose = make_request(request_id="loose", slo=Slo(tpot_ms=200))
    dispatch(producer, tight, make_candidate("a"))
    dispatch(producer, loose, make_candidate("a"))
    dispatch(producer, make_request(request_id="none"), make_candidate("b"))
    assert producer.tightest_tpot_s("a") == pytest.approx(0.02)
    # A request without a TPOT objective does not switch the protection off (llm-d's quirk).
    assert producer.tightest_tpot_s("b") is None

    cs = [predicted(make_candidate("a"), 0.1, 0.03), predicted(make_candidate("b"), 0.1, 0.03)]
    producer.produce(CycleState(), make_request(request_id="new"), cs)
    a, b = (c.attributes.get(SLO_HEADROOM) for c in cs)
    assert a is not None
    assert a.tpot_s == pytest.approx(-0.01)
    assert not a.valid
    assert b == Headroom(math.inf, math.inf)

    end(producer, tight)
    assert producer.tightest_tpot_s("a") == pytest.approx(0.2)
    end(producer, loose)
    assert producer.tightest_tpot_s("a") is None
    cs = [predicted(make_candidate("a"), 0.1, 0.03)]
    producer.produce(CycleState(), make_request(request_id="later"), cs)
    assert cs[0].attributes.get(SLO_HEADROOM) is None


def test_a_retried_request_moves_its_tpot_objective() -> None:
    producer = SloHeadroomProducer("h")
    request = make_request(request_id="r", slo=Slo(tpot_ms=20))
    dispatch(producer, request, make_candidate("a"))
    dispatch(producer, request, make_candidate("b"))
    assert producer.tightest_tpot_s("a") is None
    assert producer.tightest_tpot_s("b") == pytest.approx(0.02)


# -- tier filter -------------------------------------------------------------------------------
def test_tier_filter_keeps_the_positive_tier_and_sometimes_explores() -> None:
    cs = [
        headroom(make_candidate("a"), 0.1),
        headroom(make_candidate("b"), -0.1),
        make_candidate("c"),
    ]
    request = make_request(slo=Slo(ttft_ms=100))
    never = SloHeadroomTierFilter("t", rng=random.Random(0), explore=0.0)
    assert [c.name for c in never.filter(CycleState(), request, cs)] == ["a"]
    always = SloHeadroomTierFilter("t", rng=random.Random(0), explore=1.0)
    assert [c.name for c in always.filter(CycleState(), request, cs)] == ["b", "c"]
    sometimes = SloHeadroomTierFilter("t", rng=random.Random(0), explore=0.1)
    kept = [len(sometimes.filter(CycleState(), request, cs)) for _ in range(2000)]
    assert 100 <= kept.count(2) <= 300


def test_tier_filter_passes_everyone_when_one_tier_is_empty_or_nothing_was_judged() -> None:
    request = make_request(slo=Slo(ttft_ms=100))
    flt = SloHeadroomTierFilter("t", rng=random.Random(0), explore=0.0)
    negative = [headroom(make_candidate(n), -0.1) for n in "ab"]
    assert len(flt.filter(CycleState(), request, negative)) == 2
    unjudged = [headroom(make_candidate("a"), None, None), make_candidate("b")]
    assert len(flt.filter(CycleState(), request, unjudged)) == 2


# -- admitter ----------------------------------------------------------------------------------
SHEDDABLE = make_request(priority=-1, slo=Slo(ttft_ms=100))


def test_priority_zero_and_above_is_always_admitted() -> None:
    admitter = LatencySloAdmitter("a")
    cs = [headroom(make_candidate("a", waiting=50, inflight_requests=9), -1.0)]
    for priority in (0, 100):
        admitter.admit(CycleState(), make_request(priority=priority, slo=Slo(ttft_ms=1)), cs)


def test_sheddable_with_objectives_is_rejected_only_when_none_fits_and_none_is_idle() -> None:
    admitter = LatencySloAdmitter("a")
    busy = [headroom(make_candidate(n, running=2, inflight_requests=2), -0.1) for n in "ab"]
    with pytest.raises(AdmissionDenied) as denied:
        admitter.admit(CycleState(), SHEDDABLE, busy)
    assert denied.value.reason == "rejected-saturated"
    fits = [*busy, headroom(make_candidate("c", running=2, inflight_requests=2), 0.05)]
    admitter.admit(CycleState(), SHEDDABLE, fits)
    idle = [*busy, headroom(make_candidate("d"), -0.3)]
    admitter.admit(CycleState(), SHEDDABLE, idle)
    # Idle by the gateway's count but busy by its metrics (another gateway's work): not idle.
    elsewhere = [*busy, headroom(make_candidate("e", running=3), -0.3)]
    with pytest.raises(AdmissionDenied):
        admitter.admit(CycleState(), SHEDDABLE, elsewhere)


def test_sheddable_without_objectives_is_rejected_only_when_every_pod_is_saturated() -> None:
    admitter = LatencySloAdmitter("a", queue_depth=5, kv_threshold=0.8)
    request = make_request(priority=-1)
    full = [make_candidate("a", waiting=5), make_candidate("b", kv=0.85)]
    with pytest.raises(AdmissionDenied):
        admitter.admit(CycleState(), request, full)
    admitter.admit(CycleState(), request, [*full, make_candidate("c", waiting=4, kv=0.5)])
    # Unknown metrics are no evidence of saturation.
    admitter.admit(CycleState(), request, [*full, make_candidate("d", metrics=False)])
    # Objectives nobody could judge fall back to the saturation rule.
    unjudged = make_request(priority=-1, slo=Slo(ttft_ms=100))
    with pytest.raises(AdmissionDenied):
        admitter.admit(CycleState(), unjudged, full)


# -- scorer ------------------------------------------------------------------------------------
def scores(scorer: LatencyScorer, cs: list[Candidate], slo: Slo) -> list[float]:
    return [round(s, 4) for s in scorer.score(CycleState(), make_request(slo=slo), cs)]


def test_least_bin_packs_and_most_spreads_over_the_positive_tier() -> None:
    cs = [
        headroom(make_candidate("tight"), 0.05),
        headroom(make_candidate("slack"), 0.45),
        headroom(make_candidate("miss"), -0.2),
    ]
    slo = Slo(ttft_ms=500)
    assert scores(LatencyScorer("l", strategy="least"), cs, slo) == [1.01, 0.01, 0.0]
    assert scores(LatencyScorer("l", strategy="most"), cs, slo) == [0.01, 1.01, 0.0]


def test_with_no_pod_in_time_idle_pods_win_then_the_smallest_deficit() -> None:
    slo = Slo(ttft_ms=500, tpot_ms=50)
    cs = [
        headroom(make_candidate("busy", inflight_requests=3), -0.05, -0.01),
        headroom(make_candidate("idle"), -0.4, -0.02),
    ]
    assert scores(LatencyScorer("l"), cs, slo) == [0.0, 0.51]
    cs = [
        headroom(make_candidate("both", inflight_requests=1), -0.01, -0.001),
        headroom(make_candidate("ttft-far", inflight_requests=1), -0.4, 0.01),
        headroom(make_candidate("ttft-near", inflight_requests=1), -0.1, 0.02),
    ]
    # Missing only TTFT comes before missing both; within it the smaller deficit wins.
    assert scores(LatencyScorer("l"), cs, slo) == [0.0, 0.01, 1.01]


def test_requests_without_objectives_score_by_latency_even_with_headroom() -> None:
    cs = [
        predicted(headroom(make_candidate("a"), math.inf, 0.001), 0.1, 0.02),
        predicted(headroom(make_candidate("b"), math.inf, 0.05), 0.3, 0.02),
    ]
    assert scores(LatencyScorer("l"), cs, Slo()) == [1.01, 0.01]


def test_the_latency_strategy_picks_the_fastest_pod_that_meets_the_objectives() -> None:
    cs = [
        predicted(headroom(make_candidate("tight"), 0.05), 0.45),
        predicted(headroom(make_candidate("fast"), 0.4), 0.1),
        predicted(headroom(make_candidate("miss"), -0.2), 0.7),
    ]
    scorer = LatencyScorer("l", strategy="latency", normalization="relative")
    tight, fast, miss = scores(scorer, cs, Slo(ttft_ms=500))
    assert fast == 1.0
    assert tight < 0.01  # 4.5x slower than the fastest, at temperature 0.25
    assert miss == 0.0
    # No pod in time: as the other strategies, idle first, then the smallest deficit.
    late = [
        predicted(headroom(make_candidate("a", inflight_requests=1), -0.3), 0.8),
        predicted(headroom(make_candidate("b", inflight_requests=1), -0.1), 0.6),
    ]
    assert scores(scorer, late, Slo(ttft_ms=500)) == [0.01, 1.01]
