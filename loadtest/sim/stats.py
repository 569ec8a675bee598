"""Plain-Python counters and histograms the engine updates on its hot path.

The engine must stay free of Prometheus (it is pure scheduling logic), and a Prometheus
``Histogram.observe`` takes a lock per call, thousands of times a second. So the engine
bumps ints and bucket counts here, and :mod:`loadtest.sim.metrics` turns them into metric
families only when ``/metrics`` is scraped.

Also here: the step-timing log, which tells whether the sim keeps its modelled timing
(the benchmark's main number).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

# vLLM V1's buckets (vllm/v1/metrics/loggers.py), so dashboards and quantiles line up.
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

FINISH_REASONS: tuple[str, ...] = ("stop", "length", "abort")


class Histogram:
    """Prometheus-style bucket counts (``le`` upper bounds plus +Inf), no locking."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.count))
        return out


@dataclass(slots=True)
class EngineStats:
    """Monotonic counters and latency histograms of one engine (vLLM's metric set)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    preemptions: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    ttft_s: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS_S))
    inter_token_s: Histogram = field(default_factory=lambda: Histogram(INTER_TOKEN_BUCKETS_S))
    e2e_s: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS_S))
    steps: int = 0
    # Sum of modelled step durations (GPU time at this sim's speed, before time_scale).
    simulated_s: float = 0.0


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class StepTimingLog:
    """The last ``capacity`` steps' modelled vs actual wall durations.

    ``ratio`` is actual/modelled time between consecutive step completions (1.0 = on time);
    ``late_s`` is how far after its modelled deadline a step's tokens were released.
    """

    __slots__ = ("_late_s", "_ratio", "count", "max_late_s", "resyncs")

    def __init__(self, capacity: int = 65536) -> None:
        self._ratio: deque[float] = deque(maxlen=capacity)
        self._late_s: deque[float] = deque(maxlen=capacity)
        self.count = 0
        self.max_late_s = 0.0
        self.resyncs = 0

    def record(self, *, modelled_s: float, actual_s: float | None, late_s: float) -> None:
        if actual_s is not None and modelled_s > 0:
            self._ratio.append(actual_s / modelled_s)
        self._late_s.append(late_s)
        self.count += 1
        self.max_late_s = max(self.max_late_s, late_s)

    def reset(self) -> None:
        self._ratio.clear()
        self._late_s.clear()
        self.count = 0
        self.max_late_s = 0.0
        self.resyncs = 0

    def summary(self) -> dict[str, float]:
        ratio = sorted(self._ratio)
        late = sorted(self._late_s)
        return {
            "steps": float(self.count),
            "ratio_p50": quantile(ratio, 0.50),
            "ratio_p99": quantile(ratio, 0.99),
            "late_ms_p50": quantile(late, 0.50) * 1e3,
            "late_ms_p99": quantile(late, 0.99) * 1e3,
            "late_ms_max": self.max_late_s * 1e3,
            "resyncs": float(self.resyncs),
        }
