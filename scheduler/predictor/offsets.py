"""Endpoint speed offsets and the pool's prefill rate, from one additive model of log latency.

Both are fitted before the trees, by ridge least squares on an intercept, one indicator per
endpoint and an additive model of load (per feature column: ``log1p(x)``, ``x`` and steps at
its deciles, standardized; constant columns dropped). Pure numpy, runs in the training worker.

**Offsets.** The indicator's coefficient is the endpoint's log latency at equal load. Load and
speed are confounded in live traffic (a slow endpoint's requests pile up, so its load features
run high), and fitting both together is what separates them: a model of load alone, whose
residuals were then averaged per endpoint, explained part of the speed gap by the load it
causes and learned 2.5x instead of 4x between the slowest and fastest of four simulated pods
(``loadtest/bench_accuracy.py``, ``docs/predictor.md``). Each indicator is ridge-penalized with
weight ``OFFSET_SHRINK_SAMPLES``, which shrinks an endpoint's offset toward the pool average by
about ``n / (n + shrink)``, so a few samples cannot make an endpoint look extreme; offsets are
centred on the average endpoint (0), which is what a new endpoint is assumed to be.

**Prefill rate.** ``prefill_wait`` (seconds at pool-average speed that the oldest request
queued ahead has waited) and ``inflight_prefill`` (prompt tokens queued ahead) together say
how much prompt work is really left ahead: ``remaining = max(0, inflight_prefill - rate *
prefill_wait)``. The rate, in prompt tokens per pool-average second, is whatever makes
``remaining`` explain latency best: each candidate of a geometric grid is tried as two extra
columns (``remaining`` and ``remaining + uncached``, the prompt work before this request's
first token) of the same least-squares fit, and the one with the smallest residual wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scheduler.predictor.features import INFLIGHT_PREFILL, PREFILL_WAIT, derived_columns

OFFSET_SHRINK_SAMPLES = 3.0
"""Prior weight, in samples, of the pool average in an endpoint's offset (ridge penalty)."""

PREFILL_RATE_GRID = tuple(1000.0 * 2 ** (k / 4) for k in range(29))
"""Candidate prefill rates, 1k to 128k prompt tokens per pool-average second, ``2^(1/4)`` apart:
the TTFT line's fit (``base.py``) picks among them (a ``2^(1/2)`` grid cost 0.3 point of TTFT
MAPE on the simulated fleet)."""

COARSE_RATE_GRID = PREFILL_RATE_GRID[::2]
"""Every other rate, for :func:`fit_prefill_rate`: its rate only has to be good enough for the
offsets' load model (a TTFT model's final rate is the line's); the ridge fit per rate costs
several times the line's, so the finer grid would double it for nothing."""

_STEP_QUANTILES = np.linspace(0.1, 0.9, 7)
"""Where each feature gets a step in the load model (flexible enough that a curved load
response is not mistaken for a speed difference)."""

_LOAD_RIDGE = 1e-3
"""Ridge penalty per sample on the standardized load columns (numerical safety only)."""

_RATE_SEARCH_ROWS = 20_000
"""The rate search looks at most at this many samples (evenly spaced): plenty for one number."""


def load_basis(X: np.ndarray) -> np.ndarray:
    """The additive load model's columns for ``X`` (rows x features), standardized."""
    x = np.maximum(X, 0.0)
    steps = [
        (x[:, [j]] > np.unique(np.quantile(x[:, j], _STEP_QUANTILES))).astype(np.float64)
        for j in range(x.shape[1])
    ]
    basis = np.column_stack([np.log1p(x), x, *steps])
    spread = basis.std(axis=0)
    keep = spread > 0
    out: np.ndarray = (basis[:, keep] - basis[:, keep].mean(axis=0)) / spread[keep]
    return out


class _Design:
    """Ridge least squares of ``y_log`` on an intercept, endpoint indicators and a fixed load
    basis, plus optionally a few extra columns: the fixed part's Gram blocks are computed once,
    so trying many extra columns (the prefill-rate grid) costs little each."""

    def __init__(self, endpoint: np.ndarray, basis: np.ndarray, y_log: np.ndarray) -> None:
        n = len(endpoint)
        self.seen = np.flatnonzero(np.bincount(endpoint))
        indicators = np.zeros((n, len(self.seen)))
        indicators[np.arange(n), np.searchsorted(self.seen, endpoint)] = 1.0
        self.A = np.column_stack([np.ones(n), indicators, basis])
        self.y = y_log
        self.penalty = np.concatenate(
            [
                [0.0],
                np.full(len(self.seen), OFFSET_SHRINK_SAMPLES),
                np.full(basis.shape[1], _LOAD_RIDGE * n),
            ]
        )
        self.gram = self.A.T @ self.A
        self.Aty = self.A.T @ y_log
        self.yty = float(y_log @ y_log)

    def fit(self, extra: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Coefficients (intercept, endpoints, load, extra) and the mean squared residual."""
        gram, rhs, penalty = self.gram, self.Aty, self.penalty
        if extra is not None:
            cross = self.A.T @ extra
            gram = np.block([[gram, cross], [cross.T, extra.T @ extra]])
            rhs = np.concatenate([rhs, extra.T @ self.y])
            penalty = np.concatenate([penalty, np.full(extra.shape[1], _LOAD_RIDGE * len(self.y))])
        coef = np.linalg.solve(gram + np.diag(penalty + 1e-9), rhs)
        # |y - Dc|^2 = y'y - 2 c'D'y + c'D'Dc, from the blocks (no n x p product again).
        sse = self.yty - 2 * float(coef @ rhs) + float(coef @ gram @ coef)
        return coef, max(sse, 0.0) / len(self.y)


def fit_offsets(
    X: np.ndarray, y_log: np.ndarray, endpoint: np.ndarray, endpoints: Sequence[str]
) -> dict[str, float]:
    """Per-endpoint log-latency offsets at equal load (``X``: the trees' input columns),
    centred on the average endpoint. Only endpoints with samples get one."""
    if len(y_log) == 0:
        return {}
    design = _Design(endpoint, load_basis(X), y_log)
    coef, _ = design.fit()
    offsets = coef[1 : 1 + len(design.seen)]
    offsets = offsets - offsets.mean()
    return {endpoints[int(code)]: float(o) for code, o in zip(design.seen, offsets, strict=True)}


def fit_prefill_rate(
    X_full: np.ndarray, columns: Sequence[int], y_log: np.ndarray, endpoint: np.ndarray
) -> float:
    """The grid's prefill rate under which ``remaining`` explains ``y_log`` best, or 0 when no
    sample had prompt work queued ahead that had already waited (nothing to learn it from)."""
    informative = (X_full[:, INFLIGHT_PREFILL] > 0) & (X_full[:, PREFILL_WAIT] > 0)
    if not informative.any():
        return 0.0
    if len(y_log) > _RATE_SEARCH_ROWS:
        keep = np.linspace(0, len(y_log) - 1, _RATE_SEARCH_ROWS).astype(np.intp)
        X_full, y_log, endpoint = X_full[keep], y_log[keep], endpoint[keep]
    design = _Design(endpoint, load_basis(X_full[:, list(columns)]), y_log)
    best_rate, best_error = 0.0, np.inf
    for rate in COARSE_RATE_GRID:
        _, error = design.fit(load_basis(derived_columns(X_full, rate)))
        if error < best_error:
            best_rate, best_error = rate, error
    return best_rate
