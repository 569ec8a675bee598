"""The training window: recent samples, stratified so rare load regimes are not forgotten.

As in llm-d, samples are bucketed by (waiting-queue bucket, KV-usage bucket, prefix-match
bucket) and each bucket keeps only its newest ``per_bucket`` samples: a long quiet period cannot
overwrite what was learned under load, and vice versa. Memory is bounded by
``buckets x per_bucket`` rows. A fraction of samples goes to a separate, recent held-out set
used to judge a new model before it replaces the old one.

Buckets: queue 0 | 1-2 | 3-5 | 6-10 | 11+ (unknown metrics count as 0); KV usage in 5 % steps;
prefix match in quarters. Storage is a numpy ring per bucket, so a snapshot for training is a
few array concatenations, not a walk over Python objects.

Rows narrower than ``features.N_FEATURES`` (a window saved before a column was appended to the
schema) are padded with each missing column's ``features.ABSENT`` value (0, or unknown for the
step columns), so a restart after an upgrade keeps its samples; rows wider than the schema are
refused.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from scheduler.predictor.features import ABSENT, KV, N_FEATURES, PREFIX, WAITING

_QUEUE_EDGES = (1, 3, 6, 11)


def bucket_of(row: np.ndarray) -> tuple[int, int, int]:
    waiting = row[WAITING]
    queue = sum(1 for edge in _QUEUE_EDGES if waiting >= edge)
    kv = min(int(max(row[KV], 0.0) * 20), 19)
    prefix = min(int(max(row[PREFIX], 0.0) * 4), 3)
    return queue, kv, prefix


@dataclass(frozen=True, slots=True)
class WindowArrays:
    """A snapshot of samples: features, target (seconds), endpoint index into ``endpoints``."""

    X: np.ndarray
    y: np.ndarray
    endpoint: np.ndarray
    endpoints: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.X": self.X,
            f"{prefix}.y": self.y,
            f"{prefix}.endpoint": self.endpoint,
            f"{prefix}.endpoints": np.array(self.endpoints, dtype=np.str_),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> WindowArrays:
        X = np.asarray(arrays[f"{prefix}.X"], dtype=np.float64)
        if X.ndim != 2 or X.shape[1] > N_FEATURES:
            raise ValueError(f"{prefix}.X: expected (rows, <= {N_FEATURES}), got {X.shape}")
        if X.shape[1] < N_FEATURES:
            X = np.concatenate([X, np.tile(_ABSENT[X.shape[1] :], (len(X), 1))], axis=1)
        return cls(
            X=X,
            y=np.asarray(arrays[f"{prefix}.y"], dtype=np.float64),
            endpoint=np.asarray(arrays[f"{prefix}.endpoint"], dtype=np.int32),
            endpoints=tuple(str(e) for e in arrays[f"{prefix}.endpoints"]),
        )


class _Ring:
    __slots__ = ("X", "count", "endpoint", "pos", "y")

    def __init__(self, capacity: int) -> None:
        self.X = np.empty((capacity, N_FEATURES), dtype=np.float64)
        self.y = np.empty(capacity, dtype=np.float64)
        self.endpoint = np.empty(capacity, dtype=np.int32)
        self.count = 0
        self.pos = 0

    def add(self, row: np.ndarray, y: float, endpoint: int) -> None:
        i = self.pos
        self.X[i] = row
        self.y[i] = y
        self.endpoint[i] = endpoint
        self.pos = (i + 1) % len(self.y)
        self.count = min(self.count + 1, len(self.y))


class StratifiedWindow:
    __slots__ = ("_buckets", "_codes", "_rng", "_test", "per_bucket", "test_fraction")

    def __init__(
        self,
        *,
        per_bucket: int,
        rng: random.Random,
        test_fraction: float = 0.1,
        max_test: int = 1000,
    ) -> None:
        self.per_bucket = per_bucket
        self.test_fraction = test_fraction
        self._rng = rng
        self._buckets: dict[tuple[int, int, int], _Ring] = {}
        self._codes: dict[str, int] = {}
        self._test: deque[tuple[np.ndarray, float, int]] = deque(maxlen=max_test)

    def _code(self, endpoint: str) -> int:
        code = self._codes.get(endpoint)
        if code is None:
            code = self._codes[endpoint] = len(self._codes)
        return code

    def add(self, row: np.ndarray, y: float, endpoint: str) -> None:
        row = _schema_row(row)
        code = self._code(endpoint)
        if self._rng.random() < self.test_fraction:
            self._test.append((row, y, code))
            return
        key = bucket_of(row)
        ring = self._buckets.get(key)
        if ring is None:
            ring = self._buckets[key] = _Ring(self.per_bucket)
        ring.add(row, y, code)

    def __len__(self) -> int:
        return sum(r.count for r in self._buckets.values())

    @property
    def test_size(self) -> int:
        return len(self._test)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._codes)

    def bucket_counts(self) -> Mapping[tuple[int, int, int], int]:
        return {k: r.count for k, r in self._buckets.items()}

    def snapshot(self) -> WindowArrays:
        rings = [r for r in self._buckets.values() if r.count]
        if not rings:
            return _empty(self.endpoints)
        return WindowArrays(
            X=np.concatenate([r.X[: r.count] for r in rings]),
            y=np.concatenate([r.y[: r.count] for r in rings]),
            endpoint=np.concatenate([r.endpoint[: r.count] for r in rings]),
            endpoints=self.endpoints,
        )

    def test_snapshot(self) -> WindowArrays:
        if not self._test:
            return _empty(self.endpoints)
        rows, ys, codes = zip(*self._test, strict=True)
        return WindowArrays(
            X=np.stack(rows),
            y=np.array(ys, dtype=np.float64),
            endpoint=np.array(codes, dtype=np.int32),
            endpoints=self.endpoints,
        )

    def load(self, train: WindowArrays, test: WindowArrays) -> None:
        """Refill from persisted snapshots (restart warm). Samples keep their buckets."""
        for arrays, held_out in ((train, False), (test, True)):
            for stored, y, code in zip(arrays.X, arrays.y, arrays.endpoint, strict=True):
                row = _schema_row(stored)
                endpoint = self._code(arrays.endpoints[int(code)])
                if held_out:
                    self._test.append((row, float(y), endpoint))
                    continue
                key = bucket_of(row)
                ring = self._buckets.get(key)
                if ring is None:
                    ring = self._buckets[key] = _Ring(self.per_bucket)
                ring.add(row, float(y), endpoint)


def _schema_row(row: np.ndarray) -> np.ndarray:
    """An owned row of exactly ``N_FEATURES`` (older, narrower rows padded with ``ABSENT``)."""
    width = len(row)
    if width > N_FEATURES:
        raise ValueError(f"row: expected at most {N_FEATURES} features, got {width}")
    out = _ABSENT.copy()
    out[:width] = row
    return out


_ABSENT = np.array(ABSENT)


def _empty(endpoints: tuple[str, ...]) -> WindowArrays:
    return WindowArrays(
        X=np.empty((0, N_FEATURES)),
        y=np.empty(0),
        endpoint=np.empty(0, dtype=np.int32),
        endpoints=endpoints,
    )
