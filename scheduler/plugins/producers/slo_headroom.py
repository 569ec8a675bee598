"""``slo-headroom-producer``: how far inside its latency objectives each candidate would serve.

For a request with an objective (``InferenceRequest.slo``), per candidate with a prediction
(run ``predicted-latency-producer`` first)::

    ttft headroom = ttft objective x sloBufferFactor - predicted TTFT
    tpot headroom = tpot bound - predicted TPOT            (streamed requests)
    tpot bound    = min(tpot objective, tightest TPOT objective running there) x sloBufferFactor

written as the ``SLO_HEADROOM`` attribute. Running-request protection: each endpoint remembers
the TPOT objectives of the streamed requests it is serving (added at dispatch, removed at the
end); a new streamed request, with or without objectives of its own, gets a TPOT headroom on
every endpoint where one runs, so that it is not sent where it is predicted to push that
endpoint's decoding past the tightest of them.

Deliberate differences from llm-d's producer (each a documented quirk there):

- A dimension without an objective is unconstrained (``math.inf`` headroom), not an automatic
  miss, so a request stating only a TTFT objective can be served "in time".
- Requests running without a TPOT objective do not enter the per-endpoint minimum, so one of
  them does not switch the protection off.
- TPOT is judged per token (the gateway counts token events), not per relayed chunk.

A dimension with an objective but no prediction to judge it by (no TPOT model yet, or only the
cold-start TTFT estimate for TPOT) has headroom ``None``: unknown, never counted as a miss.

Parameters: ``sloBufferFactor`` (1.0): multiplies every objective before comparing (below 1
keeps a safety margin, llm-d's name and meaning).

Extension points: data producer, pre-request, response observer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.attributes import PREDICTION, SLO_HEADROOM, Headroom
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle, RequestRecord
from scheduler.framework.types import (
    Candidate,
    CycleState,
    InferenceRequest,
    SchedulingResult,
)


class SloHeadroomProducer:
    TYPE: ClassVar[str] = "slo-headroom-producer"

    def __init__(self, name: str, *, buffer_factor: float = 1.0) -> None:
        self.name = name
        self.buffer_factor = buffer_factor
        self._running: dict[str, dict[str, float]] = {}
        """endpoint -> request id -> TPOT objective (s) of streamed requests running there."""
        self._where: dict[str, str] = {}
        """request id -> the endpoint whose ``_running`` holds it."""

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        factor = params.float("sloBufferFactor", 1.0, gt=0.0)
        return cls(name, buffer_factor=factor)

    def tightest_tpot_s(self, endpoint: str) -> float | None:
        """The tightest TPOT objective among the streamed requests running on ``endpoint``."""
        running = self._running.get(endpoint)
        return min(running.values()) if running else None

    def produce(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None:
        slo = request.slo
        protected = request.stream and any(self._running.values())
        if not slo.any and not protected:
            return
        factor = self.buffer_factor
        ttft_bound = None if slo.ttft_ms is None else slo.ttft_ms / 1000 * factor
        own_tpot = (
            None if slo.tpot_ms is None or not request.stream else slo.tpot_ms / 1000 * factor
        )
        for candidate in candidates:
            prediction = candidate.attributes.get(PREDICTION)
            bound = own_tpot
            if request.stream:
                running = self._running.get(candidate.endpoint.name)
                if running:
                    tightest = min(running.values()) * factor
                    bound = tightest if bound is None else min(bound, tightest)
            candidate.attributes.put(
                SLO_HEADROOM,
                Headroom(
                    _headroom(ttft_bound, None if prediction is None else prediction.ttft_s),
                    _headroom(bound, None if prediction is None else prediction.tpot_s),
                ),
            )

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        tpot_ms = request.slo.tpot_ms
        if tpot_ms is None or not request.stream:
            return
        self._forget(request.request_id)
        endpoint = result.target.endpoint.name
        self._running.setdefault(endpoint, {})[request.request_id] = tpot_ms / 1000
        self._where[request.request_id] = endpoint

    def on_first_token(self, request: InferenceRequest, endpoint: str, now: float) -> None:
        return None

    def on_end(self, request: InferenceRequest, record: RequestRecord) -> None:
        self._forget(request.request_id)

    def _forget(self, request_id: str) -> None:
        endpoint = self._where.pop(request_id, None)
        if endpoint is None:
            return
        running = self._running.get(endpoint)
        if running is not None:
            running.pop(request_id, None)
            if not running:
                del self._running[endpoint]


def _headroom(bound: float | None, predicted: float | None) -> float | None:
    """``bound - predicted``; ``inf`` without a bound (unconstrained), ``None`` without a
    prediction (unknown)."""
    if bound is None:
        return math.inf
    if predicted is None:
        return None
    return bound - predicted
