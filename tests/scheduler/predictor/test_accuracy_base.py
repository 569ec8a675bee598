"""The analytic line under the TTFT trees: TTFT linear in the prompt work before the first token.

It is what lets a model trained at light load predict a heavier one (trees alone cannot
extrapolate), and its fit settles the prefill rate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scheduler.predictor import training
from scheduler.predictor.base import BASIS, MIN_SAMPLES, LinearBase, basis, fit_base
from scheduler.predictor.features import (
    INFLIGHT,
    INFLIGHT_PREFILL,
    N_FEATURES,
    PREFILL_WAIT,
    STEP_INTERVAL,
    STEP_PHASE,
    UNCACHED,
    UNKNOWN,
    derived_columns,
)
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.model import (
    PredictorModel,
    TargetModel,
    model_from_arrays,
    model_to_arrays,
    widen,
)
from scheduler.predictor.training import train_generation
from scheduler.predictor.window import WindowArrays
from tests.support.builders import training_job

ENDPOINTS = ("slow", "fast")
RATE = 8000.0  # on PREFILL_RATE_GRID (1000 * 2 ** 3)


def queue(n: int, seed: int, *, max_queued: float) -> WindowArrays:
    """TTFT = (10 ms + work / 10k tok/s) / speed, work = prompt work ahead still to do at
    ``RATE`` plus the request's own; ``max_queued`` bounds the prompt tokens queued ahead."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, N_FEATURES))
    X[:, INFLIGHT] = rng.integers(0, 8, n)
    X[:, INFLIGHT_PREFILL] = np.where(rng.uniform(size=n) < 0.4, 0.0, rng.uniform(0, max_queued, n))
    X[:, PREFILL_WAIT] = np.where(X[:, INFLIGHT_PREFILL] > 0, rng.exponential(0.05, n), 0.0)
    X[:, UNCACHED] = rng.uniform(10, 3000, n)
    X[:, STEP_PHASE] = UNKNOWN
    X[:, STEP_INTERVAL] = UNKNOWN
    code = rng.integers(0, len(ENDPOINTS), n).astype(np.int32)
    speed = np.array([0.5, 2.0])[code]
    work = derived_columns(X, RATE)[:, 1]
    y = (0.01 + work / 10_000) / speed * np.exp(rng.normal(0, 0.03, n))
    return WindowArrays(X=X, y=y, endpoint=code, endpoints=ENDPOINTS)


def test_fit_recovers_the_rate_and_the_line() -> None:
    data = queue(2000, 1, max_queued=6000)
    speed = np.array([0.5, 2.0])[data.endpoint]
    fitted = fit_base(data.X, data.y * speed)  # at pool-average speed
    assert fitted is not None
    rate, line = fitted
    assert rate == RATE
    c0, c1, c2, _, c4, c5 = line.coef  # no step is observable: its column is all 0
    # Steps are never observable here: the intercept is the constant plus the unknown-step term.
    assert c0 + c4 == pytest.approx(0.01, rel=0.1)
    assert c1 == pytest.approx(1e-4, rel=0.05)
    assert abs(c2) < 1e-6
    assert abs(c5) < 1e-3
    assert line.floor == pytest.approx(np.quantile(data.y * speed, 0.01))


def test_hot_path_is_the_fitted_line_floored() -> None:
    data = queue(300, 2, max_queued=6000)
    X = data.X.copy()
    X[:100, STEP_PHASE], X[:100, STEP_INTERVAL] = 0.004, 0.012  # steps observable
    X[:10, STEP_PHASE] = 0.03  # a step running longer than usual: nothing left to wait for
    line = LinearBase((0.01, 1e-4, 2e-6, 0.8, 0.003, 0.0005), floor=0.02)
    wide = widen(X, RATE)
    expected = np.maximum(basis(wide) @ np.array(line.coef), line.floor)
    np.testing.assert_allclose(np.exp(line.predict_log(wide)), expected, rtol=1e-12)
    assert basis(wide).shape == (300, len(BASIS))
    np.testing.assert_array_equal(basis(wide)[:10, 3], 0.0)  # step remaining is never negative


def test_too_few_samples_or_bad_latencies_fit_no_line() -> None:
    data = queue(MIN_SAMPLES - 1, 3, max_queued=6000)
    assert fit_base(data.X, data.y) is None
    data = queue(200, 3, max_queued=6000)
    assert fit_base(data.X, np.where(np.arange(200) == 7, 0.0, data.y)) is None


def test_invalid_lines_are_refused() -> None:
    with pytest.raises(ValueError, match="coef"):
        LinearBase((1.0, 2.0), floor=0.01)
    with pytest.raises(ValueError, match="floor"):
        LinearBase((0.0,) * len(BASIS), floor=0.0)
    with pytest.raises(ValueError, match="floor"):
        LinearBase((np.nan,) * len(BASIS), floor=0.01)


def train(data: WindowArrays, test: WindowArrays) -> TargetModel:
    outcome = train_generation(
        training_job(data, test, params=GbdtParams(n_trees=60, depth=4, learning_rate=0.1))
    )
    assert outcome.model is not None
    assert outcome.model.ttft is not None
    return outcome.model.ttft


def mape(model: TargetModel, data: WindowArrays) -> float:
    offsets = np.array([model.offsets[e] for e in data.endpoints])[data.endpoint]
    predicted = model.predict(data.X, offsets)
    return float(np.mean(np.abs(predicted - data.y) / data.y))


def test_a_model_trained_at_light_load_predicts_a_heavier_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    light, heavy = queue(1500, 4, max_queued=2000), queue(500, 5, max_queued=12_000)
    with_line = train(light, queue(200, 6, max_queued=2000))
    assert with_line.base is not None
    assert with_line.prefill_rate == RATE
    monkeypatch.setattr(training, "BASE_TARGETS", frozenset())
    trees_only = train(light, queue(200, 6, max_queued=2000))
    assert trees_only.base is None
    assert mape(with_line, heavy) < 0.1
    assert mape(with_line, heavy) < mape(trees_only, heavy) / 2


def test_the_line_round_trips_and_older_models_have_none() -> None:
    model = train(queue(600, 7, max_queued=6000), queue(100, 8, max_queued=6000))
    assert model.base is not None
    generation = PredictorModel(version=3, ttft=model)
    again = model_from_arrays(model_to_arrays(generation)).ttft
    assert again is not None
    assert again.base == model.base
    X = queue(20, 9, max_queued=6000).X
    np.testing.assert_allclose(again.predict(X, np.zeros(20)), model.predict(X, np.zeros(20)))
    # A file written before the line existed: the trees alone.
    older = {k: v for k, v in model_to_arrays(generation).items() if ".base." not in k}
    older_ttft = model_from_arrays(older).ttft
    assert older_ttft is not None
    assert older_ttft.base is None
    with pytest.raises(ValueError, match="prefill rate"):
        dataclasses.replace(model, prefill_rate=None)
