"""The official openai SDK through the gateway to simulated vLLM pods: every API a client uses.

Chat, completions (batched too), responses (streamed or not, chained with
``previous_response_id``), embeddings and a LoRA adapter: each lands on a pod that can serve
it, and is counted in the metrics (and, for generation, in the predictor's training window).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openai.types.responses import ResponseCompletedEvent, ResponseCreatedEvent

from gateway.keys import gateway_key
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from scheduler.datalayer.store import Health
from scheduler.framework.plugins import Outcome
from tests.gateway.conftest import (
    MakeGateway,
    Recorder,
    gateway_config,
    server_url,
    wait_all_up,
)

Client = TestClient[web.Request, web.Application]
FAST = SimConfig(time_scale=50.0)
ADAPTER = "sql-lora"


@pytest.fixture
async def pods() -> AsyncIterator[dict[str, SimServer]]:
    """A base-model pod and a pod that also serves a LoRA adapter."""
    servers = {
        "base": await start_sim_server(FAST),
        "lora": await start_sim_server(SimConfig(time_scale=50.0, lora_adapters=(ADAPTER,))),
    }
    yield servers
    for server in servers.values():
        await server.close()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.02)


async def ready_gateway(make_gateway: MakeGateway, *urls: str, preset: str) -> Client:
    """A gateway that has scraped every pod and learned every pod's models."""
    client = await make_gateway(gateway_config(*urls, preset=preset))
    gateway = client.app[gateway_key]
    await wait_for(lambda: len(gateway.store.usable(time.monotonic())) == len(urls))
    await wait_all_up(client)
    return client


@pytest.fixture
async def gw(pods: dict[str, SimServer], make_gateway: MakeGateway) -> Client:
    return await ready_gateway(
        make_gateway, pods["base"].url, pods["lora"].url, preset="predicted-latency"
    )


def sdk(client: Client) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)


def pod_name(server: SimServer | TestServer) -> str:
    url = server.url if isinstance(server, SimServer) else server_url(server)
    return url.removeprefix("http://")


def samples(client: Client, target: str) -> int:
    window = client.app[gateway_key].predictor.windows[target]
    return len(window) + window.test_size


async def metrics_text(client: Client) -> str:
    return await (await client.get("/metrics")).text()


async def test_chat_and_completions(gw: Client, recorder: Recorder) -> None:
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(
            model="sim-llm",
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            max_completion_tokens=6,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        completion = await client.completions.create(
            model="sim-llm", prompt="Once upon a time", max_tokens=4
        )
    assert len([p for p in pieces if p]) == 6
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 4
    await wait_for(lambda: len(recorder.records) == 2)
    assert [r.outcome for r in recorder.records] == [Outcome.SUCCESS] * 2
    assert 'inference_objective_request_total{model_name="sim-llm"' in await metrics_text(gw)


async def test_batched_completions_are_one_request_of_several_sequences(
    instant_backend: TestServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    # The sim serves one prompt per request (docs/sim.md); vLLM and the instant backend take
    # batches.
    gw = await make_gateway(gateway_config(server_url(instant_backend), preset="least-request"))
    async with sdk(gw) as client:
        batch = await client.completions.with_raw_response.create(
            model="sim-llm", prompt=["Say a", "Say b", "Say c"], max_tokens=3
        )
        ids = await client.completions.create(model="sim-llm", prompt=[[1, 2], [3, 4]], n=2)
    assert batch.headers["x-slogate-endpoint"] == pod_name(instant_backend)
    assert batch.parse().choices
    assert ids.choices
    await wait_for(lambda: len(recorder.records) == 2)
    strings, id_lists = recorder.records
    assert (strings.sequences, id_lists.sequences) == (3, 4)
    assert id_lists.prompt_tokens == 4  # the sum of the prompts
    assert all(r.outcome is Outcome.SUCCESS for r in recorder.records)


async def test_responses_non_streamed(
    gw: Client, pods: dict[str, SimServer], recorder: Recorder
) -> None:
    async with sdk(gw) as client:
        raw = await client.responses.with_raw_response.create(
            model="sim-llm",
            instructions="Answer briefly.",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}],
            max_output_tokens=5,
            extra_body={"ignore_eos": True},
        )
    response = raw.parse()
    assert response.output_text
    assert response.usage is not None
    assert response.usage.output_tokens == 5
    assert raw.headers["x-slogate-endpoint"] in {pod_name(p) for p in pods.values()}
    await wait_for(lambda: len(recorder.records) == 1)
    record = recorder.records[0]
    assert (record.outcome, record.completion_tokens, record.stream) == (Outcome.SUCCESS, 5, False)
    assert record.prompt_tokens > 0
    await wait_for(lambda: samples(gw, "e2e") == 1)  # trains like a non-streamed chat


