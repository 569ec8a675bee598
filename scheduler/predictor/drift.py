"""Per-endpoint live correction: how far an endpoint's latencies drift from what was expected.

A model is refitted every few seconds; a pod can slow down (a throttled GPU, a noisy neighbour,
a long prompt hogging it) in less. The gateway sees every first token it relays, so for each
endpoint it keeps an exponentially weighted mean of ``log(actual / expected)`` over its recent
requests: one sample moves it by ``weight`` of the way, so a pod that turns 4x slower is seen
within a handful of requests, and one that recovers is seen as fast once it serves again (the
scorer keeps sending a recovering pod some work: its queue empties, so its estimate drops).

Two uses (``runtime.LatencyPredictor``): with a trained model, the drift of live TTFT/TPOT from
the model's own predictions, applied to that endpoint's next predictions beyond a dead band
(the model's ordinary per-request error must not turn into routing noise); before a model is
trusted, each endpoint's seconds per unit of estimated work (``estimate.py``), which makes the
estimate a latency in seconds and orders fast and slow pods from their first answers.

Memory is bounded: at most ``max_endpoints`` entries (the oldest is dropped beyond that; a pool
that replaces its pods does not grow it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

MAX_LOG_DRIFT = math.log(64.0)
"""By default no sample counts for more than a factor of 64 either way (a stalled pod's
timeout, a clock jump): a drift learned stays finite."""


class LiveDrift:
    __slots__ = ("_median", "_values", "bound", "max_endpoints", "weight")

    def __init__(
        self, *, weight: float = 0.25, max_endpoints: int = 4096, bound: float = MAX_LOG_DRIFT
    ) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.weight = weight
        self.bound = bound
        """Samples are clamped to ``[-bound, bound]``."""
        self.max_endpoints = max_endpoints
        self._values: dict[str, float] = {}
        self._median: float | None = None

    def observe(self, endpoint: str, log_ratio: float) -> None:
        """One request's ``log(actual / expected)`` on ``endpoint``."""
        x = min(max(log_ratio, -self.bound), self.bound)
        values = self._values
        current = values.pop(endpoint, None)  # re-inserted last: the dict is in recency order
        if current is None:
            if len(values) >= self.max_endpoints:
                del values[next(iter(values))]
            values[endpoint] = x
        else:
            values[endpoint] = current + self.weight * (x - current)
        self._median = None

    def get(self, endpoint: str) -> float | None:
        return self._values.get(endpoint)

    def array(self, endpoints: Sequence[str]) -> np.ndarray:
        """The values of ``endpoints`` in order, 0 for an endpoint without samples."""
        get = self._values.get
        return np.fromiter((get(e, 0.0) for e in endpoints), np.float64, len(endpoints))

    def median(self) -> float | None:
        """The median over endpoints with samples (the pool's typical value), ``None`` if none."""
        if self._median is None and self._values:
            self._median = statistics.median(self._values.values())
        return self._median

    def forget(self, endpoint: str) -> None:
        if self._values.pop(endpoint, None) is not None:
            self._median = None

    def __len__(self) -> int:
        return len(self._values)


def dead_band_array(log_drift: np.ndarray, band: float) -> np.ndarray:
    """Each value shrunk towards 0 by ``band`` (0 inside it), in place: the part of a drift
    beyond ordinary error."""
    sign = np.sign(log_drift)
    np.abs(log_drift, out=log_drift)
    log_drift -= band
    np.maximum(log_drift, 0.0, out=log_drift)
    log_drift *= sign
    return log_drift
