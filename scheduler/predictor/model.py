"""A trained latency model: boosted trees in log space plus a speed offset per endpoint.

Latency is predicted as ``exp(trees(x) + offset[endpoint])``, times ``base(x)`` for a model
with an analytic part (``base.py``: TTFT, linear in the prompt work before the first token).
The trees learn how load shapes latency (queueing, prefill work, batch size); the offset learns
how fast each endpoint is.
On a heterogeneous pool (different GPUs, model configs) an endpoint twice as fast serves the
same load in half the time, which is a constant shift in log space, so one shared tree ensemble
plus one number per endpoint covers the pool with few samples per endpoint.

An endpoint with no samples yet (new, or never picked) gets the mean offset of endpoints with
the same shape (the value of the configured shape label, e.g. ``gpu: h100``), and without a
known shape the pool average (0): it is assumed typical until its own samples say otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from scheduler.predictor.base import LinearBase
from scheduler.predictor.features import DERIVED, N_FEATURES, derived_columns
from scheduler.predictor.gbdt import ObliviousGbdt


def tree_inputs(
    X: np.ndarray, columns: Sequence[int] | np.ndarray, prefill_rate: float | None
) -> np.ndarray:
    """What a target's trees read, from rows of all feature columns: ``columns``, then the
    derived columns at ``prefill_rate`` when it is set."""
    selected: np.ndarray = X[:, columns]
    if prefill_rate is None:
        return selected
    return np.concatenate([selected, derived_columns(X, prefill_rate)], axis=1)


WIDE_COLUMNS = N_FEATURES + len(DERIVED)


def widen(X: np.ndarray, prefill_rate: float | None = None) -> np.ndarray:
    """Rows of all feature columns with room for the derived ones: filled at ``prefill_rate``
    when it is given, else zero (filled per target later)."""
    wide = np.empty((len(X), WIDE_COLUMNS))
    wide[:, :N_FEATURES] = X
    if prefill_rate is None:
        # Zeroed, not left uninitialized: a model without a prefill rate never fills them, and
        # whatever memory held could overflow the trees' float32 cast.
        wide[:, N_FEATURES:] = 0.0
    else:
        derived_columns(X, prefill_rate, out=wide[:, N_FEATURES:])
    return wide


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetModel:
    target: str
    """``ttft``, ``tpot`` or ``e2e``."""
    gbdt: ObliviousGbdt
    columns: tuple[int, ...]
    """Feature columns (of ``features.FEATURES``) the trees read, in order."""
    offsets: Mapping[str, float]
    shape_offsets: Mapping[str, float] = field(default_factory=dict)
    prefill_rate: float | None = None
    """Learned prompt tokens per pool-average second; when set, the trees also read
    ``features.derived_columns`` at this rate, after ``columns``."""
    base: LinearBase | None = None
    """The analytic part (``base.py``, needs ``prefill_rate``): the trees and the offset
    model ``log(latency) - log(base(row))``."""
    _columns: np.ndarray = field(init=False, repr=False, compare=False)
    _wide: ObliviousGbdt | None = field(init=False, repr=False, compare=False)
    """The same trees reading full rows plus the derived columns (``WIDE_COLUMNS``), so the
    live predictor evaluates every target on one matrix without selecting columns; ``None``
    when ``gbdt`` cannot be re-indexed (then :meth:`predict_wide` takes the plain path)."""

    def __post_init__(self) -> None:
        if self.base is not None and self.prefill_rate is None:
            raise ValueError("a base needs a prefill rate (it reads the derived columns)")
        columns = np.asarray(self.columns, dtype=np.intp)
        object.__setattr__(self, "_columns", columns)
        if self.prefill_rate is not None:
            columns = np.concatenate([columns, np.arange(N_FEATURES, WIDE_COLUMNS)])
        g = self.gbdt
        try:
            wide: ObliviousGbdt | None = ObliviousGbdt(
                feature=columns[g.feature],
                threshold=g.threshold,
                leaf_value=g.leaf_value,
                gain=g.gain,
                base_score=g.base_score,
                n_features=WIDE_COLUMNS,
            )
        except (AttributeError, IndexError, TypeError, ValueError):
            wide = None  # not a fitted ensemble over ``columns``: predicting will say so
        object.__setattr__(self, "_wide", wide)

    def offset_of(self, endpoint: str, shape: str | None) -> float:
        offset = self.offsets.get(endpoint)
        if offset is not None:
            return offset
        if shape is not None:
            return self.shape_offsets.get(shape, 0.0)
        return 0.0

    def predict_log(self, X: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        inputs = tree_inputs(X, self._columns, self.prefill_rate)
        out: np.ndarray = self.gbdt.predict(inputs) + offsets
        if self.base is not None and self.prefill_rate is not None:
            out += self.base.predict_log(widen(X, self.prefill_rate))
        return out

    def predict(self, X: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Seconds, one per row of ``X`` (all feature columns), with per-row log offsets."""
        out: np.ndarray = np.exp(self.predict_log(X, offsets))
        return out

    def predict_wide(self, wide: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """:meth:`predict` for rows already widened by :func:`widen` (same results)."""
        if self._wide is None:
            return self.predict(wide[:, :N_FEATURES], offsets)
        if self.prefill_rate is not None:
            derived_columns(wide, self.prefill_rate, out=wide[:, N_FEATURES:])
        out: np.ndarray = self._wide.predict(wide)
        out += offsets
        if self.base is not None:
            out += self.base.predict_log(wide)
        np.exp(out, out=out)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictorModel:
    """One generation of models, swapped in as a whole."""

    version: int
    ttft: TargetModel | None = None
    tpot: TargetModel | None = None
    e2e: TargetModel | None = None
    objective: str = "quantile"
    quantile: float = 0.9
    trained_at: float = 0.0
    """Monotonic time of the training snapshot."""
    beats_heuristic: bool = False
    """Whether the TTFT model ranked held-out requests better than the load heuristic does."""

    def offsets(
        self, target: TargetModel, endpoints: Sequence[str], shapes: Sequence[str | None]
    ) -> np.ndarray:
        return np.fromiter(
            (target.offset_of(e, s) for e, s in zip(endpoints, shapes, strict=True)),
            dtype=np.float64,
            count=len(endpoints),
        )


def model_to_arrays(model: PredictorModel) -> dict[str, np.ndarray]:
    """Flat named arrays (``np.savez``-ready, no pickling) describing a model generation."""
    out: dict[str, np.ndarray] = {
        "meta.version": np.array(model.version),
        "meta.objective": np.array(model.objective),
        "meta.quantile": np.array(model.quantile),
        "meta.beats_heuristic": np.array(model.beats_heuristic),
    }
    for target in (model.ttft, model.tpot, model.e2e):
        if target is None:
            continue
        p = target.target
        out |= {f"{p}.gbdt.{k}": v for k, v in target.gbdt.to_arrays().items()}
        out[f"{p}.columns"] = np.array(target.columns, dtype=np.int64)
        if target.prefill_rate is not None:
            out[f"{p}.prefill_rate"] = np.array(target.prefill_rate)
        if target.base is not None:
            out[f"{p}.base.coef"] = np.array(target.base.coef, dtype=np.float64)
            out[f"{p}.base.floor"] = np.array(target.base.floor)
        for kind, table in (("offsets", target.offsets), ("shape_offsets", target.shape_offsets)):
            out[f"{p}.{kind}.names"] = np.array(list(table), dtype=np.str_)
            out[f"{p}.{kind}.values"] = np.array(list(table.values()), dtype=np.float64)
    return out


def model_from_arrays(arrays: Mapping[str, np.ndarray]) -> PredictorModel:
    targets: dict[str, TargetModel] = {}
    for name in ("ttft", "tpot", "e2e"):
        if f"{name}.columns" not in arrays:
            continue
        prefix = f"{name}.gbdt."
        gbdt = ObliviousGbdt.from_arrays(
            {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
        )
        tables = {
            kind: dict(
                zip(
                    (str(n) for n in arrays[f"{name}.{kind}.names"]),
                    (float(v) for v in arrays[f"{name}.{kind}.values"]),
                    strict=True,
                )
            )
            for kind in ("offsets", "shape_offsets")
        }
        targets[name] = TargetModel(
            target=name,
            gbdt=gbdt,
            columns=tuple(int(c) for c in arrays[f"{name}.columns"]),
            offsets=tables["offsets"],
            shape_offsets=tables["shape_offsets"],
            prefill_rate=(
                float(arrays[f"{name}.prefill_rate"]) if f"{name}.prefill_rate" in arrays else None
            ),
            base=(
                LinearBase(
                    tuple(float(c) for c in arrays[f"{name}.base.coef"]),
                    float(arrays[f"{name}.base.floor"]),
                )
                if f"{name}.base.coef" in arrays
                else None
            ),
        )
    return PredictorModel(
        version=int(arrays["meta.version"]),
        ttft=targets.get("ttft"),
        tpot=targets.get("tpot"),
        e2e=targets.get("e2e"),
        objective=str(arrays["meta.objective"]),
        quantile=float(arrays["meta.quantile"]),
        beats_heuristic=bool(arrays["meta.beats_heuristic"]),
    )
