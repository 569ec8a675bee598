"""The stratified window keeps rare regimes, stays bounded, and round-trips."""

from __future__ import annotations

import random

import numpy as np

from scheduler.predictor.features import KV, N_FEATURES, PREFIX, WAITING
from scheduler.predictor.window import StratifiedWindow, WindowArrays, bucket_of


def row(waiting: float = 0, kv: float = 0.0, prefix: float = 0.0) -> np.ndarray:
    r = np.zeros(N_FEATURES)
    r[WAITING], r[KV], r[PREFIX] = waiting, kv, prefix
    return r


def test_buckets() -> None:
    assert bucket_of(row()) == (0, 0, 0)
    assert bucket_of(row(waiting=-1, kv=-1)) == (0, 0, 0)  # unknown metrics
    assert bucket_of(row(waiting=2, kv=0.07, prefix=0.3)) == (1, 1, 1)
    assert bucket_of(row(waiting=5, kv=0.99, prefix=1.0)) == (2, 19, 3)
    assert bucket_of(row(waiting=10, kv=1.0)) == (3, 19, 0)
    assert bucket_of(row(waiting=500)) == (4, 0, 0)


def test_each_bucket_keeps_its_newest_samples_only() -> None:
    window = StratifiedWindow(per_bucket=5, rng=random.Random(0), test_fraction=0.0)
    for i in range(100):
        window.add(row(waiting=0), float(i), "a")  # a busy regime floods one bucket...
    for i in range(3):
        window.add(row(waiting=20), 1000.0 + i, "b")  # ...a rare one keeps its samples
    assert len(window) == 8
    snap = window.snapshot()
    assert sorted(snap.y) == [95.0, 96.0, 97.0, 98.0, 99.0, 1000.0, 1001.0, 1002.0]
    assert window.bucket_counts() == {(0, 0, 0): 5, (4, 0, 0): 3}
    assert [snap.endpoints[c] for c in snap.endpoint[snap.y >= 1000]] == ["b"] * 3


def test_memory_is_bounded_by_buckets_times_cap() -> None:
    rng = np.random.default_rng(1)
    window = StratifiedWindow(per_bucket=7, rng=random.Random(1), test_fraction=0.0)
    for _ in range(5000):
        window.add(row(float(rng.integers(0, 30)), rng.uniform(), rng.uniform()), 1.0, "a")
    assert len(window) <= 5 * 20 * 4 * 7
    assert all(count <= 7 for count in window.bucket_counts().values())


def test_held_out_share_and_cap() -> None:
    window = StratifiedWindow(
        per_bucket=10_000, rng=random.Random(2), test_fraction=0.25, max_test=100
    )
    for i in range(2000):
        window.add(row(), float(i), "a")
    assert window.test_size == 100
    assert 1300 < len(window) < 1700
    test = window.test_snapshot()
    assert test.X.shape == (100, N_FEATURES)
    assert test.y.min() > 1000  # the held-out set is the recent one


def test_empty_snapshots() -> None:
    window = StratifiedWindow(per_bucket=3, rng=random.Random(0))
    assert len(window.snapshot()) == 0
    assert window.snapshot().X.shape == (0, N_FEATURES)
    assert len(window.test_snapshot()) == 0


def test_arrays_round_trip_and_reload() -> None:
    window = StratifiedWindow(per_bucket=50, rng=random.Random(3), test_fraction=0.2)
    for i in range(200):
        window.add(row(waiting=i % 7, kv=(i % 10) / 10), float(i), f"pod-{i % 3}")
    train, test = window.snapshot(), window.test_snapshot()
    restored = WindowArrays.from_arrays(train.to_arrays("t") | test.to_arrays("h"), "t")
    np.testing.assert_array_equal(restored.X, train.X)
    np.testing.assert_array_equal(restored.y, train.y)
    assert restored.endpoints == train.endpoints
    again = StratifiedWindow(per_bucket=50, rng=random.Random(4))
    again.load(train, test)
    assert len(again) == len(window)
    assert again.test_size == window.test_size
    assert sorted(again.snapshot().y) == sorted(train.y)
