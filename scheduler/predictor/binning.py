"""The tree learner's side of the data: quantile bins, histogram split search, leaf fitting.

Each feature is cut once, before boosting, at up to ``n_bins - 1`` edges, and every training
value is replaced by its bin code (``uint8``): the number of edges strictly below the value.
``x > edges[b]`` holds exactly when ``code(x) > b``, so a split learned on codes as "code > b"
is applied to raw values as "x > edges[b]" with the same outcome for every training row. That
equivalence is why binning and prediction both compare ``float32`` values: features are cast
to ``float32`` once, here and in :meth:`ObliviousGbdt.predict`, so an edge taken from the data
sits exactly on a representable value and no row changes side between training and serving.

Edges are data values. A feature with at most ``n_bins`` distinct values gets one bin per value
(a queue length of 0..30 keeps every integer apart). Otherwise a value that holds at least a
bin's share of the rows (the 0 of "in-flight prefill tokens", mostly 0) gets its own bin and the
remaining rows are cut at evenly spaced order statistics, so every bin holds about the same
number of rows. Plain quantiles would spend most edges on the point mass, where they collapse
into one, and leave a dozen bins for the informative tail (``loadtest/bench_model.py``, 64
bins: TTFT MAPE 0.182 -> 0.173, p90 pinball loss 0.0411 -> 0.0386).

A tree is grown level by level on the codes: per-feature ``np.bincount`` histograms of gradient
sums and row counts over (leaf, bin) give, by cumulative sums, the gain of every candidate
split at every leaf, and the candidate with the largest gain summed over the level's leaves
becomes the level's split. One level costs O(rows x features) in numpy, with no Python loop
over rows or leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_BINS = 256
"""Codes are ``uint8``."""
NO_SPLIT = MAX_BINS - 1
"""The bin of an unused level: no code exceeds it."""
_MIN_GAIN_RATIO = 1e-12
"""A level whose best gain is below this fraction of the current score is left unsplit, so a
constant target or pure rounding noise does not produce splits."""


@dataclass(frozen=True, slots=True)
class FeatureBins:
    """Per-feature sorted edges (``float32``); feature ``j`` has ``len(edges[j]) + 1`` bins."""

    edges: tuple[np.ndarray, ...]

    @classmethod
    def fit(cls, X: np.ndarray, n_bins: int) -> FeatureBins:
        """Edges for every column of the ``float32`` matrix ``X`` (rows x features)."""
        if not 2 <= n_bins <= MAX_BINS:
            raise ValueError(f"n_bins: must be in [2, {MAX_BINS}], got {n_bins}")
        return cls(tuple(_column_edges(X[:, j], n_bins) for j in range(X.shape[1])))

    def codes(self, X: np.ndarray) -> np.ndarray:
        """Bin codes of ``X`` as a ``(features, rows)`` ``uint8`` array.

        Feature-major because the learner reads one feature's codes for all rows at a time.
        """
        out = np.empty((X.shape[1], X.shape[0]), dtype=np.uint8)
        for j, edges in enumerate(self.edges):
            out[j] = np.searchsorted(edges, X[:, j], side="left")
        return out

    def thresholds(self, features: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """Raw-value thresholds (``float32``) of splits on codes; ``+inf`` for ``NO_SPLIT``."""
        return np.array(
            [
                np.inf if b == NO_SPLIT else self.edges[f][b]
                for f, b in zip(features, bins, strict=True)
            ],
            dtype=np.float32,
        )


def leaves_of(columns: np.ndarray, feature: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Leaf of every column of ``columns`` (features, rows): codes against bins, or raw values
    against thresholds (the two agree on training rows)."""
    leaf = np.zeros(columns.shape[1], dtype=np.intp)
    for level, (f, t) in enumerate(zip(feature, threshold, strict=True)):
        leaf += (columns[f] > t).astype(np.intp) << level
    return leaf


