"""The scheduler: one request's decision and the hooks around its lifetime.

``schedule`` runs data producers, admitters and the profile; ``pre_request`` and the observer
hooks run the bookkeeping plugins. A producer or observer that raises is logged and skipped:
a broken plugin degrades decisions, it never fails a request. Filters, scorers and pickers are
not guarded that way: they are the decision, and a bug there must surface.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scheduler.framework.attributes import FILTER_TRACE
from scheduler.framework.errors import NoCandidatesError
from scheduler.framework.plugins import (
    Admitter,
    Clock,
    DataProducer,
    EndpointLifecycle,
    PreRequest,
    RequestRecord,
    ResponseObserver,
)
from scheduler.framework.types import Candidate, CycleState, InferenceRequest, SchedulingResult
from scheduler.profile import PluginTimer, SchedulerProfile

logger = logging.getLogger(__name__)


class Scheduler:
    __slots__ = (
        "_admitters",
        "_clock",
        "_lifecycles",
        "_observers",
        "_pre_requests",
        "_producers",
        "_timer",
        "profile",
    )

    def __init__(
        self,
        *,
        profile: SchedulerProfile,
        producers: Sequence[DataProducer] = (),
        admitters: Sequence[Admitter] = (),
        pre_requests: Sequence[PreRequest] = (),
        observers: Sequence[ResponseObserver] = (),
        lifecycles: Sequence[EndpointLifecycle] = (),
        clock: Clock,
        timer: PluginTimer,
    ) -> None:
        self.profile = profile
        self._producers = tuple(producers)
        self._admitters = tuple(admitters)
        self._pre_requests = tuple(pre_requests)
        self._observers = tuple(observers)
        self._lifecycles = tuple(lifecycles)
        self._clock = clock
        self._timer = timer

    def schedule(
        self, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> SchedulingResult:
        """Pick an endpoint. Raises NoCandidatesError (503) or AdmissionDenied (shed)."""
        if not candidates:
            raise NoCandidatesError(
                f"no usable endpoint serves model {request.model!r}", stage="candidates"
            )
        state = CycleState()
        if request.explain:
            state.put(FILTER_TRACE, {})
        clock, timer = self._clock, self._timer
        for producer in self._producers:
            started = clock()
            try:
                producer.produce(state, request, candidates)
            except Exception:
                logger.exception(
                    "plugin.producer_failed",
                    extra={"request_id": request.request_id, "plugin": producer.name},
                )
            timer.observe("producer", producer, clock() - started)
        for admitter in self._admitters:
            started = clock()
            try:
                admitter.admit(state, request, candidates)
            finally:
                timer.observe("admitter", admitter, clock() - started)
        primary = self.profile.run(state, request, candidates)
        return SchedulingResult(primary=primary, candidates=candidates, state=state)

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        for hook in self._pre_requests:
            try:
                hook.pre_request(request, result)
            except Exception:
                logger.exception(
                    "plugin.pre_request_failed",
                    extra={"request_id": request.request_id, "plugin": hook.name},
                )

    def on_first_token(self, request: InferenceRequest, endpoint: str, now: float) -> None:
        for observer in self._observers:
            try:
                observer.on_first_token(request, endpoint, now)
            except Exception:
                logger.exception(
                    "plugin.observer_failed",
                    extra={"request_id": request.request_id, "plugin": observer.name},
                )

    def on_end(self, request: InferenceRequest, record: RequestRecord) -> None:
        for observer in self._observers:
            try:
                observer.on_end(request, record)
            except Exception:
                logger.exception(
                    "plugin.observer_failed",
                    extra={"request_id": request.request_id, "plugin": observer.name},
                )

    def forget_endpoint(self, endpoint: str) -> None:
        """The endpoint left the pool: every plugin drops what it keeps about it."""
        for plugin in self._lifecycles:
            try:
                plugin.forget(endpoint)
            except Exception:
                logger.exception(
                    "plugin.forget_failed", extra={"endpoint": endpoint, "plugin": plugin.name}
                )
