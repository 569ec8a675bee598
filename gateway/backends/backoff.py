"""Capped exponential backoff with jitter, for background loops that met something unexpected
and for a request's retries on another endpoint.

A loop that fails the same way on every pass must not spin (or flood the log); many loops (or
requests) that failed at once (every endpoint's scraper after one bad deploy, every request of
a pod that died) must not retry in lockstep. The
delay doubles per consecutive failure up to ``cap_s``; "equal jitter" draws it from the upper
half of that ceiling, so it never collapses to zero. A pass that works resets it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_MAX_EXPONENT = 32  # 2**32 base intervals is past any cap; keeps the float finite


@dataclass(slots=True, kw_only=True)
class Backoff:
    base_s: float
    cap_s: float
    rng: random.Random
    failures: int = 0
    """Consecutive failures since the last reset."""

    def next_delay_s(self) -> float:
        """Count one more failure; the seconds to wait before the next attempt."""
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.failures - 1, _MAX_EXPONENT))
        return ceiling / 2 + self.rng.uniform(0.0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0
