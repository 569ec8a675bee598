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


class Headroom(NamedTuple):
    """How far inside its latency objectives a candidate is predicted to serve this request,
    seconds (negative: predicted to miss). ``math.inf`` for a dimension without an objective;
    ``None`` for one with an objective but no prediction to judge it by."""

    ttft_s: float | None
    tpot_s: float | None

    @property
    def valid(self) -> bool:
        """Predicted to meet every objective it can be judged on."""
        ttft, tpot = self.ttft_s, self.tpot_s
        return (ttft is None or ttft >= 0) and (tpot is None or tpot >= 0)

    @property
    def known(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None


SLO_HEADROOM: AttrKey[Headroom] = AttrKey("slo-headroom")
"""Written by ``slo-headroom-producer`` for requests with a latency objective, or bound by a
running request's TPOT objective on some candidate."""

FILTER_TRACE: AttrKey[dict[str, str]] = AttrKey("filter-trace")
"""Cycle state of an explained request: endpoint name -> the filter that removed it."""
