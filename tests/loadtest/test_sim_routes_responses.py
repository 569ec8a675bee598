"""``/v1/responses`` on a real sim server: the response object, the event stream, the store,
``previous_response_id``, errors, and that every token comes from the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, ClientSession
from prometheus_client.parser import text_string_to_metric_families

from gateway.tokenizer import load_tokenizer, render_chat
from loadtest.sim import SimConfig, SimServer, start_sim_server

MODEL = "sim-llm"
TOKENIZER = load_tokenizer()
# Long enough that a follow-up turn has whole KV blocks of it to reuse.
LONG_INPUT = " ".join(f"fact{i}" for i in range(120))


@dataclass
class Sim:
    server: SimServer
    http: ClientSession

    def post(self, path: str, body: object) -> Any:
        return self.http.post(self.server.url + path, json=body)

    def get(self, path: str) -> Any:
        return self.http.get(self.server.url + path)


@pytest.fixture(params=["vllm", "slots"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    server = await start_sim_server(
        SimConfig(engine=request.param, time_scale=1000.0), tokenizer=TOKENIZER
    )
    try:
        async with ClientSession() as http:
            yield Sim(server, http)
    finally:
        await server.close()


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return len(TOKENIZER.encode(render_chat(messages)))


async def read_events(response: ClientResponse) -> list[dict[str, Any]]:
    """The events of a Responses stream, checking the ``event:`` line matches each type."""
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    raw = await response.read()
    assert raw.endswith(b"\n\n")
    events = []
    for frame in raw.split(b"\n\n")[:-1]:
        event_line, data_line = frame.split(b"\n")
        assert data_line.startswith(b"data: ")
        event = orjson.loads(data_line[len(b"data: ") :])
        assert event_line == b"event: " + event["type"].encode()
        events.append(event)
    return events


async def scrape(sim: Sim) -> dict[str, float]:
    text = await (await sim.get("/metrics")).text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "le" not in sample.labels and "finished_reason" not in sample.labels
    }


async def test_a_string_input_gets_a_completed_response_object(sim: Sim) -> None:
    body = {"model": MODEL, "input": "Say hi.", "max_output_tokens": 7, "ignore_eos": True}
    response = await sim.post("/v1/responses", body)
    assert response.status == 200
    obj = await response.json()
    assert obj["id"].startswith("resp_")
    assert obj["object"] == "response"
    assert obj["status"] == "completed"
    assert obj["model"] == MODEL
    assert obj["max_output_tokens"] == 7
    assert obj["previous_response_id"] is None
    (message,) = obj["output"]
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["status"] == "completed"
    assert message["id"].startswith("msg_")
    (part,) = message["content"]
    assert part["type"] == "output_text"
    assert part["annotations"] == []
    assert len(TOKENIZER.encode(part["text"])) == 7
    usage = obj["usage"]
    assert usage["input_tokens"] == prompt_tokens([{"role": "user", "content": "Say hi."}])
    assert usage["output_tokens"] == 7
    assert usage["total_tokens"] == usage["input_tokens"] + 7
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}


async def test_instructions_and_content_parts_count_as_prompt(sim: Sim) -> None:
    body = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]},
            {"type": "message", "role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        "instructions": "Answer with a number.",
        "max_output_tokens": 2,
    }
    obj = await (await sim.post("/v1/responses", body)).json()
    expected = prompt_tokens(
        [
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ]
    )
    assert obj["usage"]["input_tokens"] == expected
    assert obj["instructions"] == "Answer with a number."
    assert obj["usage"]["output_tokens"] <= 2


async def test_the_stream_is_the_openai_event_sequence_with_one_delta_per_token(sim: Sim) -> None:
    body = {"input": "Count.", "max_output_tokens": 6, "ignore_eos": True, "stream": True}
    events = await read_events(await sim.post("/v1/responses", body))
    types = [event["type"] for event in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 6,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    created, in_progress = events[0]["response"], events[1]["response"]
    assert created["status"] == in_progress["status"] == "in_progress"
    assert created["output"] == []
    assert created["usage"] is None
    item = events[2]["item"]
    assert (item["type"], item["role"], item["status"], item["content"]) == (
        "message",
        "assistant",
        "in_progress",
        [],
    )
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    assert {(d["item_id"], d["output_index"], d["content_index"]) for d in deltas} == {
        (item["id"], 0, 0)
    }
    assert all(len(TOKENIZER.encode(d["delta"])) == 1 for d in deltas)
    text = "".join(d["delta"] for d in deltas)
    assert events[-4]["text"] == text
    assert events[-3]["part"]["text"] == text
    assert events[-2]["item"]["content"][0]["text"] == text
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["id"] == created["id"]
    assert completed["output"][0]["content"][0]["text"] == text
    assert completed["usage"]["output_tokens"] == 6
    assert completed["usage"]["input_tokens"] == prompt_tokens(
        [{"role": "user", "content": "Count."}]
    )


async def test_response_tokens_are_served_by_the_engine(sim: Sim) -> None:
    """Each delta is one engine token: the pod's metrics count the response like a chat."""
    body = {"input": "Go.", "max_output_tokens": 5, "ignore_eos": True, "stream": True}
    events = await read_events(await sim.post("/v1/responses", body))
    usage = events[-1]["response"]["usage"]
    values = await scrape(sim)
    assert values["vllm:generation_tokens_total"] == 5
    assert values["vllm:prompt_tokens_total"] == usage["input_tokens"]
    assert values["vllm:time_to_first_token_seconds_count"] == 1
    assert values["vllm:inter_token_latency_seconds_count"] == 4
    assert values["vllm:e2e_request_latency_seconds_count"] == 1


