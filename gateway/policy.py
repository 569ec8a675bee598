"""What decides a request's fate, bundled so a configuration reload swaps it in one step.

A :class:`RoutingPolicy` holds the scheduler (plugins and their state), the objectives, the
``slo`` settings and the admission queue. The director reads its current policy once when a
request arrives and that request keeps it to its end: scheduled, dispatched, observed and
finished by the same plugins, even when a reload installs another policy meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from config import SloConfig
from gateway.flow_control import AdmissionQueue
from gateway.objectives import Objectives
from gateway.telemetry import GatewayMetrics
from scheduler.framework.plugins import RequestObserver
from scheduler.scheduler import Scheduler


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingPolicy:
    scheduler: Scheduler
    slo: SloConfig
    objectives: Objectives
    queue: AdmissionQueue | None
    observers: tuple[RequestObserver, ...]
    """Told of every request's first token and end: the scheduler first, then the rest."""


def routing_policy(
    scheduler: Scheduler,
    slo: SloConfig,
    *,
    metrics: GatewayMetrics,
    observers: Sequence[RequestObserver],
    clock: Callable[[], float],
    previous: RoutingPolicy | None = None,
) -> RoutingPolicy:
    """A policy for ``scheduler`` and ``slo``; the admission queue of ``previous`` is kept (with
    whoever waits in it) unless its settings changed."""
    settings = slo.queue
    queue: AdmissionQueue | None
    if not settings.enabled:
        queue = None
    elif previous is not None and previous.queue is not None and previous.slo.queue == settings:
        queue = previous.queue
    else:
        queue = AdmissionQueue(
            max_queued=settings.max_queued,
            max_wait_s=settings.max_wait_ms / 1000,
            clock=clock,
            on_change=metrics.queue_changed,
        )
    return RoutingPolicy(
        scheduler=scheduler,
        slo=slo,
        objectives=Objectives(slo),
        queue=queue,
        observers=(scheduler, metrics, *observers),
    )
