"""Online calibration of quantile predictions: recent requests are covered at the quantile.

A p90 model trained on the last window under-covers when load rises faster than it retrains;
the predictor raises its predictions by the p90 of recent requests' log(actual / predicted)
(split conformal over a sliding window), and lowers them again when they over-cover.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from scheduler.framework.attributes import Prediction
from scheduler.predictor.features import N_FEATURES
from scheduler.predictor.runtime import CALIBRATION_MIN, MAX_CALIBRATION, LatencyPredictor
from tests.scheduler.predictor.test_accuracy_prefill_wait import model_with_offsets, record
from tests.support.builders import FakeClock, make_candidate


def serve(
    predictor: LatencyPredictor, clock: FakeClock, n: int, log_shift: float, seed: int
) -> list[bool]:
    """``n`` streamed requests to "a" whose TTFT is the model's raw prediction times
    ``exp(log_shift + N(0, 0.2))``; whether each was covered by what the predictor said."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((2, N_FEATURES))
    candidates = [make_candidate("a"), make_candidate("b")]
    covered = []
    for i in range(n):
        predictions = predictor.predict(rows, candidates, stream=True)
        assert predictions is not None
        predicted = predictions[0].ttft_s
        assert predicted is not None
        # "b" serves nothing, so only "a" drifts (live correction, drift.py): the calibration
        # scales both alike, the order between them is the drift's alone.
        drift = predictions[0].adjust[0]
        assert predictions[1].ttft_s == pytest.approx(predicted / math.exp(drift))
        raw = predicted / math.exp(predictor.calibration["ttft"] + drift)
        actual = raw * math.exp(log_shift + rng.normal(0, 0.2))
        request_id = f"r{seed}-{i}"
        predictor.dispatched(
            request_id, rows[0], "a", model="m", stream=True, prediction=predictions[0]
        )
        clock.advance(actual)
        predictor.first_token(request_id, clock())
        covered.append(actual <= predicted)
    return covered


def quantile_predictor() -> tuple[LatencyPredictor, FakeClock]:
    clock = FakeClock(0.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    model = dataclasses.replace(model_with_offsets({}), objective="quantile", quantile=0.9)
    predictor.install(model)
    return predictor, clock


def test_an_under_covering_quantile_model_is_raised_to_its_quantile() -> None:
    predictor, clock = quantile_predictor()
    # Latencies run 35 % above the model's p90 (load rose): it covers ~7 % on its own.
    covered = serve(predictor, clock, 1500, log_shift=0.3, seed=1)
    assert sum(covered[:30]) / 30 < 0.5  # before the margin has grown
    assert 0.85 <= sum(covered[-800:]) / 800 <= 0.95
    assert math.exp(predictor.calibration["ttft"]) > 1.05
    assert raised_by(predictor) > 1.3  # the margin and the endpoint's live drift together
    # Load falls again: the margin comes back down, coverage stays at the quantile.
    covered = serve(predictor, clock, 1500, log_shift=-0.3, seed=2)
    assert 0.85 <= sum(covered[-800:]) / 800 <= 0.95
    assert raised_by(predictor) < 1.0


def raised_by(predictor: LatencyPredictor) -> float:
    """The factor "a"'s TTFT predictions are scaled by: calibration margin times live drift."""
    prediction = predictor.predict(np.zeros((1, N_FEATURES)), [make_candidate("a")])
    assert prediction is not None
    return math.exp(predictor.calibration["ttft"] + prediction[0].adjust[0])


def test_mean_models_are_not_calibrated() -> None:
    clock = FakeClock(0.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    predictor.install(model_with_offsets({}))  # objective "mean"
    serve(predictor, clock, 200, log_shift=0.5, seed=3)
    assert predictor.calibration == {"ttft": 0.0}


def test_only_ttft_is_calibrated() -> None:
    # TPOT is scored at the end of a request, too late for a margin to follow the load.
    predictor, clock = quantile_predictor()
    serve(predictor, clock, 300, log_shift=0.5, seed=5)
    assert predictor.calibration["ttft"] > 0.3
    for i in range(CALIBRATION_MIN * 2):  # TPOT 500x above its prediction, every time
        predictor.dispatched(
            f"t{i}",
            np.zeros(N_FEATURES),
            "a",
            model="m",
            stream=True,
            prediction=Prediction(ttft_s=1.0, tpot_s=0.001, e2e_s=None),
        )
        predictor.first_token(f"t{i}", clock())
        predictor.finished(f"t{i}", record(f"t{i}", "a"))  # TPOT 0.5 s
    assert predictor.accuracy().tpot_coverage == 0.0  # scored, every one a miss
    assert set(predictor.calibration) == {"ttft"}


def test_the_margin_is_bounded() -> None:
    predictor, clock = quantile_predictor()
    # 22,000x slower than predicted: beyond what the live drift corrects (64x) by far.
    serve(predictor, clock, 2000, log_shift=10.0, seed=4)
    assert predictor.calibration["ttft"] == pytest.approx(MAX_CALIBRATION)
