"""Training learns a known relation, each endpoint's speed, and guards against regressions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.model import model_from_arrays, model_to_arrays
from scheduler.predictor.training import (
    TARGET_COLUMNS,
    TrainingJob,
    fit_target,
    spearman,
    train_generation,
)
from scheduler.predictor.window import WindowArrays
from tests.scheduler.predictor.synthetic import SPEEDS, dataset

PARAMS = GbdtParams(n_trees=120, depth=5, learning_rate=0.1)


def empty() -> WindowArrays:
    return dataset(0, 0)


def job(train: WindowArrays, test: WindowArrays, **kw: object) -> TrainingJob:
    args: dict[str, object] = {
        "version": 1,
        "train": {"ttft": train, "tpot": empty(), "e2e": empty()},
        "test": {"ttft": test, "tpot": empty(), "e2e": empty()},
        "params": PARAMS,
        "min_samples": 50,
        "shapes": {},
        "previous": None,
        "snapshot_at": 5.0,
        "seed": 0,
    }
    args.update(kw)
    return TrainingJob(**args)  # type: ignore[arg-type]


def test_learns_the_relation_and_the_speed_of_each_endpoint() -> None:
    train, test = dataset(4000, seed=1), dataset(500, seed=2)
    outcome = train_generation(job(train, test))
    model = outcome.model
    assert model is not None
    assert model.ttft is not None
    assert model.tpot is None  # no samples: not trained
    (report,) = outcome.reports
    assert report.accepted
    assert report.new is not None
    assert report.new.mape < 0.10
    assert report.new.spearman > 0.95
    offsets = model.ttft.offsets
    # Twice as fast = half the latency: log-offsets a factor of 2 apart (ln 2 ~ 0.69).
    assert offsets["slow"] - offsets["normal"] == pytest.approx(math.log(2), abs=0.12)
    assert offsets["normal"] - offsets["fast"] == pytest.approx(math.log(2), abs=0.12)
    assert model.beats_heuristic


def test_new_endpoint_gets_its_shape_offset_or_the_pool_average() -> None:
    train = dataset(3000, seed=3)
    model = train_generation(
        job(train, dataset(200, seed=4), shapes={"slow": "t4", "fast": "h100"})
    ).model
    assert model is not None
    assert model.ttft is not None
    assert model.ttft.offset_of("new-t4", "t4") == model.ttft.offsets["slow"]
    assert model.ttft.offset_of("new-h100", "h100") == model.ttft.offsets["fast"]
    assert model.ttft.offset_of("mystery", None) == 0.0
    assert model.ttft.offset_of("mystery", "unknown-shape") == 0.0


def test_a_worse_model_is_rejected_and_the_previous_kept() -> None:
    good = train_generation(job(dataset(4000, seed=5), dataset(400, seed=6))).model
    assert good is not None
    assert good.ttft is not None
    # Training data whose latencies were scrambled: the new model is worse on held-out data.
    noisy = dataset(4000, seed=7)
    shuffled = WindowArrays(
        X=noisy.X,
        y=np.random.default_rng(0).permutation(noisy.y),
        endpoint=noisy.endpoint,
        endpoints=noisy.endpoints,
    )
    model, report = fit_target(
        "ttft",
        TARGET_COLUMNS["ttft"],
        shuffled,
        dataset(400, seed=6),
        params=PARAMS,
        shapes={},
        previous=good.ttft,
        seed=1,
    )
    assert model is None
    assert not report.accepted
    assert report.previous is not None
    assert report.new is not None
    assert report.new.mape > report.previous.mape
    outcome = train_generation(job(shuffled, dataset(400, seed=6), previous=good, version=2))
    assert outcome.model is not None
    assert outcome.model.ttft is good.ttft


def test_too_few_samples_trains_nothing() -> None:
    outcome = train_generation(job(dataset(10, seed=8), dataset(5, seed=9)))
    assert outcome.model is None
    assert outcome.reports == ()


def test_quantile_objective_covers_its_quantile() -> None:
    params = GbdtParams(n_trees=120, depth=5, learning_rate=0.1, objective="quantile", alpha=0.9)
    train, test = dataset(4000, seed=10, noise=0.3), dataset(1000, seed=11, noise=0.3)
    outcome = train_generation(job(train, test, params=params))
    (report,) = outcome.reports
    assert report.new is not None
    assert report.new.coverage is not None
    assert 0.8 < report.new.coverage < 0.97
    assert outcome.model is not None
    assert outcome.model.objective == "quantile"


def test_model_arrays_round_trip() -> None:
    model = train_generation(
        job(dataset(2000, seed=12), dataset(200, seed=13), shapes={"slow": "t4"})
    ).model
    assert model is not None
    assert model.ttft is not None
    again = model_from_arrays(model_to_arrays(model))
    assert again.ttft is not None
    X = dataset(50, seed=14).X
    offsets = np.full(50, 0.3)
    np.testing.assert_allclose(again.ttft.predict(X, offsets), model.ttft.predict(X, offsets))
    assert again.ttft.offsets == model.ttft.offsets
    assert again.ttft.shape_offsets == model.ttft.shape_offsets
    assert (again.version, again.beats_heuristic, again.objective) == (
        model.version,
        model.beats_heuristic,
        model.objective,
    )


def test_spearman() -> None:
    a = np.arange(10.0)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.ones(10)) == 0.0
    assert math.isnan(spearman(a[:1], a[:1]))
    assert set(SPEEDS) == {"slow", "normal", "fast"}
