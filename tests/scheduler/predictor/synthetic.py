"""A known latency relation to train on: load and prompt shape it, endpoint speed scales it."""

from __future__ import annotations

import numpy as np

from scheduler.predictor.features import (
    INFLIGHT,
    INFLIGHT_PREFILL,
    KV,
    MAX_TOKENS,
    N_FEATURES,
    PREFIX,
    PROMPT,
    RUNNING,
    UNCACHED,
    WAITING,
)
from scheduler.predictor.window import WindowArrays

SPEEDS = {"slow": 0.5, "normal": 1.0, "fast": 2.0}


def rows(n: int, rng: np.random.Generator) -> np.ndarray:
    X = np.zeros((n, N_FEATURES))
    X[:, KV] = rng.uniform(0, 1, n)
    X[:, WAITING] = rng.poisson(1.0, n) * (rng.uniform(size=n) < 0.4)
    X[:, RUNNING] = rng.integers(0, 32, n)
    X[:, INFLIGHT] = X[:, RUNNING] + X[:, WAITING]
    X[:, PROMPT] = np.exp(rng.uniform(np.log(20), np.log(4000), n)).round()
    X[:, PREFIX] = np.where(rng.uniform(size=n) < 0.5, 0.0, rng.uniform(0.5, 1.0, n))
    X[:, UNCACHED] = (X[:, PROMPT] * (1 - X[:, PREFIX])).round()
    X[:, INFLIGHT_PREFILL] = rng.integers(0, 3, n) * 500
    X[:, MAX_TOKENS] = -1
    return X


def ttft(X: np.ndarray, speed: np.ndarray) -> np.ndarray:
    work = 0.02 + X[:, UNCACHED] / 8000 + X[:, INFLIGHT_PREFILL] / 8000 + 0.05 * X[:, WAITING]
    out: np.ndarray = work / speed
    return out


def dataset(
    n: int, seed: int, noise: float = 0.03, endpoints: tuple[str, ...] = tuple(SPEEDS)
) -> WindowArrays:
    rng = np.random.default_rng(seed)
    X = rows(n, rng)
    codes = rng.integers(0, len(endpoints), n).astype(np.int32)
    speed = np.array([SPEEDS[e] for e in endpoints])[codes]
    y = ttft(X, speed) * np.exp(rng.normal(0, noise, n))
    return WindowArrays(X=X, y=y, endpoint=codes, endpoints=endpoints)
