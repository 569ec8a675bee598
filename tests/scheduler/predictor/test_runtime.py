"""The live predictor: predictions when ready, samples from requests, fallback never raises."""

from __future__ import annotations

import dataclasses
import logging
import random

import numpy as np
import pytest

from scheduler.framework.attributes import Prediction
from scheduler.framework.plugins import Outcome, RequestRecord
from scheduler.predictor.features import feature_rows
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.model import PredictorModel
from scheduler.predictor.runtime import LatencyPredictor
from scheduler.predictor.training import train_generation
from tests.scheduler.predictor.synthetic import dataset
from tests.support.builders import FakeClock, make_candidate, make_request, training_job


@pytest.fixture(scope="module")
def trained() -> PredictorModel:
    train, test = dataset(3000, seed=1), dataset(300, seed=2)
    model = train_generation(
        training_job(
            {"ttft": train, "tpot": train, "e2e": dataset(0, 0)},
            {"ttft": test, "tpot": test, "e2e": dataset(0, 0)},
            params=GbdtParams(n_trees=60, depth=4, learning_rate=0.2),
        )
    ).model
    assert model is not None
    return model


def record(
    request_id: str, *, outcome: Outcome = Outcome.SUCCESS, tokens: int = 11
) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        model="m",
        endpoint="fast",
        stream=True,
        outcome=outcome,
        status=200,
        prompt_tokens=4,
        dispatched_at=100.0,
        first_token_at=100.5,
        ended_at=101.5,
        completion_tokens=tokens,
    )


def estimated(predictions: list[Prediction] | None) -> bool:
    """Cold-start estimates for every candidate (what routing uses while not ready)."""
    return predictions is not None and all(p.estimated and p.ttft_s for p in predictions)


def test_not_ready_without_a_model_or_when_unhealthy(trained: PredictorModel) -> None:
    clock = FakeClock()
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    candidates = [make_candidate("fast"), make_candidate("slow")]
    rows = feature_rows(make_request(), candidates)
    assert estimated(predictor.predict(rows, candidates))
    predictor.install(trained)
    assert predictor.ready
    predictions = predictor.predict(rows, candidates)
    assert predictions is not None
    assert not any(p.estimated for p in predictions)
    predictor.trainer_healthy = False
    assert estimated(predictor.predict(rows, candidates))
    predictor.trainer_healthy = True
    predictor.install(dataclasses.replace(trained, beats_heuristic=False))
    assert estimated(predictor.predict(rows, candidates))
    assert (predictor.predicted_decisions, predictor.fallback_decisions) == (1, 3)


def test_predictions_follow_endpoint_speed(trained: PredictorModel) -> None:
    predictor = LatencyPredictor(clock=FakeClock(), rng=random.Random(0))
    predictor.install(trained)
    candidates = [make_candidate("slow"), make_candidate("normal"), make_candidate("fast")]
    request = make_request(prompt_tokens=range(1000))
    predictions = predictor.predict(feature_rows(request, candidates), candidates)
    assert predictions is not None
    ttft = [p.ttft_s for p in predictions]
    assert ttft[0] is not None
    assert ttft[1] is not None
    assert ttft[2] is not None
    assert ttft[0] > ttft[1] > ttft[2]
    assert ttft[0] / ttft[2] == pytest.approx(4.0, rel=0.3)
    assert all(p.e2e_s is None for p in predictions)  # no e2e model


def test_a_failing_model_falls_back_and_logs_once(
    trained: PredictorModel, caplog: pytest.LogCaptureFixture
) -> None:
    predictor = LatencyPredictor(clock=FakeClock(), rng=random.Random(0))
    predictor.install(trained)
    candidates = [make_candidate("fast")]
    bad_rows = np.zeros((1, 2))  # wrong width: the trees cannot read it
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # neither the model nor the estimate can read the rows
            assert predictor.predict(bad_rows, candidates) is None
        good = feature_rows(make_request(), candidates)
        predictions = predictor.predict(good, candidates)
        assert predictions is not None
        assert not predictions[0].estimated
    events = [r.getMessage() for r in caplog.records]
    assert events.count("predictor.failed") == 3
    assert events.count("predictor.estimate_failed") == 3
    assert events.count("predictor.fallback_on") == 1
    assert events.count("predictor.fallback_off") == 1


def test_requests_become_samples() -> None:
    clock = FakeClock(100.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    row = np.arange(9, dtype=float)
    for i in range(40):
        predictor.dispatched(f"s{i}", row, "fast", model="m", stream=True, prediction=None)
        predictor.first_token(f"s{i}", 100.25)
        predictor.finished(f"s{i}", record(f"s{i}"))
    predictor.dispatched("n", row, "fast", model="m", stream=False, prediction=None)
    predictor.finished("n", dataclasses.replace(record("n"), stream=False))
    sizes = {t: len(w) + w.test_size for t, w in predictor.windows.items()}
    assert sizes == {"ttft": 40, "tpot": 40, "e2e": 1}
    ttft = predictor.windows["ttft"].snapshot()
    assert set(ttft.y) <= {0.25}
    tpot = predictor.windows["tpot"].snapshot()
    assert set(tpot.y) <= {0.1}  # (101.5 - 100.5) / (11 - 1)
    assert predictor.in_flight == 0


def test_failed_requests_do_not_train_tpot_or_e2e() -> None:
    predictor = LatencyPredictor(clock=FakeClock(100.0), rng=random.Random(0))
    row = np.zeros(9)
    predictor.dispatched("a", row, "fast", model="m", stream=True, prediction=None)
    predictor.finished("a", record("a", outcome=Outcome.CLIENT_DISCONNECTED))
    predictor.dispatched("b", row, "fast", model="m", stream=False, prediction=None)
    predictor.finished("b", dataclasses.replace(record("b"), status=500, stream=False))
    predictor.finished("unknown", record("unknown"))
    assert all(len(w) + w.test_size == 0 for w in predictor.windows.values())


def test_live_accuracy() -> None:
    from scheduler.framework.attributes import Prediction

    predictor = LatencyPredictor(clock=FakeClock(100.0), rng=random.Random(0))
    for i, predicted in enumerate((0.2, 0.3)):
        predictor.dispatched(
            f"r{i}",
            np.zeros(9),
            "fast",
            model="m",
            stream=True,
            prediction=Prediction(ttft_s=predicted, tpot_s=0.1, e2e_s=None),
        )
        predictor.first_token(f"r{i}", 100.25)
        predictor.finished(f"r{i}", record(f"r{i}"))
    accuracy = predictor.accuracy()
    assert accuracy.ttft_mape == pytest.approx((0.05 / 0.25 + 0.05 / 0.25) / 2)
    assert accuracy.ttft_coverage == 0.5
    assert accuracy.tpot_mape == pytest.approx(0.0)
    assert accuracy.samples == 2


def test_abandoned_requests_expire() -> None:
    clock = FakeClock(0.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0), pending_ttl_s=10.0)
    for i in range(1023):
        predictor.dispatched(f"old{i}", np.zeros(9), "a", model="m", stream=True, prediction=None)
    clock.advance(60)
    predictor.dispatched("new", np.zeros(9), "a", model="m", stream=True, prediction=None)
    assert predictor.in_flight == 1
