"""The continuous-batching engine, driven step by step with a fake clock (no server)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from loadtest.sim.config import SimConfig
from loadtest.sim.engine import Engine, ScheduledStep
from loadtest.sim.kvcache import hash_prompt_blocks
from loadtest.sim.request import RequestState, SimRequest, draw_output_len


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_ids = itertools.count()


def make_request(
    prompt: list[int] | int,
    *,
    output_len: int,
    max_tokens: int | None = None,
    block_size: int = 16,
    stream: bool = True,
) -> SimRequest:
    number = next(_ids)
    # An int prompt gets tokens of its own, so requests share no prefix unless a test says so.
    tokens = (
        list(range(number * 100_000, number * 100_000 + prompt))
        if isinstance(prompt, int)
        else prompt
    )
    return SimRequest(
        request_id=f"req-{number}",
        prompt_len=len(tokens),
        block_hashes=hash_prompt_blocks(tokens, block_size),
        max_tokens=output_len if max_tokens is None else max_tokens,
        output_len=output_len,
        stream=stream,
        arrival_s=0.0,
    )


def step(engine: Engine, clock: FakeClock) -> ScheduledStep:
    scheduled = engine.schedule()
    clock.now += scheduled.modelled_s
    engine.complete(scheduled, clock.now)
    return scheduled


def run_until_idle(engine: Engine, clock: FakeClock, max_steps: int = 100_000) -> int:
    steps = 0
    while engine.running or engine.waiting:
        step(engine, clock)
        steps += 1
        assert steps < max_steps
    return steps


def make_engine(**overrides: object) -> tuple[Engine, FakeClock]:
    clock = FakeClock()
    return Engine(SimConfig(**overrides), clock=clock), clock  # type: ignore[arg-type]


def test_prefill_then_one_token_per_step() -> None:
    engine, clock = make_engine()
    request = make_request(100, output_len=5)
    engine.add_request(request)
    first = step(engine, clock)
    assert first.batch.prefill_tokens == 100
    assert first.batch.num_decodes == 0
    assert request.num_generated == 1
    assert request.first_token_s == pytest.approx(first.modelled_s)
    second = step(engine, clock)
    assert second.batch.num_decodes == 1
    assert second.batch.decode_context_tokens == 101
    assert run_until_idle(engine, clock) == 3
    assert request.state is RequestState.FINISHED
    assert request.finish_reason == "length"
    assert request.num_generated == 5
    assert engine.kv.num_in_use == 0
    assert engine.stats.prompt_tokens == 100
    assert engine.stats.generation_tokens == 5
    assert engine.stats.finished["length"] == 1
    assert engine.stats.ttft_s.count == 1
    assert engine.stats.inter_token_s.count == 4
    assert engine.stats.e2e_s.count == 1


def test_finish_before_max_tokens_is_stop() -> None:
    engine, clock = make_engine()
    request = make_request(10, output_len=3, max_tokens=50)
    engine.add_request(request)
    run_until_idle(engine, clock)
    assert request.num_generated == 3
    assert request.finish_reason == "stop"


def test_chunked_prefill_shares_the_token_budget_with_decodes() -> None:
    engine, clock = make_engine(max_num_batched_tokens=512)
    decoding = make_request(10, output_len=100)
    engine.add_request(decoding)
    step(engine, clock)
    long_prompt = make_request(1200, output_len=5)
    engine.add_request(long_prompt)
    chunks = []
    while long_prompt.num_generated == 0:
        scheduled = step(engine, clock)
        assert sum(n for _, n in scheduled.items) <= 512
        assert scheduled.batch.num_decodes == 1  # the running decode is never starved
        chunks.append(scheduled.batch.prefill_tokens)
    assert chunks == [511, 511, 178]
    assert decoding.num_generated == 4


def test_later_chunks_cost_more_attention() -> None:
    engine, clock = make_engine(max_num_batched_tokens=1024)
    engine.add_request(make_request(3072, output_len=1))
    costs = [step(engine, clock).modelled_s for _ in range(3)]
    assert costs[0] < costs[1] < costs[2]


def test_waiting_queue_forms_beyond_max_num_seqs() -> None:
    engine, clock = make_engine(max_num_seqs=2)
    requests = [make_request(20 + i, output_len=10) for i in range(5)]
    for request in requests:
        engine.add_request(request)
    step(engine, clock)
    assert engine.num_running == 2
    assert engine.num_waiting == 3
    assert [r.state for r in requests[:2]] == [RequestState.RUNNING] * 2
    run_until_idle(engine, clock)
    assert all(r.num_generated == 10 for r in requests)


def test_repeated_prompt_hits_the_prefix_cache() -> None:
    engine, clock = make_engine()
    prompt = list(range(500, 600))  # 6 full blocks + 4 tokens
    first = make_request(prompt, output_len=2)
    engine.add_request(first)
    run_until_idle(engine, clock)
    assert first.num_cached_tokens == 0
    second = make_request(prompt, output_len=2)
    engine.add_request(second)
    scheduled = step(engine, clock)
    assert second.num_cached_tokens == 96
    assert scheduled.batch.prefill_tokens == 4
    assert engine.stats.prefix_cache_queries == 200
    assert engine.stats.prefix_cache_hits == 96


def test_fully_cached_prompt_still_computes_its_last_token() -> None:
    engine, clock = make_engine()
    prompt = list(range(64))  # exactly 4 blocks
    engine.add_request(make_request(prompt, output_len=1))
    run_until_idle(engine, clock)
    again = make_request(prompt, output_len=1)
    engine.add_request(again)
    scheduled = step(engine, clock)
    assert again.num_cached_tokens == 48
    assert scheduled.batch.prefill_tokens == 16


def test_shared_prefix_is_reused_by_a_different_prompt() -> None:
    engine, clock = make_engine()
    system = list(range(1000, 1064))
    engine.add_request(make_request([*system, 1, 2, 3], output_len=1))
    run_until_idle(engine, clock)
    other = make_request([*system, 7, 8, 9, 10], output_len=1)
    engine.add_request(other)
    step(engine, clock)
    assert other.num_cached_tokens == 64


def test_full_kv_cache_blocks_admission_and_preempts_the_newest() -> None:
    engine, clock = make_engine(kv_blocks=16, block_size=16, max_model_len=256)
    first, second, third = (make_request(100 + i, output_len=150) for i in range(3))
    for request in (first, second, third):
        engine.add_request(request)
    step(engine, clock)
    # 7 blocks each: two fit in 16, the third waits for space.
    assert engine.running == [first, second]
    assert list(engine.waiting) == [third]
    while engine.stats.preemptions == 0:
        step(engine, clock)
    assert list(engine.waiting)[:2] == [second, third]
    assert second.blocks == []
    assert second.num_computed == 0
    assert second.num_generated > 0  # kept: it recomputes prompt + output so far
    run_until_idle(engine, clock)
    assert [r.num_generated for r in (first, second, third)] == [150, 150, 150]
    assert engine.kv.num_in_use == 0


def test_preempted_request_is_recomputed_reusing_its_cached_prompt_blocks() -> None:
    engine, clock = make_engine(kv_blocks=20, block_size=16, max_model_len=256)
    first, second = make_request(100, output_len=150), make_request(101, output_len=150)
    engine.add_request(first)
    engine.add_request(second)
    while engine.stats.preemptions == 0:
        step(engine, clock)
    generated = second.num_generated
    assert list(engine.waiting) == [second]
    assert engine.stats.prefix_cache_hits == 0
    while second.state is not RequestState.RUNNING:
        step(engine, clock)
    # Re-admitted: prompt + generated tokens are prefilled again, minus the prompt blocks that
    # survived in the prefix cache; nothing new was generated meanwhile.
    assert second.num_generated in (generated, generated + 1)
    assert engine.stats.prefix_cache_hits > 0
    run_until_idle(engine, clock)
    assert second.num_generated == 150
    assert second.num_cached_tokens == 0  # usage reports the first admission's hits


def test_speed_two_halves_the_simulated_time_of_the_same_workload() -> None:
    def simulate(speed: float) -> tuple[float, int]:
        engine, clock = make_engine(speed=speed, max_num_seqs=8)
        for i in range(20):
            engine.add_request(make_request(300 + 37 * i, output_len=40 + i))
        steps = run_until_idle(engine, clock)
        return engine.stats.simulated_s, steps

    slow_s, slow_steps = simulate(1.0)
    fast_s, fast_steps = simulate(2.0)
    assert slow_steps == fast_steps
    assert fast_s == pytest.approx(slow_s / 2)


def test_abort_running_frees_slot_and_blocks() -> None:
    engine, clock = make_engine()
    request = make_request(200, output_len=100)
    engine.add_request(request)
    step(engine, clock)
    assert engine.kv.num_in_use > 0
    engine.abort(request)
    assert engine.num_running == 0
    assert engine.kv.num_in_use == 0
    assert request.state is RequestState.ABORTED
    assert engine.stats.finished["abort"] == 1


def test_abort_while_a_step_is_in_flight_drops_its_tokens() -> None:
    engine, _clock = make_engine()
    request = make_request(50, output_len=10)
    engine.add_request(request)
    scheduled = engine.schedule()
    engine.abort(request)
    engine.complete(scheduled, 1.0)
    assert request.num_generated == 0
    assert engine.stats.generation_tokens == 0


def test_abort_waiting_request_leaves_the_queue() -> None:
    engine, clock = make_engine(max_num_seqs=1)
    running, waiting = make_request(20, output_len=50), make_request(20, output_len=50)
    engine.add_request(running)
    engine.add_request(waiting)
    step(engine, clock)
    engine.abort(waiting)
    assert engine.num_waiting == 0
    assert engine.num_running == 1
    engine.abort(waiting)  # idempotent
    assert engine.stats.finished["abort"] == 1


def test_request_longer_than_max_model_len_is_refused() -> None:
    engine, _ = make_engine(max_model_len=100)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request(make_request(90, output_len=20))


def test_output_length_draw_is_deterministic_and_long_tailed() -> None:
    def draw(digest: int, seed: int | None = None) -> int:
        return draw_output_len(digest, seed, sim_seed=0, median=128.0, sigma=0.9)

    assert draw(123) == draw(123)
    assert draw(123, seed=1) == draw(123, seed=1)
    lengths = sorted(draw(digest) for digest in range(2000))
    assert len({draw(123, seed=s) for s in range(20)}) > 10
    median, p99 = lengths[1000], lengths[1980]
    assert 100 <= median <= 160
    assert p99 > 4 * median


async def test_step_loop_runs_work_and_idles_without_polling() -> None:
    config = SimConfig(time_scale=1000.0)
    engine = Engine(config, clock=asyncio.get_running_loop().time)
    task = asyncio.create_task(engine.run())
    request = make_request(100, output_len=20, stream=False)
    engine.add_request(request)
    while not request.done:
        await request.wait_for_update()
    assert request.num_generated == 20
    steps = engine.stats.steps
    assert engine.timings.count == steps
    await asyncio.sleep(0.02)
    assert engine.stats.steps == steps  # idle: no steps without work
    pending = make_request(10, output_len=10_000)
    engine.add_request(pending)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pending.state is RequestState.ABORTED  # stopping the loop releases waiters