async def test_streamed_responses_feed_ttft_and_tpot_to_the_predictor(
    gw: Client, recorder: Recorder
) -> None:
    async with sdk(gw) as client:
        stream = await client.responses.create(
            model="sim-llm",
            input="Tell me about routers.",
            max_output_tokens=8,
            stream=True,
            extra_body={"ignore_eos": True},
            extra_headers={"x-llm-d-slo-ttft-ms": "60000"},
        )
        kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created"
    assert kinds.count("response.output_text.delta") == 8
    assert kinds[-1] == "response.completed"
    await wait_for(lambda: len(recorder.records) == 1)
    record = recorder.records[0]
    assert record.first_token_at is not None
    assert record.completion_tokens == 8
    assert record.tpot_s is not None
    assert len(recorder.first_tokens) == 1
    await wait_for(lambda: samples(gw, "ttft") == 1 and samples(gw, "tpot") == 1)
    text = await metrics_text(gw)
    assert 'inference_objective_request_ttft_seconds_count{model_name="sim-llm"' in text
    assert 'inference_objective_request_tpot_seconds_count{model_name="sim-llm"' in text
    assert 'slogate_slo_requests_total{met="true",model_name="sim-llm"' in text


async def test_embeddings(gw: Client, pods: dict[str, SimServer], recorder: Recorder) -> None:
    async with sdk(gw) as client:
        raw = await client.embeddings.with_raw_response.create(
            model="sim-llm", input=["first text", "second text"], dimensions=8
        )
    embeddings = raw.parse()
    assert [len(e.embedding) for e in embeddings.data] == [8, 8]
    assert raw.headers["x-slogate-endpoint"] in {pod_name(p) for p in pods.values()}
    await wait_for(lambda: len(recorder.records) == 1)
    record = recorder.records[0]
    assert (record.outcome, record.sequences, record.first_token_at) == (Outcome.SUCCESS, 2, None)
    text = await metrics_text(gw)
    pooling = (
        'slogate_pooling_request_duration_seconds_count{model_name="sim-llm",route="embeddings"}'
    )
    assert f"{pooling} 1.0" in text
    assert 'inference_objective_request_total{model_name="sim-llm"' in text
    assert all(samples(gw, t) == 0 for t in ("ttft", "tpot", "e2e"))  # pooling never trains


async def test_an_adapter_request_goes_only_to_the_pod_that_has_it(
    gw: Client, pods: dict[str, SimServer], recorder: Recorder
) -> None:
    async with sdk(gw) as client:
        listed = {m.id: m.model_extra or {} for m in (await client.models.list()).data}
        served_by = set()
        for i in range(6):
            raw = await client.chat.completions.with_raw_response.create(
                model=ADAPTER, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=2
            )
            assert raw.parse().model == ADAPTER
            served_by.add(raw.headers["x-slogate-endpoint"])
        stream = await client.responses.create(
            model=ADAPTER, input="hi", max_output_tokens=2, stream=True
        )
        assert [e.type async for e in stream][-1] == "response.completed"
    assert listed["sim-llm"]["parent"] is None
    assert listed[ADAPTER]["parent"] == "sim-llm"
    assert listed[ADAPTER]["root"] == ADAPTER
    assert served_by == {pod_name(pods["lora"])}
    await wait_for(lambda: len(recorder.records) == 7)
    assert {r.endpoint for r in recorder.records} == {pod_name(pods["lora"])}
    assert f'inference_objective_request_total{{model_name="{ADAPTER}"' in await metrics_text(gw)


