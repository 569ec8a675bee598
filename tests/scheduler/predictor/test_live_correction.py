"""Live correction: routing reacts to what the gateway sees long before the next refit.

- Before a model is trusted, every candidate gets a cold-start estimate: least-request on the
  gateway's own in-flight counts, made prompt-size aware, scaled per endpoint by how fast it has
  answered (``estimate.py``).
- With a model, an endpoint whose first tokens come back slower than predicted is predicted
  slower within a few requests, and faster again once it recovers (``drift.py``).
- An endpoint whose oldest request is overdue is predicted slower before any answer comes back.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from scheduler.framework.attributes import Prediction
from scheduler.framework.types import Candidate, StepTiming
from scheduler.predictor.drift import MAX_LOG_DRIFT, LiveDrift, dead_band_array
from scheduler.predictor.model import PredictorModel
from scheduler.predictor.runtime import DRIFT_DEAD_BAND, LatencyPredictor
from scheduler.predictor.training import TARGET_COLUMNS
from tests.scheduler.predictor.test_accuracy_prefill_wait import model_with_offsets, record
from tests.support.builders import FakeClock, make_candidate, make_request


def ttfts(
    predictor: LatencyPredictor, candidates: list[Candidate], prompt: int = 100
) -> list[float]:
    request = make_request(prompt_tokens=range(prompt))
    predictions = predictor.predict(predictor.feature_rows(request, candidates), candidates)
    assert predictions is not None
    out = [p.ttft_s for p in predictions]
    assert all(t is not None and t > 0 for t in out)
    return [t for t in out if t is not None]


def serve(
    predictor: LatencyPredictor,
    clock: FakeClock,
    endpoint: str,
    ttft_s: float,
    *,
    candidates: list[Candidate],
    request_id: str,
) -> Prediction:
    """One streamed request to ``endpoint``, chosen among ``candidates``, answering its first
    token after ``ttft_s``; returns the prediction it was dispatched with."""
    request = make_request(prompt_tokens=range(100), request_id=request_id)
    rows = predictor.feature_rows(request, candidates)
    predictions = predictor.predict(rows, candidates)
    assert predictions is not None
    index = [c.endpoint.name for c in candidates].index(endpoint)
    predictor.dispatched(
        request_id, rows[index], endpoint, model="m", stream=True, prediction=predictions[index]
    )
    clock.advance(ttft_s)
    predictor.first_token(request_id, clock())
    predictor.finished(request_id, record(request_id, endpoint))
    return predictions[index]


def test_drift_is_a_bounded_weighted_mean_per_endpoint() -> None:
    drift = LiveDrift(weight=0.5, max_endpoints=2)
    assert drift.get("a") is None
    assert drift.median() is None
    drift.observe("a", 1.0)
    assert drift.get("a") == 1.0  # the first sample is taken whole
    drift.observe("a", 0.0)
    assert drift.get("a") == 0.5
    drift.observe("b", 1000.0)
    assert drift.get("b") == MAX_LOG_DRIFT
    assert drift.median() == pytest.approx((0.5 + MAX_LOG_DRIFT) / 2)
    drift.observe("c", 0.0)  # a third endpoint: the least recently seen ("a") is dropped
    assert drift.get("a") is None
    assert len(drift) == 2
    drift.forget("b")
    assert drift.median() == 0.0


@pytest.mark.parametrize(
    ("value", "band", "expected"),
    [(0.1, 0.15, 0.0), (-0.1, 0.15, 0.0), (0.5, 0.15, 0.35), (-0.5, 0.15, -0.35)],
)
def test_dead_band(value: float, band: float, expected: float) -> None:
    assert dead_band_array(np.array([value, 0.0]), band) == pytest.approx([expected, 0.0])


def test_the_cold_estimate_is_least_request_made_prompt_aware() -> None:
    predictor = LatencyPredictor(clock=FakeClock(), rng=random.Random(0))
    assert predictor.model is None
    busy = [make_candidate("a", inflight_requests=3), make_candidate("b", inflight_requests=1)]
    a, b = ttfts(predictor, busy)
    assert a > b  # more requests in flight: slower
    # Equal request counts, but "a" still has 4,000 prompt tokens to prefill for them.
    prefill = [
        make_candidate("a", inflight_requests=1, prefill_tokens=4000),
        make_candidate("b", inflight_requests=1),
    ]
    a, b = ttfts(predictor, prefill)
    assert a > 2 * b
    # Scraped metrics play no part: a pod that looks idle at the last scrape is not preferred.
    stale = [make_candidate("a", waiting=0, inflight_requests=2), make_candidate("b", waiting=9)]
    a, b = ttfts(predictor, stale)
    assert a > b


def test_the_cold_estimate_learns_which_pod_answers_slower() -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    pool = [make_candidate("slow"), make_candidate("fast"), make_candidate("new")]
    for i in range(5):
        serve(predictor, clock, "slow", 0.8, candidates=pool, request_id=f"s{i}")
        serve(predictor, clock, "fast", 0.2, candidates=pool, request_id=f"f{i}")
    slow, fast, new = ttfts(predictor, pool)
    assert slow == pytest.approx(4 * fast, rel=0.05)
    assert fast < new < slow  # a pod not heard from yet is taken for the pool's median
    # The fast pod stays preferred until it carries about four times the slow pod's load.
    loaded = [make_candidate("slow"), make_candidate("fast", inflight_requests=2)]
    slow, fast = ttfts(predictor, loaded)
    assert fast < slow


def test_a_pod_slower_than_predicted_is_predicted_slower_within_a_few_requests() -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    predictor.install(model_with_offsets({}))
    pool = [make_candidate("a"), make_candidate("b")]
    base_a, base_b = ttfts(predictor, pool)
    assert base_a == pytest.approx(base_b)
    # "a" turns 4x slower than the model says; the model is not refitted.
    for i in range(6):
        p = serve(predictor, clock, "a", 4 * base_a, candidates=pool, request_id=f"r{i}")
        assert not p.estimated
    a, b = ttfts(predictor, pool)
    assert b == pytest.approx(base_b)
    assert a > 2.5 * b
    assert math.log(a / b) <= math.log(4) - DRIFT_DEAD_BAND + 1e-9
    # It recovers: a few answers at the model's speed bring it back within the dead band.
    for i in range(12):
        serve(predictor, clock, "a", base_a, candidates=pool, request_id=f"ok{i}")
    a, b = ttfts(predictor, pool)
    assert a == pytest.approx(b)


def test_ordinary_prediction_error_does_not_move_the_order() -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    predictor.install(model_with_offsets({}))
    pool = [make_candidate("a"), make_candidate("b")]
    base, _ = ttfts(predictor, pool)
    noise = np.random.default_rng(1).normal(0.0, 0.05, 40)
    for i, e in enumerate(noise):  # +-5 % around the prediction, 10 % slow on average
        serve(predictor, clock, "a", base * math.exp(0.1 + e), candidates=pool, request_id=f"{i}")
    a, b = ttfts(predictor, pool)
    assert a == pytest.approx(b)


def test_an_overdue_request_makes_its_pod_look_slower_before_it_answers() -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    predictor.install(model_with_offsets({}))
    pool = [make_candidate("a"), make_candidate("b")]
    base_a, _ = ttfts(predictor, pool)
    request = make_request(prompt_tokens=range(100), request_id="stuck")
    rows = predictor.feature_rows(request, pool)
    predictions = predictor.predict(rows, pool)
    assert predictions is not None
    predictor.dispatched("stuck", rows[0], "a", model="m", stream=True, prediction=predictions[0])
    clock.advance(0.5 * base_a)
    a, b = ttfts(predictor, pool)
    assert a == pytest.approx(b)  # not overdue yet
    clock.advance(2.5 * base_a)  # three times its predicted TTFT, still no first token
    a, b = ttfts(predictor, pool)
    assert a == pytest.approx(3 * b, rel=0.01)


def test_estimates_do_not_train_the_accuracy_or_the_calibration() -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    pool = [make_candidate("a"), make_candidate("b")]
    for i in range(20):
        p = serve(predictor, clock, "a", 0.3, candidates=pool, request_id=f"r{i}")
        assert p.estimated
    assert predictor.accuracy().samples == 0
    assert len(predictor.drift["ttft"]) == 0
    assert len(predictor.units) == 1
    window = predictor.windows["ttft"]
    assert len(window) + window.test_size == 20  # the samples still train the model


def model_with_tpot() -> PredictorModel:
    """``model_with_offsets``' TTFT model, plus a TPOT model of the same trees."""
    model = model_with_offsets({})
    assert model.ttft is not None
    tpot = dataclasses.replace(model.ttft, target="tpot", columns=TARGET_COLUMNS["tpot"])
    return dataclasses.replace(model, tpot=tpot)


