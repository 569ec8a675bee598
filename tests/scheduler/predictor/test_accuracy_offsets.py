"""Endpoint speed offsets are learned at equal load, even when load and speed are confounded.

In live traffic a slow endpoint's requests pile up, so its load features run high: a model of
load alone explains part of its slowness by that load. ``fit_offsets`` fits load and endpoint
together, which is what recovers the true speed ratio.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scheduler.predictor.features import INFLIGHT_PREFILL, N_FEATURES, UNCACHED
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.training import (
    OFFSET_SHRINK_SAMPLES,
    TARGET_COLUMNS,
    fit_offsets,
    train_generation,
)
from scheduler.predictor.window import WindowArrays
from tests.support.builders import training_job

SPEEDS = {"slow": 0.5, "normal": 1.0, "fast": 2.0}


def confounded(n: int, seed: int, noise: float = 0.05) -> WindowArrays:
    """TTFT = (10 ms + prefill work ahead and own) / speed, where slower endpoints have more
    work queued ahead (as they do when a router sends them traffic they serve slowly)."""
    rng = np.random.default_rng(seed)
    names = tuple(SPEEDS)
    code = rng.integers(0, len(names), n).astype(np.int32)
    speed = np.array([SPEEDS[e] for e in names])[code]
    X = np.zeros((n, N_FEATURES))
    X[:, UNCACHED] = rng.integers(50, 3000, n)
    X[:, INFLIGHT_PREFILL] = rng.exponential(1500, n) / speed
    y = (0.01 + (X[:, INFLIGHT_PREFILL] + X[:, UNCACHED]) / 10_000) / speed
    y *= np.exp(rng.normal(0, noise, n))
    return WindowArrays(X=X, y=y, endpoint=code, endpoints=names)


def offsets_of(data: WindowArrays) -> dict[str, float]:
    columns = TARGET_COLUMNS["ttft"]
    return fit_offsets(data.X[:, columns], np.log(data.y), data.endpoint, data.endpoints)


def test_speed_is_separated_from_the_load_it_causes() -> None:
    offsets = offsets_of(confounded(3000, seed=1))
    assert offsets["slow"] - offsets["fast"] == pytest.approx(math.log(4), abs=0.15)
    assert offsets["slow"] - offsets["normal"] == pytest.approx(math.log(2), abs=0.1)


def test_offsets_are_centred_on_the_average_endpoint() -> None:
    offsets = offsets_of(confounded(2000, seed=2))
    assert sum(offsets.values()) == pytest.approx(0.0, abs=1e-9)


def test_a_homogeneous_pool_has_no_offsets() -> None:
    data = confounded(2000, seed=3)
    same = WindowArrays(
        X=data.X,
        y=(0.01 + (data.X[:, INFLIGHT_PREFILL] + data.X[:, UNCACHED]) / 10_000),
        endpoint=data.endpoint,
        endpoints=data.endpoints,
    )
    assert all(abs(o) < 0.02 for o in offsets_of(same).values())


def test_an_endpoint_with_few_samples_is_shrunk_toward_the_pool() -> None:
    data = confounded(3000, seed=4)
    few = np.flatnonzero(data.endpoint == 0)[:2]  # "slow": two samples only
    keep = np.concatenate([few, np.flatnonzero(data.endpoint != 0)])
    sparse = WindowArrays(
        X=data.X[keep], y=data.y[keep], endpoint=data.endpoint[keep], endpoints=data.endpoints
    )
    full, shrunk = offsets_of(data), offsets_of(sparse)
    pool = (shrunk["normal"] + shrunk["fast"]) / 2
    # Two samples against a prior worth OFFSET_SHRINK_SAMPLES: at most 2 / (2 + 3) of the way.
    assert OFFSET_SHRINK_SAMPLES > 0
    assert 0 < shrunk["slow"] - pool < (full["slow"] - pool) * 0.6


def test_only_endpoints_with_samples_get_an_offset() -> None:
    data = confounded(500, seed=5)
    only = data.endpoint != 2
    subset = WindowArrays(
        X=data.X[only], y=data.y[only], endpoint=data.endpoint[only], endpoints=data.endpoints
    )
    assert set(offsets_of(subset)) == {"slow", "normal"}
    empty = WindowArrays(
        X=np.zeros((0, N_FEATURES)),
        y=np.zeros(0),
        endpoint=np.zeros(0, np.int32),
        endpoints=("a",),
    )
    assert offsets_of(empty) == {}


def test_trained_models_predict_the_speed_ratio_on_confounded_traffic() -> None:
    train, test = confounded(4000, seed=6), confounded(500, seed=7)
    params = GbdtParams(n_trees=100, depth=5, learning_rate=0.1)
    empty = WindowArrays(
        X=np.zeros((0, N_FEATURES)),
        y=np.zeros(0),
        endpoint=np.zeros(0, np.int32),
        endpoints=(),
    )
    outcome = train_generation(
        training_job(
            {"ttft": train, "tpot": empty, "e2e": empty},
            {"ttft": test, "tpot": empty, "e2e": empty},
            params=params,
        )
    )
    assert outcome.model is not None
    ttft = outcome.model.ttft
    assert ttft is not None
    (report,) = outcome.reports
    assert report.new is not None
    assert report.new.mape < 0.08
    # The same load on every endpoint: predictions differ by the speed ratio alone.
    X = np.zeros((3, N_FEATURES))
    X[:, UNCACHED] = 1000
    X[:, INFLIGHT_PREFILL] = 1000
    pred = ttft.predict(X, np.array([ttft.offsets[e] for e in ("slow", "normal", "fast")]))
    assert pred[0] / pred[2] == pytest.approx(4.0, rel=0.2)
