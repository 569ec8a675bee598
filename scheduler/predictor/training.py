"""Fit one target's model from a window snapshot and judge it on held-out samples.

Pure numpy, no I/O: it runs in a worker process. Steps, in log space:

1. per endpoint a speed offset, and for targets that read the prompt work queued ahead the
   pool's prefill rate, from one additive least-squares model of load plus an indicator per
   endpoint (``offsets.py``: fitting load and speed together is what separates a slow endpoint
   from the load its slowness causes);
2. for TTFT, an analytic line in the prompt work before the first token (``base.py``), whose
   fit also settles the prefill rate; the trees fit ``log(y) - offset[endpoint] - log(base)``:
   the load response shared by the pool;
3. on the held-out samples the new model, the previous one and the load heuristic are scored:
   MAPE (and pinball loss and coverage for a quantile objective), and Spearman rank correlation
   with the actual latency, which is what routing needs: ordering endpoints correctly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from scheduler.predictor import estimate
from scheduler.predictor.base import fit_base
from scheduler.predictor.boosting import fit_gbdt
from scheduler.predictor.features import (
    INFLIGHT,
    INFLIGHT_PREFILL,
    KV,
    N_FEATURES,
    PREFILL_WAIT,
    PREFIX,
    PROMPT,
    RUNNING,
    STEP_INTERVAL,
    STEP_PHASE,
    UNCACHED,
    WAITING,
)
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.model import PredictorModel, TargetModel, tree_inputs, widen
from scheduler.predictor.offsets import (
    OFFSET_SHRINK_SAMPLES as OFFSET_SHRINK_SAMPLES,
    fit_offsets as fit_offsets,
    fit_prefill_rate,
)
from scheduler.predictor.window import WindowArrays


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    samples: int
    mape: float
    spearman: float
    pinball: float | None = None
    coverage: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetReport:
    target: str
    train_samples: int
    test_samples: int
    duration_s: float
    new: Evaluation | None
    previous: Evaluation | None
    heuristic_spearman: float | None
    accepted: bool


def fit_target(
    target: str,
    columns: tuple[int, ...],
    train: WindowArrays,
    test: WindowArrays,
    *,
    params: GbdtParams,
    shapes: Mapping[str, str],
    previous: TargetModel | None,
    seed: int,
) -> tuple[TargetModel | None, TargetReport]:
    """The new model (or ``None`` when it is not better than ``previous``) and a report."""
    started = time.process_time()
    rng = np.random.default_rng(seed)
    y_log = np.log(np.maximum(train.y, 1e-6))
    prefill_rate = None
    if set(_DERIVED_FROM) <= set(columns):
        prefill_rate = fit_prefill_rate(train.X, columns, y_log, train.endpoint)
    X = tree_inputs(train.X, columns, prefill_rate)

    offsets = dict(previous.offsets) if previous is not None else {}
    offsets.update(fit_offsets(X, y_log, train.endpoint, train.endpoints))
    row_offsets = _row_offsets(train, offsets)
    residual = y_log - row_offsets
    base = None
    if target in BASE_TARGETS and prefill_rate is not None:
        fitted = fit_base(train.X, np.exp(residual))
        if fitted is not None:
            prefill_rate, base = fitted
            X = tree_inputs(train.X, columns, prefill_rate)
            residual = residual - base.predict_log(widen(train.X, prefill_rate))
    gbdt = fit_gbdt(X, residual, params, rng=rng)
    model = TargetModel(
        target=target,
        gbdt=gbdt,
        columns=columns,
        offsets=offsets,
        shape_offsets=_shape_offsets(offsets, shapes),
        prefill_rate=prefill_rate,
        base=base,
    )

    new_eval = evaluate(model, test, params) if len(test) else None
    prev_eval = evaluate(previous, test, params) if previous is not None and len(test) else None
    accepted = prev_eval is None or new_eval is None or _no_worse(new_eval, prev_eval)
    report = TargetReport(
        target=target,
        train_samples=len(train),
        test_samples=len(test),
        duration_s=time.process_time() - started,
        new=new_eval,
        previous=prev_eval,
        heuristic_spearman=heuristic_spearman(test, train) if len(test) >= 2 else None,
        accepted=accepted,
    )
    return (model if accepted else None), report


_DERIVED_FROM = (INFLIGHT_PREFILL, PREFILL_WAIT, UNCACHED)
"""A target whose columns include these also reads ``features.derived_columns``."""

BASE_TARGETS = frozenset({"ttft"})
"""Targets modelled on top of an analytic line (``base.py``); its fit also settles the prefill
rate the trees read. The e2e and TPOT latencies are dominated by decoding, which the line does
not describe."""

ACCEPT_TOLERANCE = 1.02
"""A new model replaces the previous one unless its held-out loss is more than 2 % worse."""


def _no_worse(new: Evaluation, previous: Evaluation) -> bool:
    """Judged by the loss the objective minimizes: MAPE for ``mean``, pinball loss for a
    quantile (whose predictions sit above typical latencies by design, so its MAPE says little
    and preferring the lower one would favour an under-covering model)."""
    if new.pinball is not None and previous.pinball is not None:
        return new.pinball <= previous.pinball * ACCEPT_TOLERANCE
    return new.mape <= previous.mape * ACCEPT_TOLERANCE


def _row_offsets(arrays: WindowArrays, offsets: Mapping[str, float]) -> np.ndarray:
    table = np.array([offsets.get(e, 0.0) for e in arrays.endpoints] or [0.0])
    return table[arrays.endpoint] if len(arrays) else np.empty(0)


def _shape_offsets(offsets: Mapping[str, float], shapes: Mapping[str, str]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for endpoint, offset in offsets.items():
        shape = shapes.get(endpoint)
        if shape is not None:
            groups.setdefault(shape, []).append(offset)
    return {shape: float(np.mean(values)) for shape, values in groups.items()}


def evaluate(model: TargetModel, test: WindowArrays, params: GbdtParams) -> Evaluation:
    pred_log = model.predict_log(test.X, _row_offsets(test, model.offsets))
    pred = np.exp(pred_log)
    y = test.y
    mape = float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-9)))
    pinball = coverage = None
    if params.objective == "quantile":
        diff = np.log(np.maximum(y, 1e-6)) - pred_log
        pinball = float(np.mean(np.maximum(params.alpha * diff, (params.alpha - 1) * diff)))
        coverage = float(np.mean(y <= pred))
    return Evaluation(
        samples=len(y),
        mape=mape,
        spearman=spearman(pred, y),
        pinball=pinball,
        coverage=coverage,
    )


def heuristic_spearman(test: WindowArrays, train: WindowArrays) -> float:
    """How well the routing a model replaces orders held-out latencies (higher cost = slower).

    That is the cold-start estimate (``estimate.py``): work in request units (the typical
    prompt is the training rows' mean) times each endpoint's seconds per unit, here the median
    of ``latency / work`` over its training rows (the pool's median for an endpoint without
    any), as the live estimate learns it from first tokens.
    """
    typical = float(train.X[:, PROMPT].mean()) if len(train) else 1.0
    cost = estimate.work(test.X, typical)
    units: dict[str, float] = {}
    if len(train):
        work = estimate.work(train.X, typical)
        log_unit = np.log(np.maximum(train.y, 1e-9)) - np.log(work)
        codes = train.endpoint.astype(np.int64)
        for code in np.unique(codes):
            units[train.endpoints[int(code)]] = float(np.median(log_unit[codes == code]))
    default = float(np.median(list(units.values()))) if units else 0.0
    by_code = np.array([units.get(name, default) for name in test.endpoints] or [default])
    cost *= np.exp(by_code[test.endpoint.astype(np.int64)])
    return spearman(cost, test.y)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    # Average the ranks of ties, so a constant signal has no spurious order.
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(uniq) < len(values):
        sums = np.zeros(len(uniq))
        np.add.at(sums, inverse, ranks)
        ranks = (sums / counts)[inverse]
    return ranks


TARGET_COLUMNS: Mapping[str, tuple[int, ...]] = {
    "ttft": (
        KV,
        WAITING,
        RUNNING,
        INFLIGHT,
        INFLIGHT_PREFILL,
        PROMPT,
        PREFIX,
        UNCACHED,
        PREFILL_WAIT,
        STEP_PHASE,
        STEP_INTERVAL,
    ),
    "tpot": (KV, WAITING, RUNNING, INFLIGHT, INFLIGHT_PREFILL, PROMPT),
    "e2e": tuple(range(N_FEATURES)),
}
"""Which features each target's trees read (TPOT does not depend on this prompt's cache hit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingJob:
    """Everything one generation's training needs; picklable, sent to the worker process."""

    version: int
    train: Mapping[str, WindowArrays]
    test: Mapping[str, WindowArrays]
    params: GbdtParams
    min_samples: int
    shapes: Mapping[str, str]
    previous: PredictorModel | None
    snapshot_at: float
    seed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingOutcome:
    model: PredictorModel | None
    """The generation to install; ``None`` when no target had enough samples."""
    reports: tuple[TargetReport, ...]


def train_generation(job: TrainingJob) -> TrainingOutcome:
    """Fit every target with enough samples; keep the previous model of the others."""
    fitted: dict[str, TargetModel | None] = {}
    reports: list[TargetReport] = []
    for i, (target, columns) in enumerate(TARGET_COLUMNS.items()):
        previous = getattr(job.previous, target) if job.previous is not None else None
        train = job.train[target]
        if len(train) < job.min_samples:
            fitted[target] = previous
            continue
        model, report = fit_target(
            target,
            columns,
            train,
            job.test[target],
            params=job.params,
            shapes=job.shapes,
            previous=previous,
            seed=job.seed + i,
        )
        fitted[target] = model if model is not None else previous
        reports.append(report)
    if not reports:
        return TrainingOutcome(model=None, reports=())
    return TrainingOutcome(
        model=PredictorModel(
            version=job.version,
            ttft=fitted["ttft"],
            tpot=fitted["tpot"],
            e2e=fitted["e2e"],
            objective="quantile" if job.params.objective == "quantile" else "mean",
            quantile=job.params.alpha,
            trained_at=job.snapshot_at,
            beats_heuristic=_beats_heuristic(reports, job.previous),
        ),
        reports=tuple(reports),
    )


def _beats_heuristic(reports: list[TargetReport], previous: PredictorModel | None) -> bool:
    """Whether the TTFT model to be used orders held-out requests better than the heuristic."""
    report = next((r for r in reports if r.target == "ttft"), None)
    if report is None:
        return previous is not None and previous.beats_heuristic
    evaluation = report.new if report.accepted else report.previous
    if evaluation is None or report.heuristic_spearman is None:
        return False
    return evaluation.spearman > report.heuristic_spearman
