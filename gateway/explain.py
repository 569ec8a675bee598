"""Why a request went where it went: one entry per candidate endpoint of its scheduling cycle.

Sent back as the ``x-slogate-explain`` response header (compact JSON) when the operator
enabled it (``slo.explain``) and the client asked with ``x-slogate-explain: 1``, and logged at
DEBUG for every decision. Per candidate: its name; whether it was chosen; its final score (for
candidates that reached the scorers); the predicted TTFT/TPOT/e2e in milliseconds and whether
they are the cold-start estimate; the headroom against the request's objectives; the gateway's
in-flight count; the prefix-cache match; and the filter that removed it, if one did.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from scheduler.framework.attributes import FILTER_TRACE, PREDICTION, PREFIX_MATCH, SLO_HEADROOM
from scheduler.framework.types import SchedulingResult

EXPLAIN_HEADER = "x-slogate-explain"
MAX_CANDIDATES = 24
"""At most this many entries (the chosen one first, then by score): a header must stay small."""


def _ms(seconds: float | None) -> float | str | None:
    if seconds is None:
        return None
    if math.isinf(seconds):
        return "unconstrained"
    return round(seconds * 1000, 1)


def describe(result: SchedulingResult) -> list[dict[str, Any]]:
    """The explanation of ``result``, the chosen candidate first, then by score."""
    trace = result.state.get(FILTER_TRACE) or {}
    scores = result.primary.scores
    chosen = result.target.endpoint.name
    entries: list[dict[str, Any]] = []
    for c in result.candidates:
        name = c.endpoint.name
        entry: dict[str, Any] = {"endpoint": name, "chosen": name == chosen}
        if name in scores:
            entry["score"] = round(scores[name], 4)
        removed = trace.get(name)
        if removed is not None:
            entry["removed_by"] = removed
        prediction = c.attributes.get(PREDICTION)
        if prediction is not None:
            entry["predicted_ms"] = {
                "ttft": _ms(prediction.ttft_s),
                "tpot": _ms(prediction.tpot_s),
                "e2e": _ms(prediction.e2e_s),
            }
            entry["estimated"] = prediction.estimated
        headroom = c.attributes.get(SLO_HEADROOM)
        if headroom is not None:
            entry["headroom_ms"] = {"ttft": _ms(headroom.ttft_s), "tpot": _ms(headroom.tpot_s)}
        entry["inflight"] = c.inflight.requests
        match = c.attributes.get(PREFIX_MATCH)
        if match is not None:
            entry["prefix_match"] = round(match.fraction, 3)
        entries.append(entry)
    entries.sort(key=lambda e: (not e["chosen"], -e.get("score", -1.0)))
    return entries


def header_value(result: SchedulingResult) -> str:
    entries = describe(result)
    body: dict[str, Any] = {"candidates": entries[:MAX_CANDIDATES]}
    if len(entries) > MAX_CANDIDATES:
        body["omitted"] = len(entries) - MAX_CANDIDATES
    return orjson.dumps(body).decode()
