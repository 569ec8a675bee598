"""A sleep that other tasks can cut short: the engines' one timer.

An engine loop sleeps until its next modelled deadline, but a new request, an abort or a speed
change can move that deadline. :class:`Alarm` is a future plus one ``call_later`` handle, the
same cost as ``asyncio.sleep``, with :meth:`Alarm.wake` to end the sleep early. Cheaper than
``asyncio.wait_for`` on an event (no extra task per sleep), which matters at thousands of
sleeps a second.
"""

from __future__ import annotations

import asyncio


def _ring(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class Alarm:
    """One sleeper at a time; :meth:`wake` ends its sleep (a no-op when nobody sleeps)."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[bool] | None = None

    async def sleep(self, delay_s: float | None) -> bool:
        """Sleep ``delay_s`` seconds (``None``: until woken). True if the time ran out,
        False if :meth:`wake` ended the sleep first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        handle = None if delay_s is None else loop.call_later(max(delay_s, 0.0), _ring, waiter)
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)
