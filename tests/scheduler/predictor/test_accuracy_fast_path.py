"""The live predictor's fast path gives exactly what the models give, for the targets needed."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from scheduler.framework.types import Candidate
from scheduler.predictor.features import (
    INFLIGHT_PREFILL,
    N_FEATURES,
    PREFILL_WAIT,
    UNCACHED,
    derived_columns,
)
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.model import (
    PredictorModel,
    TargetModel,
    model_from_arrays,
    model_to_arrays,
    tree_inputs,
    widen,
)
from scheduler.predictor.runtime import LatencyPredictor
from scheduler.predictor.training import train_generation
from scheduler.predictor.window import WindowArrays
from tests.support.builders import FakeClock, make_candidate, training_job

ENDPOINTS = ("slow", "normal", "fast")


def window(n: int, seed: int) -> WindowArrays:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, N_FEATURES))
    X[:, INFLIGHT_PREFILL] = np.where(rng.uniform(size=n) < 0.5, 0.0, rng.uniform(0, 4000, n))
    X[:, PREFILL_WAIT] = np.where(X[:, INFLIGHT_PREFILL] > 0, rng.exponential(0.1, n), 0.0)
    X[:, UNCACHED] = rng.uniform(10, 3000, n)
    code = rng.integers(0, len(ENDPOINTS), n).astype(np.int32)
    speed = np.array([0.5, 1.0, 2.0])[code]
    remaining = np.maximum(X[:, INFLIGHT_PREFILL] - 8000 * X[:, PREFILL_WAIT], 0)
    y = (0.01 + (remaining + X[:, UNCACHED]) / 10_000) / speed * np.exp(rng.normal(0, 0.05, n))
    return WindowArrays(X=X, y=y, endpoint=code, endpoints=ENDPOINTS)


@pytest.fixture(scope="module")
def model() -> PredictorModel:
    train, test = window(2000, 1), window(300, 2)
    outcome = train_generation(
        training_job(
            train,
            test,
            params=GbdtParams(n_trees=40, depth=4, learning_rate=0.2),
            shapes={"slow": "t4"},
        )
    )
    assert outcome.model is not None
    return dataclasses.replace(outcome.model, beats_heuristic=True)


def candidates() -> list[Candidate]:
    return [make_candidate(e) for e in (*ENDPOINTS, "new")]


def predictor_with(model: PredictorModel) -> LatencyPredictor:
    predictor = LatencyPredictor(clock=FakeClock(0.0), rng=random.Random(0))
    predictor.install(model)
    return predictor


def test_the_ttft_and_e2e_models_learn_a_prefill_rate(model: PredictorModel) -> None:
    assert model.ttft is not None
    assert model.e2e is not None
    assert model.tpot is not None
    assert model.ttft.prefill_rate is not None
    assert 4000 <= model.ttft.prefill_rate <= 16_000  # the relation's 8000, on a coarse grid
    assert model.e2e.prefill_rate is not None
    assert model.tpot.prefill_rate is None  # TPOT does not read the prompt work queued ahead


@pytest.mark.parametrize("stream", [True, False, None])
def test_fast_path_equals_the_models(model: PredictorModel, stream: bool | None) -> None:
    predictor = predictor_with(model)
    rows = window(4, 3).X
    cands = candidates()
    predictions = predictor.predict(rows, cands, stream=stream)
    assert predictions is not None
    names = [c.endpoint.name for c in cands]
    for name, target in (("ttft_s", model.ttft), ("tpot_s", model.tpot), ("e2e_s", model.e2e)):
        assert target is not None
        expected = target.predict(rows, model.offsets(target, names, [None] * 4))
        got = [getattr(p, name) for p in predictions]
        needed = (
            name == "ttft_s"
            or stream is None
            or (name == "tpot_s" and stream)
            or (name == "e2e_s" and not stream)
        )
        if needed:
            np.testing.assert_allclose(got, expected, rtol=1e-12)
        else:
            assert got == [None] * 4


def test_a_generation_with_some_targets_only(model: PredictorModel) -> None:
    ttft_only = dataclasses.replace(model, tpot=None, e2e=None)
    for stream in (True, False, None):
        predictions = predictor_with(ttft_only).predict(window(4, 4).X, candidates(), stream=stream)
        assert predictions is not None
        assert len(predictions) == 4
        assert all(
            p.ttft_s is not None and p.tpot_s is None and p.e2e_s is None for p in predictions
        )
    no_e2e = dataclasses.replace(model, e2e=None)
    predictions = predictor_with(no_e2e).predict(window(4, 5).X, candidates(), stream=False)
    assert predictions is not None
    # A non-streamed request without an e2e model gets TPOT, to estimate e2e from.
    assert all(p.tpot_s is not None and p.e2e_s is None for p in predictions)


def test_new_generations_and_candidate_lists_are_not_served_stale_offsets(
    model: PredictorModel,
) -> None:
    assert model.ttft is not None
    predictor = predictor_with(model)
    rows = np.zeros((2, N_FEATURES))
    pair = [make_candidate("slow"), make_candidate("fast")]
    first = predictor.predict(rows, pair, stream=True)
    swapped = predictor.predict(rows, pair[::-1], stream=True)
    assert first is not None
    assert swapped is not None
    assert [p.ttft_s for p in swapped] == [p.ttft_s for p in first][::-1]
    faster = dataclasses.replace(
        model,
        ttft=dataclasses.replace(model.ttft, offsets={"slow": -5.0, "fast": -5.0}),
    )
    predictor.install(faster)
    again = predictor.predict(rows, pair, stream=True)
    assert again is not None
    assert all(
        a.ttft_s is not None and b.ttft_s is not None and a.ttft_s < b.ttft_s
        for a, b in zip(again, first, strict=True)
    )


def test_wide_rows_and_derived_columns(model: PredictorModel) -> None:
    assert model.ttft is not None
    rate = model.ttft.prefill_rate
    assert rate is not None
    X = window(5, 6).X
    derived = derived_columns(X, rate)
    remaining = np.maximum(X[:, INFLIGHT_PREFILL] - rate * X[:, PREFILL_WAIT], 0)
    np.testing.assert_allclose(derived[:, 0], remaining)
    np.testing.assert_allclose(derived[:, 1], remaining + X[:, UNCACHED])
    inputs = tree_inputs(X, model.ttft.columns, rate)
    assert inputs.shape == (5, len(model.ttft.columns) + 2)
    wide = widen(X)
    offsets = np.zeros(5)
    np.testing.assert_allclose(
        model.ttft.predict_wide(wide, offsets), model.ttft.predict(X, offsets), rtol=1e-12
    )


def test_prefill_rate_round_trips_and_older_models_have_none(model: PredictorModel) -> None:
    again = model_from_arrays(model_to_arrays(model))
    assert again.ttft is not None
    assert model.ttft is not None
    assert again.ttft.prefill_rate == model.ttft.prefill_rate
    # A file written before the derived columns: no rate, trees reading ``columns`` only.
    older = {k: v for k, v in model_to_arrays(model).items() if k.startswith(("meta.", "tpot."))}
    tpot = model_from_arrays(older).tpot
    assert tpot is not None
    assert tpot.prefill_rate is None
    assert isinstance(tpot, TargetModel)
    assert not math.isnan(float(tpot.predict(np.zeros((1, N_FEATURES)), np.zeros(1))[0]))
