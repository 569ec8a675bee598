"""A trained latency model: boosted trees in log space plus a speed offset per endpoint.

Latency is predicted as ``exp(trees(x) + offset[endpoint])``. The trees learn how load shapes
latency (queueing, prefill work, batch size); the offset learns how fast each endpoint is.
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

from scheduler.predictor.gbdt import ObliviousGbdt


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetModel:
    target: str
    """``ttft``, ``tpot`` or ``e2e``."""
    gbdt: ObliviousGbdt
    columns: tuple[int, ...]
    """Feature columns (of ``features.FEATURES``) the trees read, in order."""
    offsets: Mapping[str, float]
    shape_offsets: Mapping[str, float] = field(default_factory=dict)
    _columns: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_columns", np.asarray(self.columns, dtype=np.intp))

    def offset_of(self, endpoint: str, shape: str | None) -> float:
        offset = self.offsets.get(endpoint)
        if offset is not None:
            return offset
        if shape is not None:
            return self.shape_offsets.get(shape, 0.0)
        return 0.0

    def predict_log(self, X: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.gbdt.predict(X[:, self._columns]) + offsets
        return out

    def predict(self, X: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Seconds, one per row of ``X`` (all feature columns), with per-row log offsets."""
        out: np.ndarray = np.exp(self.predict_log(X, offsets))
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
