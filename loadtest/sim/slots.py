"""The ``slots`` engine: the llm-d inference simulator's latency model, on one event heap.

What it models (llm-d-inference-sim's documented behaviour):

- at most ``max_num_seqs`` requests run at once; the rest wait in a FIFO queue. The head of
  the queue also waits while the KV cache cannot hold its whole sequence (prompt plus the
  tokens it will generate), and nobody overtakes it;
- a running request's prefill (its time to first token) takes
  ``prefill_overhead_ms + prefill_ms_per_token * uncached prompt tokens``; the cached part is
  the longest chain of prompt blocks already in the prefix cache (:class:`KVCache`, shared
  with the vllm engine), and its prompt blocks are cached once its prefill is done;
- every later token takes ``itl_ms``;
- all of those are stretched by the load factor
  ``1 + (time_factor_under_load - 1) * (running - 1) / (max_num_seqs - 1)`` (1 with one
  request running, ``time_factor_under_load`` at ``max_num_seqs``), and divided by ``speed``.

There is no shared step: each request advances on its own. The load factor is applied
continuously, not frozen when a token starts: every running request progresses at the same
rate, ``speed / load_factor(running)`` modelled seconds of work per modelled second, so one
*work clock* (the work each running request has done since the engine started) serves them
all. A request's next token is due when the work clock reaches a level fixed when the previous
one was emitted; the heap holds those levels. A change in the running count or the speed only
changes how fast the work clock runs, so it costs nothing per request, and a request in flight
continues at the new rate at once.

:meth:`SlotsEngine.advance` is a plain synchronous function of (state, wall time): tests drive
it with a fake clock. :meth:`SlotsEngine.run` is the one asyncio loop: advance, sleep until
the next due token (cut short by new requests, aborts and speed changes), repeat; one timer
and one wake-up per due time, never a task or a sleep per request.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush

from loadtest.sim.alarm import Alarm
from loadtest.sim.config import SimConfig
from loadtest.sim.kvcache import KVCache
from loadtest.sim.request import RequestState, SimRequest
from loadtest.sim.stats import EngineStats, StepTimingLog

_WAITING = RequestState.WAITING
_RUNNING = RequestState.RUNNING
# Float slack when comparing work levels: a token due 1 ns of work from now is due now, so
# the wall time computed for an event never lands a hair before it.
_DUE_SLACK_S = 1e-9
# The loop never sleeps less than this. Event-loop timers have millisecond granularity (uvloop
# rounds a delay to the nearest ms, so a 0.4 ms timer fires at once and the loop would spin
# until the token is due); a token is therefore never early and at most ~1 ms late, and with
# many streams one wake-up releases every token that fell due in the last millisecond.
MIN_SLEEP_S = 0.001


def load_factor(running: int, max_num_seqs: int, time_factor_under_load: float) -> float:
    """llm-d's slowdown with ``running`` requests in flight: 1 at one request, rising
    linearly to ``time_factor_under_load`` at ``max_num_seqs`` (1 when ``max_num_seqs`` <= 1)."""
    if max_num_seqs <= 1 or running <= 1:
        return 1.0
    return 1.0 + (time_factor_under_load - 1.0) * (running - 1) / (max_num_seqs - 1)


class SlotsEngine:
    """One llm-d-style simulated engine: slots, FIFO queue, KV cache, work clock, event heap."""

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
        # Running requests in admission order (a dict: O(1) removal, ordered iteration).
        self.running: dict[SimRequest, None] = {}
        self._clock = clock
        self._alarm = Alarm()
        self._speed = config.speed
        self._max_num_seqs = config.max_num_seqs
        self._factor = config.time_factor_under_load
        self._time_scale = config.time_scale
        self._max_lag_s = config.max_timeline_lag_s
        self._prefill_overhead_s = config.prefill_overhead_ms / 1e3
        self._prefill_s_per_token = config.prefill_ms_per_token / 1e3
        self._itl_s = config.itl_ms / 1e3
        # Work done by every running request so far (modelled seconds at speed 1, factor 1).
        self._work_s = 0.0
        self._now_s = clock()
        # (work level at which the request's next token is due, tie-breaker, request).
        # Aborted requests' entries stay until they surface and are skipped.
        self._events: list[tuple[float, int, SimRequest]] = []
        self._sequence = itertools.count()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def load_factor(self) -> float:
        """The slowdown the running requests progress under right now."""
        return load_factor(len(self.running), self._max_num_seqs, self._factor)

    def set_speed(self, speed: float) -> None:
        """From now on every running request progresses ``speed`` times as fast as at 1."""
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (got {speed!r})")
        self._advance_work(self._clock())
        self._speed = speed
        self._alarm.wake()

    def add_request(self, request: SimRequest) -> None:
        """Queue a request (FIFO); it starts at once if a slot and its KV blocks are free."""
        if request.prompt_len + request.max_tokens > self.config.max_model_len:
            raise ValueError(
                f"request {request.request_id} needs {request.prompt_len + request.max_tokens} "
                f"tokens, more than max_model_len={self.config.max_model_len}"
            )
        now = self._clock()
        self._advance_work(now)
        self.waiting.append(request)
        self._admit()
        self._alarm.wake()

    def abort(self, request: SimRequest) -> None:
        """Drop a request now (client gone): its slot and KV blocks go to the next in line."""
        if request.state is _WAITING:
            self.waiting.remove(request)
        elif request.state is _RUNNING:
            self._advance_work(self._clock())
            del self.running[request]
            self._free_blocks(request)
            self._admit()
            self._alarm.wake()
        else:
            return
        request.state = RequestState.ABORTED
        request.finish_reason = "abort"
        self.stats.finished["abort"] += 1
        request.notify()

    def advance(self, now: float) -> float | None:
        """Bring the engine to wall time ``now``: emit every token due by then, finish and
        admit requests. Returns the wall time the next token is due, or None when idle."""
        self._advance_work(now)
        events = self._events
        due_work_s = self._work_s + _DUE_SLACK_S
        emitted = 0
        while events and events[0][0] <= due_work_s:
            due_s, _, request = heappop(events)
            if request.state is not _RUNNING:
                continue  # aborted since its token was scheduled
            emitted += 1
            self._emit(request, due_s, now)
        if emitted:
            self.stats.generation_tokens += emitted
            self.stats.steps += 1
        return self._next_due_s(now)

    async def run(self) -> None:
        """Advance, sleep until the next due token or a change, repeat; idle without polling.

        A wake-up that was not cut short is logged in ``timings`` (planned vs actual sleep,
        lateness). Lateness does not accumulate: due times are work levels, and a late wake-up
        finds the work clock further along.
        """
        clock = self._clock
        alarm = self._alarm
        timings = self.timings
        try:
            while True:
                now = clock()
                next_s = self.advance(now)
                if next_s is None:
                    await alarm.sleep(None)
                    continue
                delay_s = max(next_s - now, MIN_SLEEP_S)
                if await alarm.sleep(delay_s):
                    done_s = clock()
                    timings.record(
                        modelled_s=delay_s, actual_s=done_s - now, late_s=done_s - next_s
                    )
        finally:
            self._abort_all()

    def _advance_work(self, now: float) -> None:
        """Run the work clock up to ``now`` at the rate of the current running count and speed.
        Called before anything changes either."""
        elapsed_s = now - self._now_s
        if elapsed_s <= 0:
            return
        self._now_s = now
        running = len(self.running)
        if running:
            modelled_s = elapsed_s * self._time_scale
            self._work_s += modelled_s * self._speed / self.load_factor
            self.stats.simulated_s += modelled_s

    def _wall_s_per_work_s(self) -> float:
        return self.load_factor / (self._speed * self._time_scale)

    def _next_due_s(self, now: float) -> float | None:
        events = self._events
        while events and events[0][2].state is not _RUNNING:
            heappop(events)
        if not events:
            return None
        return now + max(0.0, events[0][0] - self._work_s) * self._wall_s_per_work_s()

    def _schedule(self, request: SimRequest, due_work_s: float) -> None:
        heappush(self._events, (due_work_s, next(self._sequence), request))

    def _admit(self) -> None:
        """Start waiting requests in FIFO order while a slot is free and the head's whole
        sequence fits in the KV cache (the head waits otherwise; nobody overtakes it)."""
        waiting = self.waiting
        running = self.running
        kv = self.kv
        stats = self.stats
        block_size = self.config.block_size
        while waiting and len(running) < self._max_num_seqs:
            request = waiting[0]
            prompt_len = request.prompt_len
            # At least one prompt token is always computed (vLLM caps hits the same way).
            hits = kv.match_prefix(request.block_hashes, (prompt_len - 1) // block_size)
            # The whole sequence's blocks up front: no growth later, so no preemption.
            total_blocks = (prompt_len + request.output_len + block_size - 1) // block_size
            needed = total_blocks - len(hits)
            if not kv.can_allocate(needed, hits):
                break
            waiting.popleft()
            kv.acquire(hits)
            new_blocks = kv.allocate(needed)
            if new_blocks is None:  # pragma: no cover - can_allocate said it fits
                raise RuntimeError("KV allocation failed after can_allocate")
            request.blocks = hits + new_blocks
            cached = len(hits) * block_size
            request.num_computed = cached
            request.num_hashed_blocks = len(hits)
            request.num_cached_tokens = cached
            stats.prefix_cache_queries += prompt_len
            stats.prefix_cache_hits += cached
            request.state = _RUNNING
            running[request] = None
            prefill_s = self._prefill_overhead_s + self._prefill_s_per_token * (prompt_len - cached)
            self._schedule(request, self._work_s + prefill_s)

    def _emit(self, request: SimRequest, due_work_s: float, now: float) -> None:
        """``request``'s next token is out: record it, then schedule the next or finish."""
        stats = self.stats
        request.num_generated += 1
        if request.first_token_s is None:
            request.first_token_s = now
            stats.ttft_s.observe(now - request.arrival_s)
            stats.prompt_tokens += request.prompt_len
            self._cache_prompt(request)
        else:
            stats.inter_token_s.observe(now - request.last_token_s)
        request.last_token_s = now
        if request.num_generated >= request.output_len:
            self._finish(request, now)
            return
        late_wall_s = (self._work_s - due_work_s) * self._wall_s_per_work_s()
        if late_wall_s > self._max_lag_s:
            # The process fell behind the model: restart this request's timeline from now
            # rather than bursting out its backlog.
            self.timings.resyncs += 1
            due_work_s = self._work_s
        self._schedule(request, due_work_s + self._itl_s)
        if request.stream:
            request.notify()

    def _cache_prompt(self, request: SimRequest) -> None:
        """The prefill is done: its full prompt blocks are now in the prefix cache."""
        kv = self.kv
        blocks = request.blocks
        hashes = request.block_hashes
        for position in range(request.num_hashed_blocks, len(hashes)):
            kv.register(blocks[position], hashes[position])
        request.num_hashed_blocks = len(hashes)
        request.num_computed = request.prompt_len

    def _finish(self, request: SimRequest, now: float) -> None:
        reason = "length" if request.num_generated >= request.max_tokens else "stop"
        request.state = RequestState.FINISHED
        request.finish_reason = reason
        request.finished_s = now
        del self.running[request]
        self._free_blocks(request)
        self.stats.finished[reason] += 1
        self.stats.e2e_s.observe(now - request.arrival_s)
        request.notify()
        self._admit()

    def _free_blocks(self, request: SimRequest) -> None:
        self.kv.release(request.blocks)
        request.blocks = []

    def _abort_all(self) -> None:
        # The queue first, so freeing running requests' slots admits nobody.
        for request in [*self.waiting, *self.running]:
            self.abort(request)