async def test_a_stored_response_is_retrievable_and_unknown_ids_are_404(sim: Sim) -> None:
    posted = await (
        await sim.post("/v1/responses", {"input": "Keep me.", "max_output_tokens": 3})
    ).json()
    fetched = await sim.get(f"/v1/responses/{posted['id']}")
    assert fetched.status == 200
    assert await fetched.json() == posted
    missing = await sim.get("/v1/responses/resp_unknown")
    assert missing.status == 404
    error = (await missing.json())["error"]
    assert error["code"] == 404
    assert error["type"] == "invalid_request_error"
    assert "resp_unknown" in error["message"]
    unstored = await (
        await sim.post("/v1/responses", {"input": "Forget me.", "store": False})
    ).json()
    assert (await sim.get(f"/v1/responses/{unstored['id']}")).status == 404


async def test_a_streamed_response_is_stored_too(sim: Sim) -> None:
    body = {"input": "Stream me.", "max_output_tokens": 2, "stream": True}
    events = await read_events(await sim.post("/v1/responses", body))
    completed = events[-1]["response"]
    assert await (await sim.get(f"/v1/responses/{completed['id']}")).json() == completed


async def test_previous_response_id_continues_the_conversation_from_the_cache(sim: Sim) -> None:
    first = await (
        await sim.post("/v1/responses", {"input": LONG_INPUT, "max_output_tokens": 4})
    ).json()
    follow_up = {"input": "And then?", "previous_response_id": first["id"], "max_output_tokens": 3}
    second = await (await sim.post("/v1/responses", follow_up)).json()
    assert second["previous_response_id"] == first["id"]
    history = [
        {"role": "user", "content": LONG_INPUT},
        {"role": "assistant", "content": first["output"][0]["content"][0]["text"]},
        {"role": "user", "content": "And then?"},
    ]
    assert second["usage"]["input_tokens"] == prompt_tokens(history)
    # The first turn's prompt blocks are still in the pod's prefix cache.
    cached = second["usage"]["input_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["input_tokens"] - 32
    assert cached > 0
    assert cached % 16 == 0


async def test_an_unknown_previous_response_id_is_vllms_404(sim: Sim) -> None:
    body = {"input": "Hi", "previous_response_id": "resp_gone"}
    response = await sim.post("/v1/responses", body)
    assert response.status == 404
    error = (await response.json())["error"]
    assert error == {
        "message": "Response with id 'resp_gone' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": 404,
    }


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "input"),
        ({"input": 5}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": [{"content": "no role"}]}, 400, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, 400, "input"),
        ({"input": [{"role": "user", "content": 7}]}, 400, "input"),
        ({"input": [{"type": "function_call", "role": "user", "content": "x"}]}, 400, "input"),
        ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"input": "x", "stream": "yes"}, 400, "stream"),
        ({"input": "x", "instructions": 3}, 400, "instructions"),
        ({"input": "x", "temperature": "hot"}, 400, "temperature"),
        ({"input": "x", "background": True}, 400, "background"),
        ({"input": "x", "model": "other"}, 404, "model"),
    ],
    ids=[
        "no-input",
        "input-number",
        "input-empty",
        "no-role",
        "text-part-without-text",
        "content-number",
        "function-call-item",
        "max-output-zero",
        "stream-string",
        "instructions-number",
        "temperature-string",
        "background",
        "unknown-model",
    ],
)
async def test_bad_requests_get_openai_errors(
    sim: Sim, body: dict[str, Any], status: int, param: str
) -> None:
    response = await sim.post("/v1/responses", body)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["param"] == param
    assert error["code"] == status
    assert error["message"]


async def test_invalid_json_is_a_400() -> None:
    server = await start_sim_server(SimConfig(time_scale=1000.0), tokenizer=TOKENIZER)
    try:
        async with ClientSession() as http:
            response = await http.post(server.url + "/v1/responses", data=b"{not json")
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "BadRequestError"
    finally:
        await server.close()


async def test_a_prompt_over_the_context_is_rejected() -> None:
    config = SimConfig(time_scale=1000.0, max_model_len=64, kv_blocks=64)
    server = await start_sim_server(config, tokenizer=TOKENIZER)
    try:
        async with ClientSession() as http:
            url = server.url + "/v1/responses"
            too_long = await http.post(url, json={"input": LONG_INPUT})
            assert too_long.status == 400
            error = (await too_long.json())["error"]
            assert error["type"] == "invalid_request_error"
            assert "max_model_len 64" in error["message"]
            over = await http.post(url, json={"input": "hi", "max_output_tokens": 60})
            assert over.status == 400
            assert (await over.json())["error"]["param"] == "max_output_tokens"
    finally:
        await server.close()


async def test_a_client_leaving_mid_stream_aborts_the_response() -> None:
    server = await start_sim_server(SimConfig(time_scale=1.0), tokenizer=TOKENIZER)
    try:
        async with ClientSession() as http:
            body = {
                "input": "Talk.",
                "max_output_tokens": 20000,
                "ignore_eos": True,
                "stream": True,
            }
            response = await http.post(server.url + "/v1/responses", json=body)
            await response.content.readuntil(b"response.output_text.delta")
            response.close()
            samples: dict[tuple[str, str | None], float] = {}
            for _ in range(500):
                text = await (await http.get(server.url + "/metrics")).text()
                samples = {
                    (sample.name, sample.labels.get("finished_reason")): sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                }
                if (
                    samples[("vllm:request_success_total", "abort")] == 1
                    and samples[("vllm:num_requests_running", None)] == 0
                ):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"the response was never aborted: {samples}")
    finally:
        await server.close()
