"""Changing a sim's speed at run time: the engines, and ``/sim/speed`` over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import ClientSession

from loadtest.sim import SIM_ENGINE_KEY, SimConfig, start_sim_server
from loadtest.sim.engine import Engine
from loadtest.sim.kvcache import hash_prompt_blocks
from loadtest.sim.request import SimRequest

MODEL = "sim-llm"


class FrozenClock:
    """A clock that stands still: the step loop's deadlines depend only on modelled times."""

    def __call__(self) -> float:
        return 0.0


def make_request(prompt_len: int, output_len: int) -> SimRequest:
    tokens = list(range(prompt_len))
    return SimRequest(
        request_id="req",
        prompt_len=prompt_len,
        block_hashes=hash_prompt_blocks(tokens, 16),
        max_tokens=output_len,
        output_len=output_len,
        stream=False,
        arrival_s=0.0,
    )


def test_vllm_engine_steps_are_divided_by_the_current_speed() -> None:
    config = SimConfig()
    engine = Engine(config, clock=FrozenClock())
    engine.add_request(make_request(1000, 10))
    at_one = engine.schedule().modelled_s
    engine = Engine(config, clock=FrozenClock())
    engine.set_speed(4.0)
    engine.add_request(make_request(1000, 10))
    assert engine.speed == 4.0
    assert engine.schedule().modelled_s == pytest.approx(at_one / 4)
    with pytest.raises(ValueError, match="speed"):
        engine.set_speed(-1.0)


async def test_vllm_engine_step_in_flight_finishes_at_the_new_speed() -> None:
    # time_scale 1000: the 2,000-token prefill step (~0.18 s modelled) sleeps ~0.2 ms.
    config = SimConfig(time_scale=1000.0)
    engine = Engine(config, clock=FrozenClock())
    task = asyncio.create_task(engine.run())
    await asyncio.sleep(0)  # the loop waits for work
    request = make_request(2000, 1)
    engine.add_request(request)
    step_s = engine.config.cost.step_seconds(
        prefill_tokens=2000,
        prefill_attention_pairs=2000 * 1000,
        num_decodes=0,
        decode_context_tokens=0,
    )
    await asyncio.sleep(0)  # the loop scheduled the step and sleeps on it
    assert engine.num_running == 1
    engine.set_speed(2.0)  # the frozen clock says no time has passed: all of it at speed 2
    while not request.done:
        await request.wait_for_update()
    assert engine.stats.steps == 1
    assert engine.stats.simulated_s == pytest.approx(step_s / 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture(params=["vllm", "slots"])
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_speed_endpoint_reads_and_sets_the_speed(engine_name: str) -> None:
    server = await start_sim_server(SimConfig(engine=engine_name, speed=1.5, time_scale=100.0))
    try:
        async with ClientSession(base_url=server.url) as session:
            async with session.get("/sim/speed") as response:
                assert response.status == 200
                assert await response.json() == {"speed": 1.5}
            async with session.post("/sim/speed", json={"speed": 0.25}) as response:
                assert response.status == 200
                assert await response.json() == {"speed": 0.25}
            assert server.app[SIM_ENGINE_KEY].speed == 0.25
            async with session.post("/sim/speed", json={"speed": 3}) as response:
                assert await response.json() == {"speed": 3.0}
            async with session.get("/sim/stats") as response:
                stats = await response.json()
            assert (stats["engine"], stats["speed"]) == (engine_name, 3.0)
            body = {"model": MODEL, "prompt": "hello", "max_tokens": 5, "ignore_eos": True}
            async with session.post("/v1/completions", json=body) as response:
                assert response.status == 200
                assert (await response.json())["usage"]["completion_tokens"] == 5
    finally:
        await server.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1.0]",
        b"{}",
        b'{"speed": "fast"}',
        b'{"speed": true}',
        b'{"speed": null}',
        b'{"speed": 0}',
        b'{"speed": -2.5}',
        b'{"speed": 1e999}',
    ],
    ids=["not-json", "list", "missing", "string", "bool", "null", "zero", "negative", "inf"],
)
async def test_bad_speed_bodies_get_an_openai_style_400(engine_name: str, body: bytes) -> None:
    server = await start_sim_server(SimConfig(engine=engine_name))
    try:
        async with ClientSession(base_url=server.url) as session:
            async with session.post(
                "/sim/speed", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 400
                payload: dict[str, Any] = await response.json()
            error = payload["error"]
            assert error["type"] == "BadRequestError"
            assert error["code"] == 400
            assert "speed" in error["message"]
            assert server.app[SIM_ENGINE_KEY].speed == 1.0
    finally:
        await server.close()