def tpots(
    predictor: LatencyPredictor, candidates: list[Candidate], floor: float = 1.2
) -> list[Prediction]:
    request = make_request(prompt_tokens=range(100))
    rows = predictor.feature_rows(request, candidates)
    predictions = predictor.predict(rows, candidates, tpot_floor=floor)
    assert predictions is not None
    return predictions


def test_tpot_is_at_least_the_live_step_interval_times_the_floor() -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    predictor.install(model_with_tpot())
    pool = [make_candidate("busy"), make_candidate("calm"), make_candidate("quiet")]
    base = tpots(predictor, pool, 0.0)[0].tpot_s
    assert base is not None
    pool[0].steps = StepTiming(last_chunk_at=clock(), interval_s=10 * base)
    pool[1].steps = StepTiming(last_chunk_at=clock(), interval_s=0.5 * base)
    busy, calm, quiet = tpots(predictor, pool)
    assert busy.tpot_s == pytest.approx(12 * base)
    assert busy.adjust[1] == pytest.approx(math.log(12))  # the model's own value is recoverable
    assert calm.tpot_s == pytest.approx(base)  # above its floor: the model's value stands
    assert quiet.tpot_s == pytest.approx(base)  # nothing relayed from it: no floor
    assert tpots(predictor, pool, 0.0)[0].tpot_s == pytest.approx(base)  # no floor


def test_model_tpot_beside_an_estimated_ttft_is_scored_and_drifts() -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    model = dataclasses.replace(model_with_tpot(), beats_heuristic=False)
    predictor.install(model)
    pool = [make_candidate("a"), make_candidate("b")]
    request = make_request(prompt_tokens=range(100), request_id="r")
    rows = predictor.feature_rows(request, pool)
    predictions = predictor.predict(rows, pool, stream=True, model_tpot=True)
    assert predictions is not None
    assert predictions[0].estimated
    assert predictions[0].tpot_s is not None
    assert predictor.predict(rows, pool, stream=True)[0].tpot_s is None  # type: ignore[index]
    predictor.dispatched("r", rows[0], "a", model="m", stream=True, prediction=predictions[0])
    clock.advance(0.3)
    predictor.first_token("r", clock())
    predictor.finished("r", record("r", "a"))
    assert len(predictor.drift["ttft"]) == 0  # the estimate is not the model's TTFT
    assert len(predictor.drift["tpot"]) == 1
    assert predictor.accuracy().samples == 0
