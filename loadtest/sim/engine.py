"""The continuous-batching engine: vLLM V1's scheduler, simplified honestly, plus its step loop.

Each step (see :meth:`Engine.schedule`):

1. Running requests, oldest first, each get the tokens they still need (1 for a decode, up to
   the rest of the prompt for a prefill) until the step's token budget
   ``max_num_batched_tokens`` is spent; decodes count one token each, as in vLLM V1. A decode
   that crosses a block boundary needs a new KV block; if none is free the most recently
   admitted running request is preempted (its blocks freed, itself put back at the *front* of
   the waiting queue to be recomputed later), repeatedly, until the block fits.
2. If nothing was preempted, waiting requests are admitted in FIFO order while there is budget,
   fewer than ``max_num_seqs`` run, and the KV cache can hold the request's whole uncached
   prompt (above a small watermark). The longest cached chain of prompt blocks is reused and
   only the rest is prefilled, in chunks that fit the remaining budget.

The step's duration comes from :class:`~loadtest.sim.costmodel.CostModel` at the engine's
current speed. The loop (:meth:`Engine.run`) sleeps that long divided by ``time_scale``,
against a timeline, so small wake-up delays do not add up (a speed change mid-step rescales
the rest of the step); then :meth:`Engine.complete` applies the step: prompt blocks that became
full are registered in the prefix cache, each sequence whose tokens are all computed samples
one token, and handlers are woken. ``schedule`` and ``complete`` are plain synchronous
functions of the engine state, so tests drive them without a loop or a server.

This is the ``vllm`` engine; :mod:`loadtest.sim.engines` has the contract it shares with the
``slots`` engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.sim.alarm import Alarm
from loadtest.sim.config import SimConfig
from loadtest.sim.costmodel import BatchShape
from loadtest.sim.kvcache import KVCache
from loadtest.sim.request import RequestState, SimRequest
from loadtest.sim.stats import EngineStats, StepTimingLog

_WAITING = RequestState.WAITING
_RUNNING = RequestState.RUNNING


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    """What one step computes: ``(request, new tokens)`` pairs, their shape and modelled time."""

    items: list[tuple[SimRequest, int]]
    batch: BatchShape
    modelled_s: float


class Engine:
    """One simulated vLLM engine core: waiting queue, running batch, KV cache, statistics."""

    def __init__(
        self,
        config: SimConfig,
        *,
        clock: Callable[[], float],
        kv: KVCache | None = None,
        stats: EngineStats | None = None,
        timings: StepTimingLog | None = None,
    ) -> None:
        self.config = config
        self.kv = kv if kv is not None else KVCache(config.kv_blocks, config.block_size)
        self.stats = stats if stats is not None else EngineStats()
        self.timings = timings if timings is not None else StepTimingLog()
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self._clock = clock
        self._work = asyncio.Event()
        self._step_alarm = Alarm()
        self._speed = config.speed

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def speed(self) -> float:
        return self._speed

    def set_speed(self, speed: float) -> None:
        """From now on, steps take ``cost / speed``; the step in flight finishes its remaining
        part at the new speed."""
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (got {speed!r})")
        self._speed = speed
        self._step_alarm.wake()

    @property
    def num_running(self) -> int:
        return len(self.running)

    def add_request(self, request: SimRequest) -> None:
        """Queue a request (FIFO) and wake the step loop."""
        if request.prompt_len + request.max_tokens > self.config.max_model_len:
            raise ValueError(
                f"request {request.request_id} needs {request.prompt_len + request.max_tokens} "
                f"tokens, more than max_model_len={self.config.max_model_len}"
            )
        self.waiting.append(request)
        self._work.set()

    def abort(self, request: SimRequest) -> None:
        """Drop a request now (client gone): its slot and KV blocks are free for the next step."""
        if request.state is _WAITING:
            self.waiting.remove(request)
        elif request.state is _RUNNING:
            self.running.remove(request)
            self._free_blocks(request)
        else:
            return
        request.state = RequestState.ABORTED
        request.finish_reason = "abort"
        self.stats.finished["abort"] += 1
        request.notify()

    def schedule(self) -> ScheduledStep:
        """Pick this step's work (may preempt and admit); see the module docstring."""
        config = self.config
        block_size = config.block_size
        kv = self.kv
        budget = config.max_num_batched_tokens
        items: list[tuple[SimRequest, int]] = []
        prefill_tokens = 0
        attention_pairs = 0.0
        num_decodes = 0
        decode_context = 0

        running = self.running
        preempted = False
        index = 0
        while index < len(running) and budget > 0:
            request = running[index]
            computed = request.num_computed
            num_new = min(request.prompt_len + request.num_generated - computed, budget)
            shortfall = (computed + num_new + block_size - 1) // block_size - len(request.blocks)
            if shortfall > 0:
                new_blocks = kv.allocate(shortfall)
                while new_blocks is None:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is request:
                        break
                    new_blocks = kv.allocate(shortfall)
                if new_blocks is None:
                    break  # the request preempted itself; it was the last one running
                request.blocks.extend(new_blocks)
            items.append((request, num_new))
            budget -= num_new
            index += 1
            if num_new == 1 and request.num_generated > 0:
                num_decodes += 1
                decode_context += computed + 1
            else:
                prefill_tokens += num_new
                attention_pairs += num_new * (computed + num_new / 2)

        if not preempted:
            waiting = self.waiting
            stats = self.stats
            while waiting and budget > 0 and len(running) < config.max_num_seqs:
                request = waiting[0]
                num_tokens = request.prompt_len + request.num_generated
                # At least one token is always computed, so a fully cached prompt still
                # produces logits (vLLM caps hits at num_tokens - 1 the same way).
                hits = kv.match_prefix(request.block_hashes, (num_tokens - 1) // block_size)
                needed = (num_tokens + block_size - 1) // block_size - len(hits)
                reserve = config.kv_watermark_blocks if running else 0
                if not kv.can_allocate(needed, hits, reserve=reserve):
                    break  # FIFO: the head waits for space, nobody overtakes it
                waiting.popleft()
                kv.acquire(hits)
                new_blocks = kv.allocate(needed)
                if new_blocks is None:  # pragma: no cover - can_allocate said it fits
                    raise RuntimeError("KV allocation failed after can_allocate")
                request.blocks = hits + new_blocks
                cached = len(hits) * block_size
                request.num_computed = cached
                request.num_hashed_blocks = len(hits)
                if request.num_cached_tokens < 0:
                    request.num_cached_tokens = cached
                stats.prefix_cache_queries += num_tokens
                stats.prefix_cache_hits += cached
                request.state = _RUNNING
                running.append(request)
                num_new = min(num_tokens - cached, budget)
                items.append((request, num_new))
                budget -= num_new
                prefill_tokens += num_new
                attention_pairs += num_new * (cached + num_new / 2)

        batch = BatchShape(
            prefill_tokens=prefill_tokens,
            prefill_attention_pairs=attention_pairs,
            num_decodes=num_decodes,
            decode_context_tokens=decode_context,
        )
        modelled_s = config.cost.batch_seconds(batch, speed=self._speed) if items else 0.0
        return ScheduledStep(items=items, batch=batch, modelled_s=modelled_s)

    def complete(self, step: ScheduledStep, now: float) -> None:
        """Apply a finished step at time ``now``: cache full blocks, emit tokens, finish."""
        stats = self.stats
        kv = self.kv
        block_size = self.config.block_size
        ttft = stats.ttft_s
        inter_token = stats.inter_token_s
        generated = 0
        finished_any = False
        for request, num_new in step.items:
            if request.state is not _RUNNING:
                continue  # aborted while the step was on the GPU
            computed = request.num_computed + num_new
            request.num_computed = computed
            hashes = request.block_hashes
            hashed = request.num_hashed_blocks
            if hashed < len(hashes):
                full = min(computed // block_size, len(hashes))
                blocks = request.blocks
                for position in range(hashed, full):
                    kv.register(blocks[position], hashes[position])
                if full > hashed:
                    request.num_hashed_blocks = full
            if computed < request.prompt_len + request.num_generated:
                continue  # a prefill chunk that did not reach the end of the sequence
            request.num_generated += 1
            generated += 1
            if request.first_token_s is None:
                request.first_token_s = now
                ttft.observe(now - request.arrival_s)
                stats.prompt_tokens += request.prompt_len
            else:
                inter_token.observe(now - request.last_token_s)
            request.last_token_s = now
            if request.num_generated >= request.output_len:
                self._finish(request, now)
                finished_any = True
            elif request.stream:
                request.notify()
        stats.generation_tokens += generated
        stats.steps += 1
        stats.simulated_s += step.modelled_s
        if finished_any:
            self.running = [r for r in self.running if r.state is _RUNNING]

    async def run(self) -> None:
        """Step forever: schedule, sleep the modelled time / time_scale, complete.

        Sleeps are aimed at a timeline (each deadline = previous deadline + modelled time), so
        late wake-ups do not accumulate; if the loop falls more than ``max_timeline_lag_s``
        behind (the process is overloaded), the timeline restarts from now and the resync is
        counted. Idle engines await an event, never poll.
        """
        clock = self._clock
        time_scale = self.config.time_scale
        max_lag_s = self.config.max_timeline_lag_s
        timings = self.timings
        timeline_s = clock()
        previous_done_s: float | None = None
        try:
            while True:
                if not self.running and not self.waiting:
                    self._work.clear()
                    await self._work.wait()
                    timeline_s = clock()
                    previous_done_s = None
                    continue
                step = self.schedule()
                if not step.items:
                    await asyncio.sleep(0)
                    continue
                wall_s = step.modelled_s / time_scale
                now = clock()
                if now - timeline_s > max_lag_s:
                    timings.resyncs += 1
                    timeline_s = now
                    previous_done_s = None
                deadline_s = timeline_s + wall_s
                step_speed = self._speed
                while not await self._step_alarm.sleep(deadline_s - now):
                    # The speed changed mid-step: the rest of the step runs at the new speed.
                    now = clock()
                    remaining_s = max(0.0, deadline_s - now) * step_speed / self._speed
                    step_speed = self._speed
                    deadline_s = now + remaining_s
                    wall_s = deadline_s - timeline_s
                    step = dataclasses.replace(step, modelled_s=wall_s * time_scale)
                done_s = clock()
                self.complete(step, done_s)
                timings.record(
                    modelled_s=wall_s,
                    actual_s=None if previous_done_s is None else done_s - previous_done_s,
                    late_s=done_s - deadline_s,
                )
                previous_done_s = done_s
                timeline_s = deadline_s
        finally:
            self._abort_all()

    def _abort_all(self) -> None:
        for request in [*self.running, *self.waiting]:
            self.abort(request)

    def _finish(self, request: SimRequest, now: float) -> None:
        reason = "length" if request.num_generated >= request.max_tokens else "stop"
        request.state = RequestState.FINISHED
        request.finish_reason = reason
        request.finished_s = now
        self._free_blocks(request)
        self.stats.finished[reason] += 1
        self.stats.e2e_s.observe(now - request.arrival_s)
        request.notify()

    def _preempt(self, request: SimRequest) -> None:
        """vLLM's recompute preemption: forget the KV, queue first in line to start over."""
        self._free_blocks(request)
        request.num_computed = 0
        request.num_hashed_blocks = 0
        request.state = _WAITING
        self.waiting.appendleft(request)
        self.stats.preemptions += 1

    def _free_blocks(self, request: SimRequest) -> None:
        self.kv.release(request.blocks)
        request.blocks = []
