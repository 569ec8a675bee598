"""Scorers rate every candidate in [0, 1], higher is better; the profile weighs and sums them.

Rule shared by the scorers that read scraped load (``candidate.metrics``): a candidate whose
metrics are unknown (``None``: never scraped, or stale) scores :data:`UNKNOWN_LOAD_SCORE`.
That is neutral on purpose: it never beats a fresh idle endpoint (which always scores 1.0,
being the least loaded), it does not sink an endpoint that may well be idle, and when every
candidate is unknown (the only case the endpoint store produces, see
``scheduler.datalayer.store``) they all tie and the other scorers and the picker decide.
Unknown candidates take no part in the min/max normalisation of the known ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

UNKNOWN_LOAD_SCORE = 0.5
"""Score of a candidate whose scraped load is unknown."""


def inverse_min_max(loads: Sequence[float | None]) -> list[float]:
    """Score loads so the least loaded gets 1.0 and the most loaded 0.0: (max - x) / (max - min).

    All known loads equal -> 1.0 each; ``None`` (unknown load) -> :data:`UNKNOWN_LOAD_SCORE`.
    """
    if not loads:
        return []
    if None in loads:
        known = [x for x in loads if x is not None]
        if not known:
            return [UNKNOWN_LOAD_SCORE] * len(loads)
        lo, hi = min(known), max(known)
        if hi == lo:
            return [UNKNOWN_LOAD_SCORE if x is None else 1.0 for x in loads]
        span = hi - lo
        return [UNKNOWN_LOAD_SCORE if x is None else (hi - x) / span for x in loads]
    present = cast("Sequence[float]", loads)
    lo, hi = min(present), max(present)
    if hi == lo:
        return [1.0] * len(present)
    span = hi - lo
    return [(hi - x) / span for x in present]
