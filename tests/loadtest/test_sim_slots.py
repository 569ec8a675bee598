"""The slots engine (llm-d inference simulator's model), driven with a fake clock (no server)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from loadtest.sim.config import ENGINE_NAMES, SimConfig
from loadtest.sim.engine import Engine
from loadtest.sim.engines import ENGINES, create_engine
from loadtest.sim.kvcache import hash_prompt_blocks
from loadtest.sim.request import RequestState, SimRequest
from loadtest.sim.slots import SlotsEngine, load_factor


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_ids = itertools.count()

# Round numbers so expected times are easy to read: prefill = 10 ms + 1 ms per uncached token.
FAST = {"prefill_overhead_ms": 10.0, "prefill_ms_per_token": 1.0, "itl_ms": 5.0}


def make_request(
    prompt: list[int] | int, *, output_len: int, stream: bool = True, arrival_s: float = 0.0
) -> SimRequest:
    number = next(_ids)
    tokens = (
        list(range(number * 100_000, number * 100_000 + prompt))
        if isinstance(prompt, int)
        else prompt
    )
    return SimRequest(
        request_id=f"req-{number}",
        prompt_len=len(tokens),
        block_hashes=hash_prompt_blocks(tokens, 16),
        max_tokens=output_len,
        output_len=output_len,
        stream=stream,
        arrival_s=arrival_s,
    )


def make_engine(**overrides: object) -> tuple[SlotsEngine, FakeClock]:
    clock = FakeClock()
    config = SimConfig(engine="slots", **{**FAST, **overrides})  # type: ignore[arg-type]
    return SlotsEngine(config, clock=clock), clock


def run_until(engine: SlotsEngine, clock: FakeClock, done: SimRequest | None = None) -> None:
    """Jump the fake clock from due token to due token until ``done`` (or everything) ends."""
    for _ in range(1_000_000):
        if done is not None and done.done:
            return
        next_s = engine.advance(clock.now)
        if next_s is None:
            return
        clock.now = next_s
    raise AssertionError("engine never went idle")


def run_for(engine: SlotsEngine, clock: FakeClock, until_s: float) -> None:
    """Advance through every token due before ``until_s``, then to ``until_s`` itself."""
    while (next_s := engine.advance(clock.now)) is not None and next_s <= until_s:
        clock.now = next_s
    clock.now = until_s
    engine.advance(until_s)


def test_engine_registry_matches_the_config_names() -> None:
    assert tuple(ENGINES) == ENGINE_NAMES
    clock = FakeClock()
    assert isinstance(create_engine(SimConfig(), clock=clock), Engine)
    assert isinstance(create_engine(SimConfig(engine="slots"), clock=clock), SlotsEngine)


@pytest.mark.parametrize(
    ("running", "max_num_seqs", "factor", "expected"),
    [
        (0, 8, 3.0, 1.0),
        (1, 8, 3.0, 1.0),
        (8, 8, 3.0, 3.0),
        (5, 9, 3.0, 2.0),
        (2, 2, 4.0, 4.0),
        (1, 1, 5.0, 1.0),  # one slot: alone and saturated are the same state
        (4, 16, 1.0, 1.0),
    ],
)
def test_load_factor_is_linear_from_one_to_the_factor(
    running: int, max_num_seqs: int, factor: float, expected: float
) -> None:
    assert load_factor(running, max_num_seqs, factor) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("overrides", "prompt_len", "ttft_s"),
    [
        ({}, 1, 0.011),
        ({}, 100, 0.110),
        ({"prefill_overhead_ms": 0.0}, 100, 0.100),
        ({"prefill_ms_per_token": 0.25}, 400, 0.110),
        ({"time_factor_under_load": 10.0}, 100, 0.110),  # one request: no slowdown
    ],
)
def test_ttft_alone_is_overhead_plus_per_token_times_prompt(
    overrides: dict[str, float], prompt_len: int, ttft_s: float
) -> None:
    engine, clock = make_engine(**overrides)
    request = make_request(prompt_len, output_len=4)
    engine.add_request(request)
    assert engine.num_running == 1
    run_until(engine, clock)
    assert request.first_token_s == pytest.approx(ttft_s)
    assert request.finished_s == pytest.approx(ttft_s + 3 * 0.005)
    assert request.finish_reason == "length"
    assert engine.stats.ttft_s.count == 1
    assert engine.stats.inter_token_s.count == 3
    assert engine.stats.inter_token_s.sum == pytest.approx(3 * 0.005)
    assert engine.stats.generation_tokens == 4
    assert engine.stats.prompt_tokens == prompt_len
    assert engine.stats.simulated_s == pytest.approx(ttft_s + 0.015)


def test_a_repeated_prefix_is_cheaper() -> None:
    engine, clock = make_engine()
    prompt = list(range(100))  # 6 full blocks of 16
    first = make_request(prompt, output_len=2)
    engine.add_request(first)
    run_until(engine, clock)
    start_s = clock.now
    again = make_request(prompt, output_len=2, arrival_s=start_s)
    engine.add_request(again)
    run_until(engine, clock)
    assert first.num_cached_tokens == 0
    assert first.first_token_s == pytest.approx(0.010 + 0.100)
    # 96 of the 100 tokens are cached; 4 are prefilled.
    assert again.num_cached_tokens == 96
    assert again.first_token_s == pytest.approx(start_s + 0.010 + 0.004)
    assert engine.stats.prefix_cache_queries == 200
    assert engine.stats.prefix_cache_hits == 96
    assert engine.kv.num_in_use == 0


def test_concurrent_identical_prompts_both_miss() -> None:
    """The prompt is cached when its prefill is done, not when it starts (as in vLLM)."""
    engine, clock = make_engine()
    prompt = list(range(64))
    requests = [make_request(prompt, output_len=2) for _ in range(2)]
    for request in requests:
        engine.add_request(request)
    run_until(engine, clock)
    assert [r.num_cached_tokens for r in requests] == [0, 0]


def test_requests_beyond_max_num_seqs_wait_in_fifo_order() -> None:
    engine, clock = make_engine(max_num_seqs=2, time_factor_under_load=1.0)
    # prefill 10 + 10 = 20 ms each; then 5 ms per token.
    requests = [make_request(10, output_len=n) for n in (5, 2, 3, 1, 2)]
    for request in requests:
        engine.add_request(request)
    assert (engine.num_running, engine.num_waiting) == (2, 3)
    assert [r.state for r in requests].count(RequestState.WAITING) == 3
    run_until(engine, clock)
    # r0: 0..40 ms. r1: 0..25. r2 starts at 25: 25..55. r3 starts at 40: 40..60.
    # r4 starts at 55: 55..80.
    finished = [r.finished_s for r in requests]
    assert finished == pytest.approx([0.040, 0.025, 0.055, 0.060, 0.080])
    first = [r.first_token_s for r in requests]
    assert first == pytest.approx([0.020, 0.020, 0.045, 0.060, 0.075])
    assert (engine.num_running, engine.num_waiting) == (0, 0)


def test_a_request_that_does_not_fit_in_kv_waits_and_blocks_the_queue() -> None:
    engine, clock = make_engine(kv_blocks=16, block_size=16, max_model_len=256)
    big = make_request(100, output_len=100)  # 13 blocks for its whole sequence
    second = make_request(100, output_len=50)  # 10 blocks: must wait for big
    small = make_request(10, output_len=5)  # 1 block, would fit, but FIFO
    for request in (big, second, small):
        engine.add_request(request)
    assert (engine.num_running, engine.num_waiting) == (1, 2)
    assert engine.kv.usage == pytest.approx(13 / 16)
    run_until(engine, clock, done=big)
    assert second.state is RequestState.RUNNING
    assert small.state is RequestState.RUNNING
    run_until(engine, clock)
    assert big.finished_s is not None
    assert second.first_token_s is not None
    assert second.first_token_s > big.finished_s
    assert engine.kv.num_in_use == 0
    assert engine.kv.usage == 0


def test_load_factor_stretches_prefill_and_inter_token_times() -> None:
    engine, clock = make_engine(max_num_seqs=4, time_factor_under_load=3.0)
    requests = [make_request(10, output_len=3) for _ in range(4)]
    for request in requests:
        engine.add_request(request)
    assert engine.load_factor == pytest.approx(3.0)
    run_until(engine, clock)
    for request in requests:
        assert request.first_token_s == pytest.approx(3 * 0.020)
        assert request.finished_s == pytest.approx(3 * (0.020 + 2 * 0.005))
    assert engine.stats.inter_token_s.sum == pytest.approx(4 * 2 * 3 * 0.005)


def test_load_factor_is_applied_continuously_as_the_running_count_changes() -> None:
    engine, clock = make_engine(max_num_seqs=2, time_factor_under_load=2.0)
    alone = make_request(10, output_len=1)  # 20 ms of prefill work
    engine.add_request(alone)
    run_for(engine, clock, 0.010)  # half of it alone, at factor 1
    joiner = make_request(10, output_len=1, arrival_s=0.010)
    engine.add_request(joiner)
    assert engine.load_factor == pytest.approx(2.0)
    run_until(engine, clock)
    # The other half at factor 2 takes 20 ms; the joiner then finishes alone.
    assert alone.first_token_s == pytest.approx(0.030)
    # Joiner: 10 ms of work by t=30 ms (at factor 2), the other 10 ms alone.
    assert joiner.first_token_s == pytest.approx(0.040)


@pytest.mark.parametrize(
    ("speed", "time_scale", "ttft_s"),
    [(1.0, 1.0, 0.020), (2.0, 1.0, 0.010), (0.5, 1.0, 0.040), (1.0, 10.0, 0.002)],
)
def test_speed_divides_and_time_scale_compresses_every_time(
    speed: float, time_scale: float, ttft_s: float
) -> None:
    engine, clock = make_engine(speed=speed, time_scale=time_scale)
    request = make_request(10, output_len=3)
    engine.add_request(request)
    run_until(engine, clock)
    assert request.first_token_s == pytest.approx(ttft_s)
    assert request.finished_s == pytest.approx(ttft_s * 1.5)  # 20 ms prefill + 2 x 5 ms
    # Modelled time does not depend on time_scale.
    assert engine.stats.simulated_s == pytest.approx(0.030 / speed)


def test_set_speed_applies_to_requests_in_flight() -> None:
    engine, clock = make_engine()
    request = make_request(10, output_len=3)  # 20 ms prefill, then 2 x 5 ms
    engine.add_request(request)
    run_for(engine, clock, 0.010)
    engine.set_speed(2.0)
    assert engine.speed == 2.0
    run_until(engine, clock)
    assert request.first_token_s == pytest.approx(0.015)
    assert request.finished_s == pytest.approx(0.015 + 0.005)
    with pytest.raises(ValueError, match="speed"):
        engine.set_speed(0.0)


def test_abort_frees_the_slot_for_the_next_in_line() -> None:
    engine, clock = make_engine(max_num_seqs=1)
    running = make_request(10, output_len=100)
    waiting = make_request(10, output_len=2)
    behind = make_request(10, output_len=2)
    for request in (running, waiting, behind):
        engine.add_request(request)
    engine.abort(behind)
    assert behind.state is RequestState.ABORTED
    assert engine.num_waiting == 1
    run_for(engine, clock, 0.050)
    engine.abort(running)
    assert running.state is RequestState.ABORTED
    assert waiting.state is RequestState.RUNNING
    assert engine.stats.finished["abort"] == 2
    run_until(engine, clock)
    assert waiting.first_token_s == pytest.approx(0.050 + 0.020)
    assert engine.kv.num_in_use == 0
    engine.abort(running)  # already gone: nothing happens
    assert engine.stats.finished["abort"] == 2


def test_a_late_wake_up_restarts_the_timeline_instead_of_bursting() -> None:
    engine, clock = make_engine()
    request = make_request(10, output_len=1000)
    engine.add_request(request)
    run_for(engine, clock, 0.100)
    generated = request.num_generated
    clock.now = 1.100  # the process stalled for a second
    engine.advance(clock.now)
    assert request.num_generated == generated + 1  # not 200 tokens at once
    assert engine.timings.resyncs == 1
    run_for(engine, clock, 1.200)
    assert request.num_generated == generated + 1 + 20


async def test_streams_are_woken_per_token_and_others_only_at_the_end() -> None:
    engine, clock = make_engine()
    streamed = make_request(10, output_len=3, stream=True)
    whole = make_request(10, output_len=3, stream=False)
    wakes = {"streamed": 0, "whole": 0}

    async def watch(name: str, request: SimRequest) -> None:
        while not request.done:
            await request.wait_for_update()
            wakes[name] += 1

    tasks = [
        asyncio.create_task(watch("streamed", streamed)),
        asyncio.create_task(watch("whole", whole)),
    ]
    await asyncio.sleep(0)  # both watchers are waiting
    engine.add_request(streamed)
    engine.add_request(whole)
    while (next_s := engine.advance(clock.now)) is not None:
        clock.now = next_s
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert wakes == {"streamed": 3, "whole": 1}


async def test_run_loop_serves_requests_and_stopping_it_aborts_them() -> None:
    config = SimConfig(engine="slots", time_scale=1000.0)
    engine = SlotsEngine(config, clock=asyncio.get_running_loop().time)
    task = asyncio.create_task(engine.run())
    request = make_request(100, output_len=20, stream=False)
    engine.add_request(request)
    while not request.done:
        await request.wait_for_update()
    assert request.num_generated == 20
    assert engine.num_running == 0
    pending = [make_request(10, output_len=30_000) for _ in range(2)]
    for item in pending:
        engine.add_request(item)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [item.state for item in pending] == [RequestState.ABORTED] * 2
    assert engine.kv.num_in_use == 0
