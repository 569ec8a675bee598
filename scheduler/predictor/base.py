"""The analytic part of a TTFT model: time to first token, linear in the prompt work before it.

A model server prefills in arrival order, a fixed budget of tokens per engine step, so a new
request's first token comes after the prompt work queued ahead of it and its own, at a rate the
batch's decodes slow down, plus whatever is left of the step in progress. At pool-average speed
(latency divided by the endpoint's learned factor):

    base = c0 + W * (c1 + c2 * n) + c3 * s + c4 * u + c5 * n

``W`` is ``prefill_before_first_token`` (``features.derived_columns`` at the learned prefill
rate: prompt work ahead that is likely still to do, plus this request's uncached tokens), ``n``
the requests in flight there, ``s`` the time left of the step in progress (step interval minus
step phase, at least 0) and ``u`` 1 when the endpoint's steps are not observable (then ``s`` is
0). The trees then learn ``log(latency) - offset - log(base)``: what the line misses.

Why a line under the trees: trees predict piecewise constants and cannot extrapolate, and with
a thousand samples they approximate "proportional to the work ahead" coarsely; the line carries
that relation everywhere, including beyond the queue lengths seen in training, and leaves the
trees the corrections. On the heterogeneous simulated fleet it cut TTFT MAPE by about a fifth
(``docs/predictor.md``).

Fitting is weighted least squares on relative error (``sum((base / y - 1)^2)``), tried for each
rate of ``offsets.PREFILL_RATE_GRID``; the rate with the smallest mean relative error wins and
becomes the model's prefill rate. Predictions are floored at the 1st percentile of the
training latencies, so a line extrapolated below zero cannot produce nonsense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.predictor.features import (
    INFLIGHT,
    INFLIGHT_PREFILL,
    N_FEATURES,
    PREFILL_WAIT,
    STEP_INTERVAL,
    STEP_PHASE,
    derived_columns,
)
from scheduler.predictor.offsets import PREFILL_RATE_GRID

BASIS: tuple[str, ...] = (
    "const",
    "work",
    "work_x_inflight",
    "step_remaining",
    "step_unknown",
    "inflight",
)

MIN_SAMPLES = 50
"""Below this many samples no line is fitted (the trees alone model latency)."""

FLOOR_QUANTILE = 0.01

_SEARCH_ROWS = 20_000
"""The rate search looks at most at this many samples (evenly spaced)."""

_WORK = N_FEATURES + 1
"""``prefill_before_first_token`` in a widened row (``model.widen``)."""


@dataclass(frozen=True, slots=True)
class LinearBase:
    coef: tuple[float, ...]
    """One coefficient per ``BASIS`` column."""
    floor: float
    """Smallest prediction, in seconds at pool-average speed."""

    def __post_init__(self) -> None:
        if len(self.coef) != len(BASIS):
            raise ValueError(f"coef: expected {len(BASIS)} values, got {len(self.coef)}")
        if not (self.floor > 0 and all(np.isfinite(self.coef))):
            raise ValueError("coef and floor must be finite, floor > 0")

    def predict_log(self, wide: np.ndarray) -> np.ndarray:
        """``log(base)`` for widened rows whose derived columns are filled in (hot path: a
        handful of vector operations, whatever the number of rows)."""
        c0, c1, c2, c3, c4, c5 = self.coef
        inflight = wide[:, INFLIGHT]
        out: np.ndarray = inflight * c2
        out += c1
        out *= wide[:, _WORK]
        out += inflight * c5
        out += c0
        phase = wide[:, STEP_PHASE]
        remaining = wide[:, STEP_INTERVAL] - phase
        np.maximum(remaining, 0.0, out=remaining)
        remaining *= c3
        out += np.where(phase >= 0, remaining, c4)
        np.maximum(out, self.floor, out=out)
        np.log(out, out=out)
        return out


def basis(wide: np.ndarray) -> np.ndarray:
    """The ``BASIS`` columns of widened rows (derived columns filled in)."""
    inflight = wide[:, INFLIGHT]
    work = wide[:, _WORK]
    phase = wide[:, STEP_PHASE]
    known = phase >= 0
    remaining = np.where(known, np.maximum(wide[:, STEP_INTERVAL] - phase, 0.0), 0.0)
    return np.column_stack(
        [
            np.ones(len(wide)),
            work,
            work * inflight,
            remaining,
            (~known).astype(np.float64),
            inflight,
        ]
    )


def fit_base(
    X: np.ndarray, y: np.ndarray, rates: Sequence[float] = PREFILL_RATE_GRID
) -> tuple[float, LinearBase] | None:
    """The prefill rate and line that best explain ``y`` (seconds at pool-average speed) from
    rows ``X`` (all feature columns), or ``None`` with too few samples or a failed fit.

    Without a sample that had prompt work queued ahead which had already waited, the rate
    cannot be told apart from any other: the line is fitted at the grid's middle rate."""
    if len(y) < MIN_SAMPLES or not np.all(y > 0):
        return None
    if len(y) > _SEARCH_ROWS:
        keep = np.linspace(0, len(y) - 1, _SEARCH_ROWS).astype(np.intp)
        X, y = X[keep], y[keep]
    informative = (X[:, INFLIGHT_PREFILL] > 0) & (X[:, PREFILL_WAIT] > 0)
    if not informative.any():
        rates = (rates[len(rates) // 2],)
    wide = np.empty((len(X), N_FEATURES + 2))
    wide[:, :N_FEATURES] = X
    w = 1.0 / y
    best: tuple[float, float, np.ndarray] | None = None
    for rate in rates:
        derived_columns(X, rate, out=wide[:, N_FEATURES:])
        B = basis(wide)
        try:
            coef = np.linalg.lstsq(B * w[:, None], np.ones(len(y)), rcond=None)[0]
        except np.linalg.LinAlgError:
            continue
        error = float(np.mean(np.abs(B @ coef * w - 1.0)))
        if np.isfinite(error) and (best is None or error < best[0]):
            best = (error, rate, coef)
    if best is None:
        return None
    _, rate, coef = best
    floor = float(np.quantile(y, FLOOR_QUANTILE))
    return rate, LinearBase(tuple(float(c) for c in coef), floor)
