"""LoRA adapters on a real sim server: listed, served, kept apart in the prefix cache, and
reported in ``vllm:lora_requests_info`` as vLLM reports them; plus the ``--lora`` flag."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from gateway.tokenizer import load_tokenizer
from loadtest.sim import SimConfig, SimConfigError, SimServer, start_sim_server
from loadtest.sim.cli import add_sim_arguments, config_from_args

MODEL = "sim-llm"
ADAPTERS = ("sql-lora", "chat-lora")
TOKENIZER = load_tokenizer()
LONG_PROMPT = " ".join(f"row{i}" for i in range(100))


@dataclass
class Sim:
    server: SimServer
    http: ClientSession

    async def post(self, path: str, body: object, status: int = 200) -> dict[str, Any]:
        response = await self.http.post(self.server.url + path, json=body)
        assert response.status == status, await response.text()
        payload: dict[str, Any] = await response.json()
        return payload

    async def lora_series(self) -> list[dict[str, Any]]:
        """The ``vllm:lora_requests_info`` samples: labels plus ``value``, newest first."""
        text = await (await self.http.get(self.server.url + "/metrics")).text()
        series = [
            {**sample.labels, "value": sample.value}
            for family in text_string_to_metric_families(text)
            if family.name == "vllm:lora_requests_info"
            for sample in family.samples
        ]
        return sorted(series, key=lambda sample: -sample["value"])

    async def wait_for_lora(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Scrape until the newest series satisfies ``predicate``."""
        series: list[dict[str, Any]] = []
        for _ in range(500):
            series = await self.lora_series()
            if series and predicate(series[0]):
                return series[0]
            await asyncio.sleep(0.01)
        raise AssertionError(f"lora_requests_info never matched: {series}")


async def started(config: SimConfig) -> SimServer:
    return await start_sim_server(config, tokenizer=TOKENIZER)


@pytest.fixture(params=["vllm", "slots"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    server = await started(
        SimConfig(engine=request.param, time_scale=1000.0, lora_adapters=ADAPTERS)
    )
    try:
        async with ClientSession() as http:
            yield Sim(server, http)
    finally:
        await server.close()


async def test_adapters_are_listed_like_vllm_lists_them(sim: Sim) -> None:
    response = await sim.http.get(sim.server.url + "/v1/models")
    cards = (await response.json())["data"]
    assert [card["id"] for card in cards] == [MODEL, *ADAPTERS]
    for card in cards[1:]:
        assert card["object"] == "model"
        assert card["owned_by"] == "vllm"
        assert card["parent"] == MODEL
        assert card["root"] == card["id"]
        assert isinstance(card["created"], int)


async def test_every_route_serves_an_adapter_under_its_name(sim: Sim) -> None:
    adapter = ADAPTERS[1]
    completion = await sim.post(
        "/v1/completions", {"model": adapter, "prompt": "x", "max_tokens": 2}
    )
    assert completion["model"] == adapter
    chat = await sim.post(
        "/v1/chat/completions",
        {"model": adapter, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
    )
    assert chat["model"] == adapter
    response = await sim.post("/v1/responses", {"model": adapter, "input": "x"})
    assert response["model"] == adapter
    stream = await sim.http.post(
        sim.server.url + "/v1/chat/completions",
        json={
            "model": adapter,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "stream": True,
        },
    )
    assert f'"model":"{adapter}"'.encode() in await stream.read()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/responses", {"input": "x"}),
        ("/v1/embeddings", {"input": "x"}),
        ("/tokenize", {"prompt": "x"}),
    ],
)
async def test_an_unknown_model_is_vllms_404(sim: Sim, path: str, body: dict[str, Any]) -> None:
    error = (await sim.post(path, {**body, "model": "not-an-adapter"}, 404))["error"]
    assert error == {
        "message": "The model `not-an-adapter` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_adapters_do_not_share_the_base_models_prefix_cache(sim: Sim) -> None:
    def body(model: str) -> dict[str, Any]:
        return {"model": model, "prompt": LONG_PROMPT, "max_tokens": 1}

    def cached(answer: dict[str, Any]) -> int:
        value: int = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
        return value

    assert cached(await sim.post("/v1/completions", body(MODEL))) == 0
    assert cached(await sim.post("/v1/completions", body(ADAPTERS[0]))) == 0
    assert cached(await sim.post("/v1/completions", body(ADAPTERS[0]))) > 0
    assert cached(await sim.post("/v1/completions", body(ADAPTERS[1]))) == 0
    assert cached(await sim.post("/v1/completions", body(MODEL))) > 0


async def test_lora_requests_info_shows_running_and_waiting_adapters() -> None:
    """One slot: the first adapter's stream runs, the second's waits behind it; the newest
    series says so, then says nothing runs once both are done."""
    config = SimConfig(speed=0.0001, max_num_seqs=1, lora_adapters=ADAPTERS)
    server = await started(config)
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            assert await sim.lora_series() == []  # vLLM sets no series before a request

            def stream(model: str) -> Any:
                body = {
                    "model": model,
                    "prompt": "x",
                    "max_tokens": 3,
                    "ignore_eos": True,
                    "stream": True,
                }
                return asyncio.ensure_future(http.post(server.url + "/v1/completions", json=body))

            first = stream(ADAPTERS[0])
            await sim.wait_for_lora(lambda s: s["running_lora_adapters"] == ADAPTERS[0])
            second = stream(ADAPTERS[1])
            newest = await sim.wait_for_lora(lambda s: s["waiting_lora_adapters"] == ADAPTERS[1])
            assert newest["running_lora_adapters"] == ADAPTERS[0]
            assert newest["max_lora"] == "2"
            assert set(newest) == {
                "max_lora",
                "running_lora_adapters",
                "waiting_lora_adapters",
                "value",
            }
            # vLLM sets the gauge to the time of the update.
            assert abs(newest["value"] - time.time()) < 600

            await http.post(server.url + "/sim/speed", json={"speed": 10000.0})
            for pending in (first, second):
                response = await pending
                assert (await response.read()).endswith(b"data: [DONE]\n\n")
            idle = await sim.wait_for_lora(
                lambda s: s["running_lora_adapters"] == s["waiting_lora_adapters"] == ""
            )
            # Older combinations stay exposed with their last update time, as in vLLM.
            assert len(await sim.lora_series()) >= 3
            assert idle["max_lora"] == "2"
    finally:
        await server.close()


async def test_no_lora_gauge_without_adapters() -> None:
    server = await started(SimConfig(time_scale=1000.0))
    try:
        async with ClientSession() as http:
            sim = Sim(server, http)
            await sim.post("/v1/completions", {"prompt": "x", "max_tokens": 1})
            text = await (await http.get(server.url + "/metrics")).text()
            assert "lora" not in text
    finally:
        await server.close()


def test_the_lora_flag_is_repeatable() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    config = config_from_args(parser.parse_args(["--lora", "a", "--lora", "b"]))
    assert config.lora_adapters == ("a", "b")
    assert config_from_args(parser.parse_args([])).lora_adapters == ()


@pytest.mark.parametrize(
    "adapters",
    [("",), ("a", "a"), (MODEL,), ("a,b",)],
    ids=["empty", "twice", "base-name", "comma"],
)
def test_bad_adapter_names_are_config_errors(adapters: tuple[str, ...]) -> None:
    with pytest.raises(SimConfigError) as caught:
        SimConfig(lora_adapters=adapters)
    assert caught.value.path.startswith("lora_adapters[")
