"""A worker process for model fitting: the event loop never trains, and a bad run can be killed.

One long-lived process (spawned, not forked: the parent runs an event loop and threads) takes
jobs over a pipe. The parent waits in a thread, with a deadline. A run that overstays is
killed with its process; a process that dies mid-run is noticed (the pipe closes); both raise
and the next run starts a fresh process. The current model keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any


class TrainingError(Exception):
    """A training run produced no result."""


class TrainingTimeout(TrainingError):
    pass


class TrainingCrashed(TrainingError):
    pass


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result: Any = fn(job)
        except Exception:
            result = _Failure(traceback.format_exc(limit=8))
        conn.send(result)


class TrainingWorker:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        """``fn`` runs in the worker; it must be importable by name (a module-level function)."""
        self._fn = fn
        self._ctx = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self.starts = 0

    def _ensure_started(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self.close()
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_serve, args=(child, self._fn), name="slogate-trainer", daemon=True
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        self.starts += 1
        return parent

    async def run(self, job: Any, *, timeout_s: float) -> Any:
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(None, self._ensure_started)
        try:
            await loop.run_in_executor(None, conn.send, job)
            ready = await loop.run_in_executor(None, conn.poll, timeout_s)
            if not ready:
                await loop.run_in_executor(None, self.close)
                raise TrainingTimeout(f"training took longer than {timeout_s:g} s; killed")
            result = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError) as exc:
            await loop.run_in_executor(None, self.close)
            raise TrainingCrashed("the training process died") from exc
        if isinstance(result, _Failure):
            raise TrainingError(result.message)
        return result

    def close(self) -> None:
        """Stop the worker process (killing a run in progress)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
            self._process = None
