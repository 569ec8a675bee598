"""Well-known per-candidate attributes written by producers and read by other plugins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from scheduler.framework.types import AttrKey


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """How much of the request's prompt an endpoint likely holds in its prefix cache."""

    matched_blocks: int
    total_blocks: int
    block_size: int

    @property
    def fraction(self) -> float:
        return self.matched_blocks / self.total_blocks if self.total_blocks else 0.0

    def uncached_tokens(self, prompt_len: int) -> int:
        return max(0, prompt_len - self.matched_blocks * self.block_size)


PREFIX_MATCH: AttrKey[PrefixMatch] = AttrKey("prefix-match")


class Prediction(NamedTuple):
    """Predicted latencies of one candidate for this request, seconds (``None``: no model).

    Immutable like the other attributes, but a named tuple: one is built per candidate per
    request, and a tuple costs half of a frozen dataclass to construct.
    """

    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    estimated: bool = False
    """A cold-start estimate (``scheduler.predictor.estimate``), not a trained model's
    prediction: good for ordering candidates, not for judging a latency objective."""
    adjust: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Log factors the live per-endpoint correction applied to (ttft, tpot, e2e)
    (``scheduler.predictor.drift``); the model's own prediction is the value / ``exp`` of it."""


PREDICTION: AttrKey[Prediction] = AttrKey("predicted-latency")
