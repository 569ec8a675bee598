"""Requests through the gateway reach the backend and come back byte for byte, measured."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from loadtest.instant_backend import create_instant_app
from tests.gateway.conftest import MakeGateway, Recorder, gateway_config, server_url

CHAT = {
    "model": "sim-llm",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 5,
}
COMPLETION = {"model": "sim-llm", "prompt": "Once upon a time", "max_tokens": 7}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        (
            "/v1/chat/completions",
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        ),
        ("/v1/completions", {**COMPLETION, "stream": True}),
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION),
    ],
    ids=["chat-stream", "chat-stream-usage", "completions-stream", "chat", "completions"],
)
async def test_response_bytes_are_relayed_unchanged(
    instant_backend: TestServer, make_gateway: MakeGateway, path: str, body: dict[str, object]
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    async with aiohttp.ClientSession() as session:
        direct = await session.post(instant_backend.make_url(path), json=body)
        direct_bytes = await direct.read()
    via = await gw.post(path, json=body)
    assert via.status == 200
    assert await via.read() == direct_bytes
    assert via.headers["x-slogate-endpoint"] == instant_backend.make_url("").authority
    assert via.headers["x-request-id"]
    assert via.content_type == direct.content_type


async def test_request_body_is_forwarded_unchanged(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    seen: list[tuple[bytes, str | None]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers.get("x-request-id")))
        return web.json_response({"choices": [{"text": "ok"}]})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "sim-llm"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", echo)
    app.router.add_get("/v1/models", models)
    backend = await aiohttp_server(app)
    gw = await make_gateway(gateway_config(server_url(backend)))
    raw = b'{"model":"sim-llm",  "prompt":"keep   my spacing", "extra_field": [1, 2]}'
    resp = await gw.post(
        "/v1/completions",
        data=raw,
        headers={"content-type": "application/json", "x-request-id": "client-id-7"},
    )
    assert resp.status == 200
    assert seen == [(raw, "client-id-7")]
    assert resp.headers["x-request-id"] == "client-id-7"


async def test_stream_records_ttft_tpot_and_tokens(
    instant_backend: TestServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    body = {**CHAT, "max_tokens": 9, "stream": True, "stream_options": {"include_usage": True}}
    resp = await gw.post("/v1/chat/completions", json=body)
    await resp.read()
    await recorder.ended.wait()
    (record,) = recorder.records
    assert record.outcome.value == "success"
    assert record.status == 200
    assert record.stream is True
    assert record.completion_tokens == 9
    assert record.ttft_s is not None
    assert record.ttft_s >= 0
    assert record.tpot_s is not None
    assert record.tpot_s >= 0
    assert record.prompt_tokens > 0
    assert record.endpoint == instant_backend.make_url("").authority
    assert [endpoint for _, endpoint in recorder.first_tokens] == [record.endpoint]


async def test_stream_without_usage_counts_token_events(
    instant_backend: TestServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    resp = await gw.post("/v1/completions", json={**COMPLETION, "max_tokens": 4, "stream": True})
    await resp.read()
    await recorder.ended.wait()
    assert recorder.records[0].completion_tokens == 4


async def test_non_stream_records_e2e_and_usage(
    instant_backend: TestServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    resp = await gw.post("/v1/chat/completions", json={**CHAT, "max_tokens": 6})
    assert orjson.loads(await resp.read())["usage"]["completion_tokens"] == 6
    await recorder.ended.wait()
    (record,) = recorder.records
    assert record.ttft_s is None
    assert record.completion_tokens == 6
    assert record.e2e_s >= 0


async def test_round_robin_spreads_requests(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    backends = [await aiohttp_server(create_instant_app()) for _ in range(3)]
    gw = await make_gateway(gateway_config(*(server_url(b) for b in backends)))
    seen = []
    for _ in range(6):
        resp = await gw.post("/v1/completions", json=COMPLETION)
        await resp.read()
        seen.append(resp.headers["x-slogate-endpoint"])
    assert sorted(set(seen)) == sorted(b.make_url("").authority for b in backends)
    assert all(seen.count(name) == 2 for name in set(seen))


async def test_models_health_and_ready(
    instant_backend: TestServer, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    models = await (await gw.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["sim-llm"]
    assert (await gw.get("/health")).status == 200
    ready = await gw.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["endpoints"] == [instant_backend.make_url("").authority]
