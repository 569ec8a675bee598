"""Oblivious gradient-boosted trees: what they learn, their edge cases, and their contracts."""

from __future__ import annotations

import dataclasses
import io
import pickle
from typing import Any

import numpy as np
import pytest

from scheduler.predictor.binning import FeatureBins
from scheduler.predictor.boosting import fit_gbdt
from scheduler.predictor.gbdt import (
    CHUNK_ROWS,
    ROW_PATH_MAX_ROWS,
    GbdtParams,
    ObliviousGbdt,
)

FAST = GbdtParams(n_trees=60, depth=5, learning_rate=0.15)


def synthetic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """y = 3 x0 + 10 [x1 > 0.5] + x0 x2 + noise, plus two distractor features."""
    X = rng.random((n, 5))
    y = 3 * X[:, 0] + 10 * (X[:, 1] > 0.5) + X[:, 0] * X[:, 2] + 0.1 * rng.standard_normal(n)
    return X, y


def heteroscedastic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise whose scale grows with x1, so a constant offset cannot give 90% coverage."""
    X = rng.random((n, 3))
    y = 2 * X[:, 0] + (0.1 + 2 * X[:, 1]) * rng.standard_normal(n)
    return X, y


def r2(pred: np.ndarray, y: np.ndarray) -> float:
    return float(1 - np.mean((pred - y) ** 2) / np.var(y))


def pinball(pred: np.ndarray, y: np.ndarray, alpha: float) -> float:
    diff = y - pred
    return float(np.mean(np.maximum(alpha * diff, (alpha - 1) * diff)))


@pytest.fixture(scope="module")
def model() -> ObliviousGbdt:
    X, y = synthetic(np.random.default_rng(1), 3000)
    return fit_gbdt(X, y, FAST, rng=np.random.default_rng(0))


# -- learning ------------------------------------------------------------------------------------


def test_learns_a_known_relation_on_held_out_data(model: ObliviousGbdt) -> None:
    X, y = synthetic(np.random.default_rng(2), 2000)
    assert r2(model.predict(X), y) > 0.95


def test_default_params_learn_the_relation() -> None:
    X, y = synthetic(np.random.default_rng(1), 3000)
    fitted = fit_gbdt(X, y, GbdtParams(), rng=np.random.default_rng(0))
    X_test, y_test = synthetic(np.random.default_rng(2), 2000)
    assert fitted.n_trees == 200
    assert fitted.depth == 6
    assert r2(fitted.predict(X_test), y_test) > 0.95


def test_quantile_objective_covers_alpha_of_held_out_data() -> None:
    X, y = heteroscedastic(np.random.default_rng(3), 5000)
    params = dataclasses.replace(FAST, objective="quantile", alpha=0.9)
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0))
    X_test, y_test = heteroscedastic(np.random.default_rng(4), 5000)
    pred = fitted.predict(X_test)
    assert 0.85 <= np.mean(y_test <= pred) <= 0.95
    # Better than the best constant: the model follows the noise scale.
    constant = np.quantile(y, 0.9)
    assert pinball(pred, y_test, 0.9) < 0.8 * pinball(np.full_like(y_test, constant), y_test, 0.9)


@pytest.mark.parametrize("objective", ["l2", "quantile"])
def test_training_loss_falls_with_more_trees(objective: str) -> None:
    X, y = heteroscedastic(np.random.default_rng(5), 2000)
    losses = []
    for n_trees in (1, 5, 20, 80):
        params = dataclasses.replace(FAST, n_trees=n_trees, objective=objective)  # type: ignore[arg-type]
        pred = fit_gbdt(X, y, params, rng=np.random.default_rng(0)).predict(X)
        losses.append(np.mean((pred - y) ** 2) if objective == "l2" else pinball(pred, y, 0.9))
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.9 * losses[0]


def test_feature_importance_ranks_the_informative_features(model: ObliviousGbdt) -> None:
    importance = model.feature_importance()
    assert importance.shape == (5,)
    assert importance.argmax() == 1
    assert importance[[0, 1]].min() > 10 * importance[[3, 4]].max()


# -- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["l2", "quantile"])
def test_a_constant_target_gives_a_constant_without_splits(objective: str) -> None:
    X = np.random.default_rng(6).random((300, 3))
    y = np.full(300, 3.7)
    params = dataclasses.replace(FAST, objective=objective)  # type: ignore[arg-type]
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0))
    assert np.allclose(fitted.predict(X), 3.7, rtol=0, atol=1e-9)
    assert not fitted.feature_importance().any()


def test_a_single_feature() -> None:
    X = np.random.default_rng(7).random((1000, 1))
    y = np.sin(6 * X[:, 0])
    fitted = fit_gbdt(X, y, FAST, rng=np.random.default_rng(0))
    assert fitted.n_features == 1
    assert r2(fitted.predict(X), y) > 0.98


def test_an_all_equal_column_and_duplicate_values() -> None:
    rng = np.random.default_rng(8)
    steps = rng.integers(0, 4, 800).astype(np.float64)  # 4 distinct values, many duplicates
    X = np.column_stack([np.full(800, 2.5), steps])
    y = 2.0 * steps
    params = dataclasses.replace(FAST, subsample=1.0, colsample=1.0)
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0))
    assert fitted.feature_importance()[0] == 0
    grid = np.column_stack([np.full(4, 2.5), np.arange(4.0)])
    assert np.allclose(fitted.predict(grid), 2.0 * np.arange(4.0), atol=0.05)


def test_min_samples_leaf_bounds_what_one_outlier_can_do() -> None:
    rng = np.random.default_rng(9)
    X = rng.random((400, 2))
    y = np.zeros(400)
    y[17] = 1000.0
    one_tree = GbdtParams(
        n_trees=1, learning_rate=1.0, l2_reg=0.0, subsample=1.0, colsample=1.0, depth=6
    )
    for min_samples_leaf in (1, 20, 100):
        params = dataclasses.replace(one_tree, min_samples_leaf=min_samples_leaf)
        pred = fit_gbdt(X, y, params, rng=np.random.default_rng(0)).predict(X)
        # Every leaf value is a mean over >= min_samples_leaf rows, one of them the outlier.
        assert pred.max() <= 1000.0 / min_samples_leaf + 1e-9
    isolated = fit_gbdt(X, y, one_tree, rng=np.random.default_rng(0)).predict(X)
    assert isolated.max() > 1000.0 / 20  # the bound above is not vacuous


def test_min_samples_leaf_above_half_the_rows_leaves_the_tree_unsplit() -> None:
    X, y = synthetic(np.random.default_rng(10), 200)
    params = dataclasses.replace(FAST, min_samples_leaf=101, subsample=1.0)
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0))
    assert np.ptp(fitted.predict(X)) == 0


def test_sample_weight_weighs_rows() -> None:
    X = np.ones((100, 1))  # nothing to split on, all rows in every tree: only the base score
    y = np.r_[np.zeros(50), np.full(50, 10.0)]
    weight = np.r_[np.ones(50), np.full(50, 3.0)]
    params = dataclasses.replace(FAST, subsample=1.0)
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0), sample_weight=weight)
    assert fitted.predict(X[:1])[0] == pytest.approx(7.5)
    quantile = dataclasses.replace(params, objective="quantile", alpha=0.2)
    q = fit_gbdt(X, y, quantile, rng=np.random.default_rng(0), sample_weight=weight)
    assert q.predict(X[:1])[0] == 0.0  # the zeros hold 25% of the weight
    unweighted = fit_gbdt(X, y, quantile, rng=np.random.default_rng(0))
    assert unweighted.predict(X[:1])[0] == 0.0


# -- early stopping ------------------------------------------------------------------------------


def test_early_stopping_stops_when_validation_loss_stalls() -> None:
    rng = np.random.default_rng(11)
    X, X_val = rng.random((600, 4)), rng.random((300, 4))
    y, y_val = rng.standard_normal(600), rng.standard_normal(300)  # nothing to learn
    params = dataclasses.replace(FAST, n_trees=200, early_stopping_rounds=10)
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0), X_val=X_val, y_val=y_val)
    assert fitted.n_trees < 50


def test_early_stopping_keeps_going_while_validation_improves() -> None:
    rng = np.random.default_rng(12)
    X, y = synthetic(rng, 2000)
    X_val, y_val = synthetic(rng, 500)
    params = dataclasses.replace(FAST, n_trees=40, learning_rate=0.05, early_stopping_rounds=5)
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0), X_val=X_val, y_val=y_val)
    assert fitted.n_trees >= 35


def test_validation_data_and_early_stopping_come_together() -> None:
    X, y = synthetic(np.random.default_rng(13), 100)
    with pytest.raises(ValueError, match="early_stopping_rounds"):
        fit_gbdt(X, y, FAST, rng=np.random.default_rng(0), X_val=X, y_val=y)
    stopping = dataclasses.replace(FAST, early_stopping_rounds=5)
    with pytest.raises(ValueError, match="early_stopping_rounds"):
        fit_gbdt(X, y, stopping, rng=np.random.default_rng(0))


# -- contracts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, ROW_PATH_MAX_ROWS, ROW_PATH_MAX_ROWS + 1, 8, 9, 16, 257])
def test_one_row_at_a_time_equals_the_batch_bitwise(model: ObliviousGbdt, n: int) -> None:
    X, _ = synthetic(np.random.default_rng(14), n)
    batch = model.predict(X)
    assert batch.shape == (n,)
    assert batch.dtype == np.float64
    alone = np.array([model.predict(X[i : i + 1])[0] for i in range(n)])
    assert np.array_equal(batch, alone)


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_every_depth_predicts_alike_in_both_paths(depth: int) -> None:
    X, y = synthetic(np.random.default_rng(21), 1500)
    params = dataclasses.replace(FAST, n_trees=20, depth=depth)
    fitted = fit_gbdt(X, y, params, rng=np.random.default_rng(0))
    assert fitted.leaf_value.shape == (20, 2**depth)
    batch = fitted.predict(X[:40])
    assert np.array_equal(batch, np.array([fitted.predict(X[i : i + 1])[0] for i in range(40)]))
    assert r2(fitted.predict(X), y) > (0.5 if depth == 1 else 0.9)


def test_a_point_mass_gets_one_bin_and_the_tail_the_rest() -> None:
    rng = np.random.default_rng(22)
    mostly_zero = np.where(rng.random(5000) < 0.7, 0.0, rng.lognormal(7, 1, 5000))
    bins = FeatureBins.fit(mostly_zero[:, None].astype(np.float32), 64)
    edges = bins.edges[0]
    assert edges[0] == 0.0
    assert len(edges) >= 60  # plain quantiles would leave ~20 for the 30% that vary
    codes = bins.codes(mostly_zero[:, None].astype(np.float32))[0]
    assert np.array_equal(codes == 0, mostly_zero == 0)


def test_batches_larger_than_a_chunk(model: ObliviousGbdt) -> None:
    X, _ = synthetic(np.random.default_rng(15), CHUNK_ROWS + 3)
    whole = model.predict(X)
    assert np.array_equal(whole[-10:], model.predict(X[-10:]))
    assert np.array_equal(whole[:10], model.predict(X[:10]))


def test_float32_input_predicts_like_float64_of_the_same_values(model: ObliviousGbdt) -> None:
    X32 = synthetic(np.random.default_rng(16), 64)[0].astype(np.float32)
    assert np.array_equal(model.predict(X32), model.predict(X32.astype(np.float64)))
    assert np.array_equal(model.predict(X32[:1]), model.predict(X32[:1].astype(np.float64)))


def test_arrays_round_trip_through_savez_and_predict_identically(model: ObliviousGbdt) -> None:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = model.to_arrays()  # numpy's stubs reserve a bool keyword in **kwds
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer) as archive:
        restored = ObliviousGbdt.from_arrays(dict(archive))
    X, _ = synthetic(np.random.default_rng(17), 100)
    assert np.array_equal(restored.predict(X), model.predict(X))
    assert np.array_equal(restored.feature_importance(), model.feature_importance())


def test_pickles_as_its_arrays(model: ObliviousGbdt) -> None:
    restored = pickle.loads(pickle.dumps(model))
    X, _ = synthetic(np.random.default_rng(18), 50)
    assert np.array_equal(restored.predict(X), model.predict(X))
    assert len(pickle.dumps(model)) < 200_000


def test_the_model_is_immutable(model: ObliviousGbdt) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.base_score = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        model.leaf_value[0, 0] = 1.0


def test_same_seed_same_model_other_seed_other_model() -> None:
    X, y = synthetic(np.random.default_rng(19), 500)
    a, b, c = (fit_gbdt(X, y, FAST, rng=np.random.default_rng(s)) for s in (7, 7, 8))
    for name, array in a.to_arrays().items():
        assert np.array_equal(array, b.to_arrays()[name]), name
    assert not np.array_equal(a.leaf_value, c.leaf_value)


def test_predict_checks_the_shape(model: ObliviousGbdt) -> None:
    with pytest.raises(ValueError, match=r"X: must be \(rows, 5\)"):
        model.predict(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="X: must be"):
        model.predict(np.zeros(5))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_trees", 0),
        ("depth", 9),
        ("learning_rate", 0.0),
        ("alpha", 1.0),
        ("n_bins", 1),
        ("min_samples_leaf", 0),
        ("l2_reg", -1.0),
        ("subsample", 0.0),
        ("colsample", 1.5),
        ("early_stopping_rounds", 0),
    ],
)
def test_params_name_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        GbdtParams(**{field: value})  # type: ignore[arg-type]


def test_training_data_is_checked() -> None:
    X, y = synthetic(np.random.default_rng(20), 50)
    rng = np.random.default_rng(0)
    bad_x = X.copy()
    bad_x[3, 1] = np.nan
    with pytest.raises(ValueError, match="X: must be finite"):
        fit_gbdt(bad_x, y, FAST, rng=rng)
    with pytest.raises(ValueError, match="y: must be finite"):
        fit_gbdt(X, y[:-1], FAST, rng=rng)
    with pytest.raises(ValueError, match="sample_weight"):
        fit_gbdt(X, y, FAST, rng=rng, sample_weight=-np.ones(50))