async def test_a_previous_response_id_chain_sticks_to_the_pod_that_stores_it(
    make_gateway: MakeGateway,
) -> None:
    servers = [await start_sim_server(FAST) for _ in range(3)]
    try:
        # Round robin would send each request of the chain to the next pod (whose store does
        # not have the previous response: vLLM's 404).
        gw = await ready_gateway(make_gateway, *(s.url for s in servers), preset="round-robin")
        async with sdk(gw) as client:
            stream = await client.responses.create(
                model="sim-llm", input="Remember: 7.", max_output_tokens=3, stream=True
            )
            previous = ""
            async for event in stream:
                if isinstance(event, ResponseCreatedEvent):
                    previous = event.response.id
            pods, input_tokens = set(), []
            for turn in range(4):
                if turn % 2:  # streamed: the id and usage come in the events
                    streamed = await client.responses.with_raw_response.create(
                        model="sim-llm",
                        input=f"And {turn}?",
                        previous_response_id=previous,
                        max_output_tokens=3,
                        stream=True,
                    )
                    pods.add(streamed.headers["x-slogate-endpoint"])
                    async for event in streamed.parse():
                        if isinstance(event, ResponseCompletedEvent):
                            previous = event.response.id
                            assert event.response.usage is not None
                            input_tokens.append(event.response.usage.input_tokens)
                else:
                    raw = await client.responses.with_raw_response.create(
                        model="sim-llm",
                        input=f"And {turn}?",
                        previous_response_id=previous,
                        max_output_tokens=3,
                    )
                    pods.add(raw.headers["x-slogate-endpoint"])
                    response = raw.parse()
                    previous = response.id
                    assert response.usage is not None
                    input_tokens.append(response.usage.input_tokens)
            stored = await client.responses.retrieve(previous)
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.responses.retrieve("resp_never_seen")
            # A made-up model continuing a known response: the gateway's 404, and no metric
            # series named after it (label sets stay bounded).
            with pytest.raises(openai.NotFoundError) as made_up:
                await client.responses.create(
                    model="made-up-model", input="x", previous_response_id=previous
                )
        assert made_up.value.code == "model_not_found"
        assert "made-up-model" not in await metrics_text(gw)
        assert len(pods) == 1
        assert input_tokens == sorted(input_tokens)  # each turn carries the conversation
        assert input_tokens[0] < input_tokens[-1]
        assert stored.id == previous
        assert unknown.value.code == "response_not_found"
    finally:
        for server in servers:
            await server.close()


async def test_a_follow_up_to_a_pod_that_is_gone_is_a_clear_404(
    make_gateway: MakeGateway,
) -> None:
    servers = [await start_sim_server(FAST) for _ in range(2)]
    gone = servers[0]
    try:
        gw = await ready_gateway(make_gateway, *(s.url for s in servers), preset="round-robin")
        gateway = gw.app[gateway_key]
        async with sdk(gw) as client:
            on_gone = None
            for _ in range(2):  # round robin: one of the two lands on the pod that will go
                raw = await client.responses.with_raw_response.create(
                    model="sim-llm", input="hi", max_output_tokens=2
                )
                if raw.headers["x-slogate-endpoint"] == pod_name(gone):
                    on_gone = raw.parse().id
            assert on_gone is not None
            await gone.close()
            await wait_for(
                lambda: gateway.store.health(pod_name(gone), time.monotonic()) is Health.DOWN
            )
            with pytest.raises(openai.NotFoundError) as follow_up:
                await client.responses.create(
                    model="sim-llm", input="more", previous_response_id=on_gone
                )
            with pytest.raises(openai.NotFoundError) as retrieve:
                await client.responses.retrieve(on_gone)
            # An id the gateway never saw is routed as usual: the pod answers its own 404.
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.responses.create(
                    model="sim-llm", input="more", previous_response_id="resp_from_elsewhere"
                )
        error = follow_up.value.body
        assert isinstance(error, dict)
        assert follow_up.value.code == "previous_response_not_found"
        assert error["param"] == "previous_response_id"
        assert pod_name(gone) in error["message"]
        assert retrieve.value.code == "response_not_found"
        assert "resp_from_elsewhere" in unknown.value.message
        assert unknown.value.response.headers["x-slogate-endpoint"] == pod_name(servers[1])
    finally:
        for server in servers[1:]:
            await server.close()


async def test_slogate_serve_answers_every_api(
    pods: dict[str, SimServer], unused_tcp_port: int
) -> None:
    """``slogate serve`` as a user runs it, and the SDK's chat, completions, responses and
    embeddings calls against it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve",
        "--endpoint", pods["base"].url, "--endpoint", pods["lora"].url,
        "--host", "127.0.0.1", "--port", str(unused_tcp_port), "--log-level", "warning",
    )  # fmt: skip
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", api_key="x", max_retries=0
    )
    try:
        for _ in range(200):
            try:
                if ADAPTER in [m.id for m in (await client.models.list()).data]:
                    break
            except openai.APIConnectionError:
                pass
            await asyncio.sleep(0.05)
        chat = await client.chat.completions.create(
            model="sim-llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        completion = await client.completions.create(model="sim-llm", prompt="Hi", max_tokens=3)
        response = await client.responses.create(model=ADAPTER, input="Hi", max_output_tokens=3)
        stream = await client.responses.create(
            model="sim-llm", input="Hi", max_output_tokens=3, stream=True
        )
        kinds = [event.type async for event in stream]
        embeddings = await client.embeddings.create(model="sim-llm", input="Hi")
        assert chat.choices[0].message.content
        assert completion.choices[0].text
        assert response.model == ADAPTER
        assert response.output_text
        assert kinds[-1] == "response.completed"
        assert len(embeddings.data) == 1
    finally:
        await client.close()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
