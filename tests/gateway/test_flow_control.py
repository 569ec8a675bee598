"""The admission queue (flow control): order, waiting, expiry, pressure, and the gateway's use."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import pytest

from gateway.flow_control import AdmissionQueue
from scheduler.framework.errors import AdmissionDenied


class Gate:
    """An admission attempt that succeeds while ``room`` is positive, taking one each time."""

    def __init__(self, room: int = 0) -> None:
        self.room = room
        self.admitted: list[str] = []

    def attempt(self, name: str) -> str:
        if self.room <= 0:
            raise AdmissionDenied("full", reason="rejected-saturated")
        self.room -= 1
        self.admitted.append(name)
        return name


def make_queue(max_queued: int = 10, max_wait_s: float = 5.0) -> AdmissionQueue:
    return AdmissionQueue(max_queued=max_queued, max_wait_s=max_wait_s, clock=time.monotonic)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def test_admitted_at_once_when_there_is_room() -> None:
    gate = Gate(room=1)
    result, waited = await make_queue().admit(-1, lambda: gate.attempt("a"))
    assert (result, waited) == ("a", 0.0)


async def test_a_refused_request_waits_for_room_and_higher_priority_goes_first() -> None:
    gate, queue = Gate(), make_queue()
    low = asyncio.create_task(queue.admit(-5, lambda: gate.attempt("low")))
    await until(lambda: len(queue) == 1)
    high = asyncio.create_task(queue.admit(-1, lambda: gate.attempt("high")))
    await until(lambda: len(queue) == 2)
    gate.room = 1
    queue.room_freed()
    name, waited = await high
    assert name == "high"
    assert waited > 0
    assert not low.done()
    gate.room = 1
    queue.room_freed()
    assert (await low)[0] == "low"
    assert gate.admitted == ["high", "low"]
    assert len(queue) == 0


async def test_a_newcomer_does_not_overtake_a_waiter_of_equal_priority() -> None:
    gate, queue = Gate(), make_queue()
    first = asyncio.create_task(queue.admit(-1, lambda: gate.attempt("first")))
    await until(lambda: len(queue) == 1)
    gate.room = 1  # room appears just as the second arrives
    second = asyncio.create_task(queue.admit(-1, lambda: gate.attempt("second")))
    assert (await first)[0] == "first"
    gate.room = 1
    queue.room_freed()
    assert (await second)[0] == "second"
    assert gate.admitted == ["first", "second"]


async def test_the_head_rechecks_without_being_woken() -> None:
    gate, queue = Gate(), make_queue()
    task = asyncio.create_task(queue.admit(-1, lambda: gate.attempt("a")))
    await until(lambda: len(queue) == 1)
    gate.room = 1  # e.g. a scrape showed the pods' queues drained; nobody calls room_freed
    assert (await task)[0] == "a"


async def test_a_request_that_waited_too_long_is_refused() -> None:
    queue = make_queue(max_wait_s=0.1)
    with pytest.raises(AdmissionDenied) as denied:
        await queue.admit(-1, lambda: Gate().attempt("a"))
    assert denied.value.reason == "rejected-ttl-expired"
    assert len(queue) == 0


async def test_a_full_queue_refuses_newcomers_unless_they_outrank_a_waiter() -> None:
    gate, queue = Gate(), make_queue(max_queued=2)
    waiters = [
        asyncio.create_task(queue.admit(p, functools.partial(gate.attempt, n)))
        for n, p in (("a", -1), ("b", -5))
    ]
    await until(lambda: len(queue) == 2)
    with pytest.raises(AdmissionDenied) as denied:
        await queue.admit(-5, lambda: gate.attempt("c"))
    assert denied.value.reason == "evicted-queue-pressure"
    outranking = asyncio.create_task(queue.admit(-2, lambda: gate.attempt("d")))
    with pytest.raises(AdmissionDenied) as evicted:
        await waiters[1]
    assert evicted.value.reason == "evicted-priority"
    assert len(queue) == 2
    gate.room = 2
    queue.room_freed()
    assert (await waiters[0])[0] == "a"
    assert (await outranking)[0] == "d"


async def test_a_cancelled_waiter_leaves_the_queue_and_the_next_moves_up() -> None:
    gate, queue = Gate(), make_queue()
    first = asyncio.create_task(queue.admit(-1, lambda: gate.attempt("first")))
    await until(lambda: len(queue) == 1)
    second = asyncio.create_task(queue.admit(-1, lambda: gate.attempt("second")))
    await until(lambda: len(queue) == 2)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(queue) == 1
    gate.room = 1
    assert (await second)[0] == "second"
