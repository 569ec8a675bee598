"""``inflight-load-scorer``: prefer the endpoint with the least load this gateway has put on it.

llm-d's token-load idea on the gateway's own in-flight accounting, which is fresher than any
scrape: it changes the instant a request is dispatched, so a burst is spread across endpoints
instead of piling onto the one that looked idle at the last scrape. Each signal is normalised
across the candidates like ``queue-scorer``: (max - x) / (max - min), all equal -> 1.0.

- ``requests``: requests dispatched and not finished (``candidate.inflight.requests``);
- ``tokens``: uncached prompt tokens of requests still in prefill, i.e. dispatched and without a
  first token yet (``candidate.inflight.prefill_tokens``): the prefill work queued on the server;
- ``both``: the mean of the two scores.

Inputs: ``candidate.inflight`` (``scheduler.datalayer.inflight.InflightTracker``). It does not
read scraped metrics, so it works unchanged for endpoints whose metrics are unknown.

Parameters:

| name     | default | meaning                                   |
|----------|---------|-------------------------------------------|
| `signal` | `both`  | `requests`, `tokens` or `both` (see above) |

Extension point: scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest
from scheduler.plugins.scorers import inverse_min_max

SIGNALS = ("requests", "tokens", "both")


class InflightLoadScorer:
    TYPE: ClassVar[str] = "inflight-load-scorer"

    def __init__(self, name: str, *, signal: str = "both") -> None:
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
        self.name = name
        self.signal = signal

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(name, signal=params.str("signal", "both", choices=SIGNALS))

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        if self.signal == "requests":
            return inverse_min_max([c.inflight.requests for c in candidates])
        tokens = inverse_min_max([c.inflight.prefill_tokens for c in candidates])
        if self.signal == "tokens":
            return tokens
        requests = inverse_min_max([c.inflight.requests for c in candidates])
        return [(r + t) * 0.5 for r, t in zip(requests, tokens, strict=True)]
