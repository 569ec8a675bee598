"""Gradient-boosted oblivious trees in pure numpy, shaped for microsecond batch prediction.

The router predicts latency for every candidate pod of every request on the event loop, where
LightGBM and XGBoost take ~60-150 us for 16 rows of 200 depth-6 trees. In an oblivious
(symmetric) tree every node at depth ``d`` tests the same ``x[feature] > threshold``, so a
row's leaf is the bit pattern of ``depth`` comparisons, and numpy evaluates the whole ensemble
for all rows and trees at once with a handful of vectorized calls and no Python loop
(CatBoost's design; ``_Layout`` has the two prediction paths). A row's prediction is bitwise
identical alone or in any batch. Features are compared as ``float32``, as in training (see
``binning.py``); NaN compares false, so it takes the "no" side of every split.

This module is the model and its parameters; fitting is ``boosting.fit_gbdt``. Measurements and
the recommended sizes are in ``docs/predictor-model.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from scheduler.predictor.binning import MAX_BINS

MAX_DEPTH = 8
"""A leaf index must fit in one byte: both prediction paths pack 8 comparisons per word."""

ROW_PATH_MAX_ROWS = 4
"""Up to this many rows, the row-major path is faster than the packed batch path."""

CHUNK_ROWS = 2048
"""Larger batches are predicted in chunks, bounding the temporaries to a few MB."""

FORMAT_VERSION = 1

_GATHER_LOW_BITS = np.uint64(0x0102040810204080)
_TOP_BYTE = np.uint64(56)


@dataclass(frozen=True, slots=True, kw_only=True)
class GbdtParams:
    """Boosting parameters; defaults follow llm-d's XGBoost latency models."""

    n_trees: int = 200
    depth: int = 6
    learning_rate: float = 0.05
    objective: Literal["l2", "quantile"] = "l2"
    alpha: float = 0.9
    """Quantile level of the ``quantile`` objective."""
    n_bins: int = 64
    """Quantile-binned split candidates per feature (at most 256)."""
    min_samples_leaf: int = 5
    l2_reg: float = 1.0
    """L2 penalty on leaf values (``l2`` objective) and in every split gain."""
    subsample: float = 0.8
    """Fraction of rows each tree is grown and fitted on (Bernoulli per row)."""
    colsample: float = 0.8
    """Fraction of features each tree may split on, drawn per tree."""
    early_stopping_rounds: int | None = None
    """Stop when the validation loss has not improved for this many trees; needs a validation
    set. The model keeps the trees up to the best validation loss."""

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("n_trees", self.n_trees >= 1, "must be >= 1"),
            ("depth", 1 <= self.depth <= MAX_DEPTH, f"must be in [1, {MAX_DEPTH}]"),
            ("learning_rate", 0.0 < self.learning_rate <= 1.0, "must be in (0, 1]"),
            ("objective", self.objective in ("l2", "quantile"), "must be 'l2' or 'quantile'"),
            ("alpha", 0.0 < self.alpha < 1.0, "must be in (0, 1)"),
            ("n_bins", 2 <= self.n_bins <= MAX_BINS, f"must be in [2, {MAX_BINS}]"),
            ("min_samples_leaf", self.min_samples_leaf >= 1, "must be >= 1"),
            ("l2_reg", self.l2_reg >= 0.0, "must be >= 0"),
            ("subsample", 0.0 < self.subsample <= 1.0, "must be in (0, 1]"),
            ("colsample", 0.0 < self.colsample <= 1.0, "must be in (0, 1]"),
            (
                "early_stopping_rounds",
                self.early_stopping_rounds is None or self.early_stopping_rounds >= 1,
                "must be >= 1 or None",
            ),
        ]
        for name, ok, reason in checks:
            if not ok:
                raise ValueError(f"{name}: {reason}, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class ObliviousGbdt:
    """A fitted ensemble: ``base_score + sum over trees of leaf_value[tree, leaf(x)]``.

    Bit ``d`` of a row's leaf in tree ``t`` is ``x[feature[t, d]] > threshold[t, d]``
    (``+inf``: level unused). Immutable (frozen, arrays read-only); pickles as its
    :meth:`to_arrays` (~0.1 MB for 200 depth-6 trees), so handing a new model from the
    trainer process to the event loop is cheap.
    """

    feature: np.ndarray
    """(trees, depth) feature index per level."""
    threshold: np.ndarray
    """(trees, depth) ``float32`` threshold per level."""
    leaf_value: np.ndarray
    """(trees, 2**depth), learning rate included."""
    gain: np.ndarray
    """(trees, depth) gain of each level's split, for :meth:`feature_importance`."""
    base_score: float
    n_features: int
    _layout: _Layout = field(init=False)

    def __post_init__(self) -> None:
        feature = np.array(self.feature, dtype=np.intp)
        threshold = np.array(self.threshold, dtype=np.float32)
        leaf_value = np.array(self.leaf_value, dtype=np.float64)
        gain = np.array(self.gain, dtype=np.float64)
        if feature.ndim != 2 or feature.shape[0] < 1 or not 1 <= feature.shape[1] <= MAX_DEPTH:
            raise ValueError(f"feature: must be (trees >= 1, depth 1..8), got {feature.shape}")
        if threshold.shape != feature.shape or gain.shape != feature.shape:
            raise ValueError("threshold, gain: must have the shape of feature")
        expected = (feature.shape[0], 1 << feature.shape[1])
        if leaf_value.shape != expected:
            raise ValueError(f"leaf_value: must be {expected}, got {leaf_value.shape}")
        if self.n_features < 1 or feature.min() < 0 or feature.max() >= self.n_features:
            raise ValueError(f"feature: must be in [0, n_features={self.n_features})")
        if not (np.isfinite(leaf_value).all() and np.isfinite(self.base_score)):
            raise ValueError("leaf_value, base_score: must be finite")
        for name, array in (
            ("feature", feature),
            ("threshold", threshold),
            ("leaf_value", leaf_value),
            ("gain", gain),
        ):
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "base_score", float(self.base_score))
        object.__setattr__(self, "n_features", int(self.n_features))
        object.__setattr__(
            self, "_layout", _Layout.of(feature, threshold, leaf_value, self.base_score)
        )

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    @property
    def depth(self) -> int:
        return int(self.feature.shape[1])

    def __reduce__(self) -> tuple[Any, ...]:
        return (_model_from_arrays, (self.to_arrays(),))

    def __repr__(self) -> str:
        return (
            f"ObliviousGbdt(n_trees={self.n_trees}, depth={self.depth}, "
            f"n_features={self.n_features}, base_score={self.base_score:.6g})"
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions (float64, one per row) for ``X`` of shape (rows, n_features)."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X: must be (rows, {self.n_features}), got {X.shape}")
        n = X.shape[0]
        if n <= ROW_PATH_MAX_ROWS:
            return self._layout.predict_rows(X)
        if n <= CHUNK_ROWS:
            return self._layout.predict_batch(X)
        chunks = range(0, n, CHUNK_ROWS)
        return np.concatenate([self._layout.predict_batch(X[i : i + CHUNK_ROWS]) for i in chunks])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model as named arrays, for ``np.savez`` and pickling."""
        return {
            "format_version": np.array(FORMAT_VERSION),
            "n_features": np.array(self.n_features),
            "base_score": np.array(self.base_score),
            "feature": self.feature,
            "threshold": self.threshold,
            "leaf_value": self.leaf_value,
            "gain": self.gain,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ObliviousGbdt:
        version = int(arrays["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version: expected {FORMAT_VERSION}, got {version}")
        return cls(
            feature=arrays["feature"],
            threshold=arrays["threshold"],
            leaf_value=arrays["leaf_value"],
            gain=arrays["gain"],
            base_score=float(arrays["base_score"]),
            n_features=int(arrays["n_features"]),
        )

    def feature_importance(self) -> np.ndarray:
        """Total split gain per feature (float64, length ``n_features``)."""
        return np.bincount(
            self.feature.ravel(), weights=self.gain.ravel(), minlength=self.n_features
        )


def _model_from_arrays(arrays: Mapping[str, np.ndarray]) -> ObliviousGbdt:
    return ObliviousGbdt.from_arrays(arrays)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layout:
    """The model re-arranged for the two prediction paths, derived once per model."""

    n_trees: int
    depth: int
    row_feature: np.ndarray
    """(trees * 8,) feature per (tree, level), levels padded to 8 (padding: never true)."""
    row_threshold: np.ndarray
    split_feature: np.ndarray
    """(splits,) feature of each distinct (feature, threshold) pair."""
    split_threshold: np.ndarray
    """(splits, 1) threshold of each distinct pair."""
    level_split: np.ndarray
    """(depth * trees,) distinct pair of each (level, tree), level-major."""
    level_shift: np.ndarray
    leaf_offset: np.ndarray
    """Start of each tree's leaves in ``values``."""
    values: np.ndarray
    """Leaf values flattened, ``base_score`` folded into the first tree's."""

    @classmethod
    def of(
        cls, feature: np.ndarray, threshold: np.ndarray, leaf_value: np.ndarray, base_score: float
    ) -> _Layout:
        n_trees, depth = feature.shape
        row_feature = np.zeros((n_trees, 8), dtype=np.intp)
        row_feature[:, :depth] = feature
        row_threshold = np.full((n_trees, 8), np.inf, dtype=np.float32)
        row_threshold[:, :depth] = threshold
        keys = (feature.astype(np.int64) << 32) | threshold.view(np.uint32).astype(np.int64)
        distinct, inverse = np.unique(keys, return_inverse=True)
        values = leaf_value.ravel().copy()
        values[: leaf_value.shape[1]] += base_score
        layout = cls(
            n_trees=n_trees,
            depth=depth,
            row_feature=row_feature.ravel(),
            row_threshold=row_threshold.ravel(),
            split_feature=(distinct >> 32).astype(np.intp),
            split_threshold=(distinct & 0xFFFFFFFF).astype(np.uint32).view(np.float32)[:, None],
            level_split=inverse.reshape(n_trees, depth).T.ravel().astype(np.intp),
            level_shift=np.arange(depth, dtype=np.uint64)[:, None],
            leaf_offset=np.arange(n_trees, dtype=np.intp) << depth,
            values=values,
        )
        for name in cls.__slots__:
            array = getattr(layout, name)
            if isinstance(array, np.ndarray):
                array.setflags(write=False)
        return layout

    def predict_rows(self, X: np.ndarray) -> np.ndarray:
        """Row-major: each tree's 8 comparison bytes read as a little-endian ``uint64``; the
        multiply gathers their low bits into the top byte, which is the leaf index."""
        x = np.asarray(X, dtype=np.float32)
        bits = np.take(x, self.row_feature, axis=1) > self.row_threshold
        leaf = ((bits.view("<u8") * _GATHER_LOW_BITS) >> _TOP_BYTE).view(np.intp)
        leaf += self.leaf_offset
        result: np.ndarray = np.take(self.values, leaf).sum(axis=1)
        return result

    def predict_batch(self, X: np.ndarray) -> np.ndarray:
        """Rows on the last axis (padded to 8): each distinct split is compared once, the
        outcomes gathered per (level, tree) so 8 rows share a ``uint64``, and level ``d``
        shifted by ``d`` and OR-ed into the others packs each row's leaf index in a byte."""
        n = X.shape[0]
        padded = (n + 7) & ~7
        columns = np.zeros((X.shape[1], padded), dtype=np.float32)
        columns[:, :n] = X.T
        outcomes = np.take(columns, self.split_feature, axis=0) > self.split_threshold
        bits = np.take(outcomes, self.level_split, axis=0)
        words = bits.view("<u8").reshape(self.depth, -1)
        words <<= self.level_shift
        packed = np.bitwise_or.reduce(words, axis=0)
        leaf = packed.view(np.uint8).reshape(self.n_trees, padded)
        # C order: the gather below is ~30% faster reading a C-ordered index.
        index = np.add(leaf.T, self.leaf_offset, dtype=np.intp, order="C")
        result: np.ndarray = np.take(self.values, index).sum(axis=1)[:n]
        return result
