"""Fitting :class:`ObliviousGbdt`: second-order boosting on quantile bins.

Split search and leaf fitting live in ``binning.py`` (histogram split search per tree level).
``colsample`` samples the candidate features per tree (XGBoost's ``colsample_bytree``),
``subsample`` the rows per tree. For the quantile objective the split search uses the pinball
gradient and each leaf's value is then the ``alpha``-quantile of its residuals (as LightGBM
does), which is what makes quantile boosting converge. Everything random draws from the
caller's ``rng``. CPU-bound: the gateway runs it in its training worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.predictor.binning import (
    FeatureBins,
    fit_leaf_quantiles,
    fit_leaf_values,
    group_quantiles,
    grow_oblivious_tree,
    leaves_of,
)
from scheduler.predictor.gbdt import GbdtParams, ObliviousGbdt


def fit_gbdt(
    X: np.ndarray,
    y: np.ndarray,
    params: GbdtParams,
    *,
    rng: np.random.Generator,
    sample_weight: np.ndarray | None = None,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> ObliviousGbdt:
    """Boost ``params.n_trees`` oblivious trees on (``X``, ``y``); CPU-bound, call off the loop.

    ``X_val``/``y_val`` serve early stopping only, and early stopping needs them.
    """
    x = _features(X, "X")
    n_rows, n_features = x.shape
    target = _finite(y, n_rows, "y")
    weight = None if sample_weight is None else _weights(sample_weight, n_rows)
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val, y_val: pass both or neither")
    if (X_val is None) != (params.early_stopping_rounds is None):
        raise ValueError("X_val, y_val: required by early_stopping_rounds, and only by it")
    bins = FeatureBins.fit(x, params.n_bins)
    codes = bins.codes(x)
    base_score = _base_score(params, target, weight)
    pred = np.full(n_rows, base_score)
    stopping = None
    if X_val is not None and y_val is not None:
        val_x = _features(X_val, "X_val")
        if val_x.shape[1] != n_features:
            raise ValueError(f"X_val: must have {n_features} columns, got {val_x.shape[1]}")
        stopping = _EarlyStopping(
            columns=val_x.T.copy(),
            y=_finite(y_val, val_x.shape[0], "y_val"),
            pred=np.full(val_x.shape[0], base_score),
        )
    trees: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for _ in range(params.n_trees):
        rows = _sample_rows(rng, n_rows, params.subsample)
        cols = _sample_columns(rng, n_features, params.colsample)
        tree_pred, tree_y = pred[rows], target[rows]
        tree_w = None if weight is None else weight[rows]
        grad, hess = _gradients(params, tree_pred, tree_y, tree_w)
        grown = grow_oblivious_tree(
            np.take(codes[cols], rows, axis=1),
            grad,
            hess,
            depth=params.depth,
            n_bins=params.n_bins,
            min_samples_leaf=params.min_samples_leaf,
            l2_reg=params.l2_reg,
        )
        msl = params.min_samples_leaf
        if params.objective == "l2":
            fitted = fit_leaf_values(
                grown.leaf, params.depth, msl, grad=grad, hess=hess, l2_reg=params.l2_reg
            )
        else:
            fitted = fit_leaf_quantiles(
                grown.leaf,
                params.depth,
                msl,
                residual=tree_y - tree_pred,
                weight=tree_w,
                alpha=params.alpha,
            )
        values = params.learning_rate * fitted
        feature = cols[grown.features]
        threshold = bins.thresholds(feature, grown.bins)
        trees.append((feature, threshold, values, grown.gains))
        pred += values[leaves_of(codes, feature, grown.bins)]
        if stopping is not None and stopping.add(params, len(trees), values, feature, threshold):
            del trees[stopping.best_trees :]
            break
    feature, threshold, leaf_value, gain = (np.stack(parts) for parts in zip(*trees, strict=True))
    return ObliviousGbdt(
        feature=feature,
        threshold=threshold,
        leaf_value=leaf_value,
        gain=gain,
        base_score=base_score,
        n_features=n_features,
    )


@dataclass(slots=True, kw_only=True)
class _EarlyStopping:
    """Validation predictions tree by tree, and the tree count with the lowest loss so far."""

    columns: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    best_loss: float = np.inf
    best_trees: int = 0

    def add(
        self,
        params: GbdtParams,
        n_trees: int,
        values: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
    ) -> bool:
        """Account for the newest tree; True when boosting should stop."""
        self.pred += values[leaves_of(self.columns, feature, threshold)]
        diff = self.y - self.pred
        if params.objective == "l2":
            loss = float(np.mean(diff * diff))
        else:
            loss = float(np.mean(np.maximum(params.alpha * diff, (params.alpha - 1.0) * diff)))
        if loss < self.best_loss:
            self.best_loss, self.best_trees = loss, n_trees
        rounds = params.early_stopping_rounds or 0
        return n_trees - self.best_trees >= rounds


def _base_score(params: GbdtParams, y: np.ndarray, weight: np.ndarray | None) -> float:
    if params.objective == "l2":
        return float(np.average(y, weights=weight))
    groups = np.zeros(len(y), dtype=np.uint8)
    return float(group_quantiles(y, np.argsort(y), groups, 1, weight, params.alpha)[0])


def _gradients(
    params: GbdtParams, pred: np.ndarray, y: np.ndarray, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradient and hessian of the loss per row (hessian ``None``: 1 for every row)."""
    if params.objective == "l2":
        grad = pred - y
    else:
        grad = np.where(y > pred, -params.alpha, 1.0 - params.alpha)
    return (grad, None) if weight is None else (grad * weight, weight)


def _features(X: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name}: must be (rows >= 1, features >= 1), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: must be finite in float32 (no NaN or inf)")
    return x


def _finite(y: np.ndarray, n_rows: int, name: str) -> np.ndarray:
    values = np.asarray(y, dtype=np.float64)
    if values.shape != (n_rows,) or not np.isfinite(values).all():
        raise ValueError(f"{name}: must be finite with shape ({n_rows},), got {values.shape}")
    return values


def _weights(sample_weight: np.ndarray, n_rows: int) -> np.ndarray:
    weight = _finite(sample_weight, n_rows, "sample_weight")
    if weight.min() < 0 or weight.sum() <= 0:
        raise ValueError("sample_weight: must be >= 0 with a positive sum")
    return weight


def _sample_rows(rng: np.random.Generator, n_rows: int, fraction: float) -> np.ndarray:
    if fraction >= 1.0:
        return np.arange(n_rows)
    rows = np.flatnonzero(rng.random(n_rows) < fraction)
    return rows if len(rows) else rng.integers(n_rows, size=1)


def _sample_columns(rng: np.random.Generator, n_features: int, fraction: float) -> np.ndarray:
    k = max(1, round(fraction * n_features))
    if k >= n_features:
        return np.arange(n_features)
    return np.sort(rng.choice(n_features, size=k, replace=False))
