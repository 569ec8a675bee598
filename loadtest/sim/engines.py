"""The contract between the HTTP server and an engine, and the table that picks one by name.

The server, the metrics collector and ``/sim/stats`` see an engine only through
:class:`SimEngine`: queue it a :class:`~loadtest.sim.request.SimRequest`, abort one, read its
queue lengths, KV cache and counters, change its speed, and run its loop. How an engine turns
requests into token timings is its own business:

- ``vllm``  (:class:`~loadtest.sim.engine.Engine`): continuous batching, one shared step loop
  whose step time comes from the cost model;
- ``slots`` (:class:`~loadtest.sim.slots.SlotsEngine`): the llm-d inference simulator's model,
  ``max_num_seqs`` slots, each running request on its own timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

from loadtest.sim.config import SimConfig
from loadtest.sim.engine import Engine
from loadtest.sim.kvcache import KVCache
from loadtest.sim.request import SimRequest
from loadtest.sim.slots import SlotsEngine
from loadtest.sim.stats import EngineStats, StepTimingLog

logger = logging.getLogger(__name__)


class SimEngine(Protocol):
    """What the server needs of an engine. Every method is called on the event loop."""

    @property
    def config(self) -> SimConfig: ...

    @property
    def kv(self) -> KVCache: ...

    @property
    def stats(self) -> EngineStats: ...

    @property
    def timings(self) -> StepTimingLog: ...

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def speed(self) -> float:
        """The current speed: every modelled time is divided by it."""
        ...

    def set_speed(self, speed: float) -> None:
        """Change the speed now; work in flight continues at the new speed (ValueError if
        ``speed`` is not > 0)."""
        ...

    def add_request(self, request: SimRequest) -> None:
        """Queue a request (ValueError if it cannot fit in ``max_model_len``)."""
        ...

    def abort(self, request: SimRequest) -> None:
        """Drop a request now (client gone), freeing its slot and KV blocks."""
        ...

    async def run(self) -> None:
        """The engine's loop; cancelling it aborts every request it holds."""
        ...


class EngineFactory(Protocol):
    def __call__(self, config: SimConfig, *, clock: Callable[[], float]) -> SimEngine: ...


# Keyed by the names SimConfig accepts (config.ENGINE_NAMES; a test checks they agree).
ENGINES: Mapping[str, EngineFactory] = {"vllm": Engine, "slots": SlotsEngine}


def create_engine(config: SimConfig, *, clock: Callable[[], float]) -> SimEngine:
    """The engine ``config.engine`` names (the config validated the name)."""
    return ENGINES[config.engine](config, clock=clock)


@contextlib.asynccontextmanager
async def running_engine(engine: SimEngine) -> AsyncIterator[None]:
    """Run ``engine``'s loop for the duration of the block (used by the app's cleanup_ctx)."""
    task = asyncio.get_running_loop().create_task(engine.run(), name="sim-engine-loop")
    task.add_done_callback(_log_crash)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _log_crash(task: asyncio.Task[None]) -> None:
    """An engine loop that dies leaves every request hanging: say so loudly."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("sim.engine_crashed", exc_info=task.exception())
