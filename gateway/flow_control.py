"""Flow control: sheddable work refused at admission may wait a while for room instead.

Optional (``slo.queue.enabled``), after llm-d's flow control. A request the admitter refuses
joins a queue ordered by priority, then arrival. Only the head of the queue retries admission:
when a request ends anywhere in the pool (room may have appeared) and at least every
``RECHECK_S`` (scraped queues drain without a request of this gateway ending). Admitted, it
leaves and the next one becomes the head. A request that has waited ``max_wait_ms`` is refused
for good (reason ``rejected-ttl-expired``); when ``max_queued`` requests already wait, a new
one is refused at once (``evicted-queue-pressure``), unless it outranks the lowest-priority
waiter, which is evicted in its place (``evicted-priority``). A client that disconnects leaves
the queue. A new request never overtakes a waiter of equal or higher priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from scheduler.framework.errors import AdmissionDenied

T = TypeVar("T")

RECHECK_S = 0.05
TTL_EXPIRED = "rejected-ttl-expired"
QUEUE_PRESSURE = "evicted-queue-pressure"
EVICTED_PRIORITY = "evicted-priority"


@dataclass(order=True, slots=True)
class _Waiter:
    rank: tuple[int, int]
    """(-priority, arrival sequence): the heap's smallest is the head."""
    priority: int = field(compare=False)
    turn: asyncio.Event = field(compare=False, default_factory=asyncio.Event)
    evicted: bool = field(compare=False, default=False)
    gone: bool = field(compare=False, default=False)


class AdmissionQueue:
    """The waiting room in front of admission; one per gateway, used on its event loop."""

    def __init__(
        self,
        *,
        max_queued: int,
        max_wait_s: float,
        clock: Callable[[], float],
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._on_change = on_change
        """Called with (priority, +1 | -1) as a waiter joins or leaves (a gauge)."""

    def __len__(self) -> int:
        return sum(1 for w in self._heap if not w.gone)

    async def admit(self, priority: int, attempt: Callable[[], T]) -> tuple[T, float]:
        """``attempt()`` now or once room appears; its result and the seconds waited.
        Raises :class:`AdmissionDenied` when the wait ends without admission."""
        if not self._outranked_by_waiter(priority):
            try:
                return attempt(), 0.0
            except AdmissionDenied:
                pass
        waiter = self._join(priority)
        started = self._clock()
        deadline = started + self.max_wait_s
        try:
            while True:
                if waiter.evicted:
                    raise AdmissionDenied(
                        "evicted from the admission queue by higher-priority work",
                        reason=EVICTED_PRIORITY,
                    )
                if self._head() is waiter:
                    try:
                        return attempt(), self._clock() - started
                    except AdmissionDenied:
                        pass
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise AdmissionDenied(
                        f"no room within {self.max_wait_s:g} s in the admission queue",
                        reason=TTL_EXPIRED,
                    )
                waiter.turn.clear()
                timeout = min(remaining, RECHECK_S) if self._head() is waiter else remaining
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.turn.wait(), timeout)
        finally:
            self._leave(waiter)

    def room_freed(self) -> None:
        """A request ended somewhere: the head may retry now."""
        head = self._head()
        if head is not None:
            head.turn.set()

    # -- the heap -------------------------------------------------------------------------
    def _outranked_by_waiter(self, priority: int) -> bool:
        head = self._head()
        return head is not None and head.priority >= priority

    def _head(self) -> _Waiter | None:
        heap = self._heap
        while heap and heap[0].gone:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _join(self, priority: int) -> _Waiter:
        waiting = [w for w in self._heap if not w.gone]
        if len(waiting) >= self.max_queued:
            lowest = max(waiting, default=None)
            if lowest is None or lowest.priority >= priority:
                raise AdmissionDenied(
                    f"the admission queue is full ({self.max_queued} waiting)",
                    reason=QUEUE_PRESSURE,
                )
            lowest.evicted = True
            self._leave(lowest)
            lowest.turn.set()
        waiter = _Waiter((-priority, next(self._seq)), priority)
        heapq.heappush(self._heap, waiter)
        if self._on_change is not None:
            self._on_change(priority, 1)
        return waiter

    def _leave(self, waiter: _Waiter) -> None:
        if waiter.gone:
            return
        was_head = self._head() is waiter
        waiter.gone = True
        if self._on_change is not None:
            self._on_change(waiter.priority, -1)
        if was_head:
            self.room_freed()
