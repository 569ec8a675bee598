"""``latency-slo-admitter``: shed sheddable work that no endpoint can serve in time.

Requests of priority >= 0 are always admitted. A sheddable request (priority < 0) is rejected
(:class:`AdmissionDenied`, reason ``rejected-saturated``; the gateway answers 429):

- with latency objectives, when some candidate could be judged (``SLO_HEADROOM``), none is
  predicted to meet them, and none is idle. Idle means nothing in flight from this gateway and,
  when its metrics are known, nothing running or waiting there: an idle endpoint serves the
  request as fast as it can be served, so refusing it would gain nothing;
- without objectives (or with nothing to judge them by), when every candidate is saturated:
  its scraped queue holds at least ``queueDepthThreshold`` requests, or its KV cache is at least
  ``kvCacheUtilThreshold`` full (0 disables that test). A candidate whose metrics are unknown
  is not counted as saturated: shedding needs evidence.

llm-d's admitter, with its quirks fixed: a denial is a 429 with a reason, not a 500; "idle" is
the gateway's own exact count and the scraped one together.

Parameters:

========================= ======= ==============================================
``queueDepthThreshold``   5       waiting requests that make an endpoint saturated
``kvCacheUtilThreshold``  0.8     KV-cache usage that makes it saturated; 0 = off
========================= ======= ==============================================

Extension point: admitter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.attributes import SLO_HEADROOM
from scheduler.framework.errors import AdmissionDenied
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, InferenceRequest

REJECTED_SATURATED = "rejected-saturated"


class LatencySloAdmitter:
    TYPE: ClassVar[str] = "latency-slo-admitter"

    def __init__(self, name: str, *, queue_depth: int = 5, kv_threshold: float = 0.8) -> None:
        self.name = name
        self.queue_depth = queue_depth
        self.kv_threshold = kv_threshold

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(
            name,
            queue_depth=params.int("queueDepthThreshold", 5, ge=1),
            kv_threshold=params.float("kvCacheUtilThreshold", 0.8, ge=0.0, le=1.0),
        )

    def admit(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None:
        if request.priority >= 0 or not candidates:
            return
        if request.slo.any:
            judged = False
            for c in candidates:
                headroom = c.attributes.get(SLO_HEADROOM)
                if headroom is None or not headroom.known:
                    continue
                judged = True
                if headroom.valid:
                    return
            if judged:
                if any(idle(c) for c in candidates):
                    return
                raise AdmissionDenied(
                    "no endpoint is predicted to serve this sheddable request within its "
                    "latency objectives, and none is idle",
                    reason=REJECTED_SATURATED,
                )
        if all(self.saturated(c) for c in candidates):
            raise AdmissionDenied(
                "every endpoint is saturated; sheddable request dropped",
                reason=REJECTED_SATURATED,
            )

    def saturated(self, candidate: Candidate) -> bool:
        m = candidate.metrics
        if m is None:
            return False
        if m.waiting >= self.queue_depth:
            return True
        return self.kv_threshold > 0 and m.kv_usage >= self.kv_threshold


def idle(candidate: Candidate) -> bool:
    """Nothing in flight from this gateway, and nothing running or waiting by its metrics."""
    if candidate.inflight.requests:
        return False
    m = candidate.metrics
    return m is None or (m.running == 0 and m.waiting == 0)