def _column_edges(column: np.ndarray, n_bins: int) -> np.ndarray:
    values = np.sort(column)
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) <= n_bins:
        return distinct[:-1]
    budget = n_bins - 1
    heavy = np.flatnonzero(counts * n_bins >= len(values))
    # A value holding at least a bin's share of the rows gets a bin of its own (edges at it and
    # at the value below it); the other rows share the remaining edges by quantiles.
    isolating = np.unique(np.r_[distinct[heavy], distinct[np.maximum(heavy - 1, 0)]])
    light = values[np.repeat(counts * n_bins < len(values), counts)]
    k = budget - len(isolating)
    if k < 1:
        isolating, light, k = isolating[:0], values, budget
    picks = light[(np.arange(1, k + 1) * len(light)) // (k + 1)] if len(light) else light
    edges = np.unique(np.r_[isolating, picks])
    # An edge at the maximum would put no training row on its right: a bin that can never split.
    result: np.ndarray = edges[edges < values[-1]]
    return result


@dataclass(frozen=True, slots=True)
class GrownTree:
    """One oblivious tree's splits, in the coordinates of the codes it was grown on."""

    features: np.ndarray
    """Row of ``codes`` that each level splits on."""
    bins: np.ndarray
    """Each level's split: bit ``d`` of the leaf is set when ``code > bins[d]``."""
    gains: np.ndarray
    """Each level's gain summed over its leaves (0 when unused)."""
    leaf: np.ndarray
    """The leaf (0 .. 2**depth - 1) of every row the tree was grown on."""


def grow_oblivious_tree(
    codes: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray | None,
    *,
    depth: int,
    n_bins: int,
    min_samples_leaf: int,
    l2_reg: float,
) -> GrownTree:
    """Choose each level's split by the second-order gain summed over the level's leaves.

    ``codes``: (features, rows); ``grad``/``hess``: per row (``hess=None``: 1 per row, and the
    row counts double as hessian sums, saving a histogram). A leaf whose children would not both
    get ``min_samples_leaf`` rows adds no gain to a candidate; the split may still be taken for
    the other leaves, and :func:`fit_leaf_values` then falls back to an ancestor.

    After the first level only the smaller side of each split is histogrammed; the other side
    is its parent's histogram minus it (LightGBM's subtraction trick), halving the work.
    """
    n_rows = codes.shape[1]
    leaf = np.zeros(n_rows, dtype=np.intp)
    features = np.zeros(depth, dtype=np.intp)
    bins = np.full(depth, NO_SPLIT, dtype=np.intp)
    gains = np.zeros(depth)
    hists: tuple[np.ndarray, ...] = _histograms(codes, leaf, grad, hess, 1, n_bins)
    for level in range(depth):
        g_hist, h_hist, count = hists
        gain, score = _split_gains(g_hist, h_hist, count, min_samples_leaf, l2_reg)
        best = int(np.argmax(gain))
        last = level == depth - 1
        if not gain.flat[best] > max(_MIN_GAIN_RATIO * score, 0.0):
            if not last:  # nobody moves: the new right halves are empty
                hists = tuple(np.concatenate([h, np.zeros_like(h)], axis=1) for h in hists)
            continue
        j, b = divmod(best, n_bins - 1)
        features[level], bins[level], gains[level] = j, b, gain.flat[best]
        right = codes[j] > b
        if not last:
            small_is_right = 2 * np.count_nonzero(right) <= n_rows
            rows = np.flatnonzero(right if small_is_right else ~right)
            small = _histograms(
                np.take(codes, rows, axis=1),
                leaf[rows],
                grad[rows],
                None if hess is None else hess[rows],
                1 << level,
                n_bins,
            )
            hists = tuple(
                np.concatenate((h - s, s) if small_is_right else (s, h - s), axis=1)
                for h, s in zip(hists, small, strict=True)
            )
        leaf += right.astype(np.intp) << level
    return GrownTree(features=features, bins=bins, gains=gains, leaf=leaf)


def _histograms(
    codes: np.ndarray,
    leaf: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray | None,
    n_leaves: int,
    n_bins: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient sums, hessian sums and row counts per (feature, leaf, bin)."""
    shape = (codes.shape[0], n_leaves, n_bins)
    size = n_leaves * n_bins
    offset = leaf * n_bins
    g_hist, count = np.empty(shape), np.empty(shape)
    h_hist = count if hess is None else np.empty(shape)
    for j in range(codes.shape[0]):
        index = offset + codes[j]
        g_hist[j].flat = np.bincount(index, weights=grad, minlength=size)
        count[j].flat = np.bincount(index, minlength=size)
        if hess is not None:
            h_hist[j].flat = np.bincount(index, weights=hess, minlength=size)
    return g_hist, h_hist, count


def _split_gains(
    g_hist: np.ndarray, h_hist: np.ndarray, count: np.ndarray, min_samples_leaf: int, l2: float
) -> tuple[np.ndarray, float]:
    """Gain of every (feature, bin) split summed over leaves, and the unsplit score."""
    g_left = np.cumsum(g_hist, axis=2)
    h_left = np.cumsum(h_hist, axis=2)
    c_left = np.cumsum(count, axis=2)
    g_total, h_total, c_total = g_left[..., -1:], h_left[..., -1:], c_left[..., -1:]
    g_left, h_left, c_left = g_left[..., :-1], h_left[..., :-1], c_left[..., :-1]
    parent = _score(g_total, h_total, l2)
    gain = _score(g_left, h_left, l2) + _score(g_total - g_left, h_total - h_left, l2) - parent
    valid = (c_left >= min_samples_leaf) & (c_total - c_left >= min_samples_leaf)
    return np.where(valid, gain, 0.0).sum(axis=1), float(parent[0].sum())


def _score(g: np.ndarray, h: np.ndarray, l2: float) -> np.ndarray:
    result: np.ndarray = g * g / np.maximum(h + l2, 1e-300)
    return result


def fit_leaf_values(
    leaf: np.ndarray,
    depth: int,
    min_samples_leaf: int,
    *,
    grad: np.ndarray,
    hess: np.ndarray | None,
    l2_reg: float,
) -> np.ndarray:
    """Newton step ``-G / (H + l2_reg)`` per leaf (squared error)."""
    g = np.bincount(leaf, weights=grad, minlength=1 << depth)
    h = np.bincount(leaf, weights=hess, minlength=1 << depth).astype(np.float64)

    def newton(d: int) -> np.ndarray:
        g_d, h_d = g.reshape(-1, 1 << d).sum(axis=0), h.reshape(-1, 1 << d).sum(axis=0)
        step: np.ndarray = -g_d / np.maximum(h_d + l2_reg, 1e-300)
        return step

    return _at_fallback_levels(leaf, depth, min_samples_leaf, newton)


def fit_leaf_quantiles(
    leaf: np.ndarray,
    depth: int,
    min_samples_leaf: int,
    *,
    residual: np.ndarray,
    weight: np.ndarray | None,
    alpha: float,
) -> np.ndarray:
    """The ``alpha``-quantile of the residuals per leaf (pinball loss)."""
    order = np.argsort(residual)
    small_leaf = leaf.astype(np.uint8)

    def quantiles(d: int) -> np.ndarray:
        groups = small_leaf & np.uint8((1 << d) - 1)
        return group_quantiles(residual, order, groups, 1 << d, weight, alpha)

    return _at_fallback_levels(leaf, depth, min_samples_leaf, quantiles)


def _at_fallback_levels(
    leaf: np.ndarray, depth: int, min_samples_leaf: int, group_values: Callable[[int], np.ndarray]
) -> np.ndarray:
    """Each leaf's value from its deepest ancestor (or itself) with ``min_samples_leaf`` rows.

    The ancestors of a leaf at level ``d`` are the leaves sharing its low ``d`` bits;
    ``group_values(d)`` gives one value per such group. Counts only shrink going down, so the
    deepest level with enough rows is found by one top-down scan.
    """
    counts = np.bincount(leaf, minlength=1 << depth)
    leaves = np.arange(1 << depth)
    levels = np.zeros(1 << depth, dtype=np.intp)
    for d in range(1, depth + 1):
        group_counts = counts.reshape(-1, 1 << d).sum(axis=0)
        levels[group_counts[leaves & ((1 << d) - 1)] >= min_samples_leaf] = d
    values = np.empty(1 << depth)
    for d in np.unique(levels).tolist():
        chosen = levels == d
        values[chosen] = group_values(d)[leaves[chosen] & ((1 << d) - 1)]
    return values


def group_quantiles(
    values: np.ndarray,
    order: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    weight: np.ndarray | None,
    alpha: float,
) -> np.ndarray:
    """Weighted ``alpha``-quantile of ``values`` per group (0 for an empty group), no loops.

    ``order`` sorts ``values``; a stable sort by group (a radix sort: ``groups`` is ``uint8``)
    keeps each group's values sorted, and the quantile is the first value whose cumulative
    weight within its group reaches ``alpha`` of the group's total (the inverted CDF).
    """
    grouped = order[np.argsort(groups[order], kind="stable")]
    cumulative = np.cumsum(np.ones(len(values)) if weight is None else weight[grouped])
    counts = np.bincount(groups, minlength=n_groups)
    totals = counts if weight is None else np.bincount(groups, weights=weight, minlength=n_groups)
    ends = np.cumsum(counts)
    starts = ends - counts
    before = np.where(starts > 0, cumulative[starts - 1], 0.0)
    position = np.searchsorted(cumulative, before + alpha * totals, side="left")
    position = np.clip(position, starts, np.maximum(ends - 1, starts))
    picked = values[grouped[np.minimum(position, len(values) - 1)]]
    result: np.ndarray = np.where(counts > 0, picked, 0.0)
    return result
