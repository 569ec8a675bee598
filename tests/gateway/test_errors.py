"""Every error a client can meet is an OpenAI-style body with the right status."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from config import ServerConfig, UpstreamConfig
from gateway.errors import AuthenticationError, RequestTimeoutError, UnreadableBodyError
from loadtest.instant_backend import create_instant_app
from tests.gateway.conftest import (
    MakeGateway,
    Recorder,
    gateway_config,
    server_url,
    wait_for_status,
)


def assert_openai_error(body: Any, code: str) -> dict[str, Any]:
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] == code
    return dict(error)


BAD_REQUESTS = [
    ("/v1/completions", b"{not json", "invalid_json", None),
    ("/v1/completions", b"", "invalid_json", None),
    ("/v1/completions", b"[1, 2]", "invalid_json", None),
    ("/v1/completions", b'{"model": "sim-llm", "prompt": "caf\xe9"}', "invalid_json", None),
    ("/v1/completions", b'{"model": "sim-llm", "prompt": "\\ud800"}', "invalid_json", None),
    ("/v1/completions", b"[" * 5000 + b"]" * 5000, "invalid_json", None),
    ("/v1/completions", b'{"model": "sim-llm", "prompt": "x", "n": 1e400}', "invalid_json", None),
    ("/v1/completions", b'{"model": "sim-llm", "prompt": "x", "n": 1e30}', "invalid_type", "n"),
    ("/v1/completions", b'{"prompt": "hi"}', "missing_required_parameter", "model"),
    ("/v1/completions", b'{"model": 3, "prompt": "hi"}', "invalid_type", "model"),
    ("/v1/completions", b'{"model": "sim-llm"}', "missing_required_parameter", "prompt"),
    ("/v1/completions", b'{"model": "sim-llm", "prompt": {"a": 1}}', "invalid_type", "prompt"),
    ("/v1/completions", b'{"model": "sim-llm", "prompt": [1, "a"]}', "invalid_type", "prompt"),
    (
        "/v1/completions",
        b'{"model": "sim-llm", "prompt": "x", "stream": "yes"}',
        "invalid_type",
        "stream",
    ),
    (
        "/v1/completions",
        b'{"model": "sim-llm", "prompt": "x", "max_tokens": "many"}',
        "invalid_type",
        "max_tokens",
    ),
    (
        "/v1/completions",
        b'{"model": "sim-llm", "prompt": "x", "max_tokens": 0}',
        "invalid_value",
        "max_tokens",
    ),
    (
        "/v1/completions",
        b'{"model": "sim-llm", "prompt": "x", "stream_options": 1}',
        "invalid_type",
        "stream_options",
    ),
    ("/v1/chat/completions", b'{"model": "sim-llm"}', "missing_required_parameter", "messages"),
    ("/v1/chat/completions", b'{"model": "sim-llm", "messages": []}', "invalid_type", "messages"),
    (
        "/v1/chat/completions",
        b'{"model": "sim-llm", "messages": [{"content": "hi"}]}',
        "invalid_type",
        "messages[0].role",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "sim-llm", "messages": [{"role": "user", "content": 5}]}',
        "invalid_type",
        "messages[0].content",
    ),
    ("/v1/completions", b'{"model": "sim-llm", "prompt": "x", "n": 0}', "invalid_value", "n"),
    ("/v1/responses", b'{"model": "sim-llm"}', "missing_required_parameter", "input"),
    (
        "/v1/responses",
        b'{"model": "sim-llm", "input": [{"role": "user", "content": 1}]}',
        "invalid_type",
        "input[0].content",
    ),
    (
        "/v1/responses",
        b'{"model": "sim-llm", "input": "x", "previous_response_id": 1}',
        "invalid_type",
        "previous_response_id",
    ),
    ("/v1/embeddings", b'{"model": "sim-llm", "input": []}', "invalid_type", "input"),
    ("/v1/embeddings", b'{"input": "x"}', "missing_required_parameter", "model"),
    ("/pooling", b'{"model": "sim-llm"}', "missing_required_parameter", "input"),
    ("/classify", b'{"model": "sim-llm", "input": 3}', "invalid_type", "input"),
    ("/v1/score", b'{"model": "sim-llm", "text_1": "q"}', "missing_required_parameter", "text_2"),
    ("/score", b'{"model": "sim-llm", "text_1": 1, "text_2": "a"}', "invalid_type", "text_1"),
    (
        "/v1/rerank",
        b'{"model": "sim-llm", "query": "q"}',
        "missing_required_parameter",
        "documents",
    ),
    (
        "/rerank",
        b'{"model": "sim-llm", "query": "q", "documents": [1]}',
        "invalid_type",
        "documents[0]",
    ),
    (
        "/v2/rerank",
        b'{"model": "sim-llm", "documents": ["a"]}',
        "missing_required_parameter",
        "query",
    ),
]


@pytest.mark.parametrize(
    ("path", "raw", "code", "param"),
    BAD_REQUESTS,
    ids=[f"{p.strip('/').replace('/', '.')}-{c}-{param}" for p, _, c, param in BAD_REQUESTS],
)
async def test_bad_requests_get_400_naming_the_field(
    instant_backend: TestServer,
    make_gateway: MakeGateway,
    recorder: Recorder,
    path: str,
    raw: bytes,
    code: str,
    param: str | None,
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    resp = await gw.post(path, data=raw, headers={"content-type": "application/json"})
    assert resp.status == 400
    error = assert_openai_error(await resp.json(), code)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
        assert param.split("[")[0] in error["message"]
    assert recorder.records == []


async def test_unknown_route_is_404(instant_backend: TestServer, make_gateway: MakeGateway) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    resp = await gw.post("/v1/nope", json={})
    assert resp.status == 404
    assert_openai_error(await resp.json(), "unknown_url")


async def test_wrong_method_is_405(instant_backend: TestServer, make_gateway: MakeGateway) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    resp = await gw.get("/v1/completions")
    assert resp.status == 405
    assert_openai_error(await resp.json(), "method_not_allowed")


async def test_unknown_model_is_404(instant_backend: TestServer, make_gateway: MakeGateway) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    resp = await gw.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert resp.status == 404
    error = assert_openai_error(await resp.json(), "model_not_found")
    assert "gpt-9" in error["message"]


def test_authentication_and_timeout_errors_are_openai_shaped() -> None:
    for exc, status, type_ in (
        (AuthenticationError("no key"), 401, "authentication_error"),
        (RequestTimeoutError("too slow"), 408, "invalid_request_error"),
        (UnreadableBodyError("bad gzip"), 400, "invalid_request_error"),
    ):
        assert exc.status == status
        error = assert_openai_error(orjson.loads(exc.body()), exc.code)
        assert error["type"] == type_
    assert AuthenticationError("no key").headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_body_is_413(
    instant_backend: TestServer, make_gateway: MakeGateway, chunked: bool
) -> None:
    cfg = gateway_config(server_url(instant_backend), server=ServerConfig(max_body_bytes=1000))
    gw = await make_gateway(cfg)
    body = b'{"model": "sim-llm", "prompt": "' + b"x" * 2000 + b'"}'

    async def chunks() -> Any:
        yield body

    resp = await gw.post("/v1/completions", data=chunks() if chunked else body)
    assert resp.status == 413
    assert_openai_error(await resp.json(), "request_too_large")


async def test_no_usable_endpoint_is_503(unused_tcp_port: int, make_gateway: MakeGateway) -> None:
    cfg = gateway_config(f"http://127.0.0.1:{unused_tcp_port}", models=("sim-llm",))
    gw = await make_gateway(cfg, wait_ready=False)
    await wait_for_status(gw, "/ready", 503)
    resp = await gw.post("/v1/completions", json={"model": "sim-llm", "prompt": "x"})
    assert resp.status == 503
    assert_openai_error(await resp.json(), "no_available_endpoint")


async def _start(aiohttp_server: AiohttpServer, handler: Any) -> TestServer:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "sim-llm"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    app.router.add_get("/v1/models", models)
    return await aiohttp_server(app)


async def test_upstream_closing_the_connection_is_502(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response()

    backend = await _start(aiohttp_server, hang_up)
    gw = await make_gateway(gateway_config(server_url(backend)))
    resp = await gw.post("/v1/completions", json={"model": "sim-llm", "prompt": "x"})
    assert resp.status == 502
    assert_openai_error(await resp.json(), "bad_gateway")
    await recorder.ended.wait()
    assert recorder.records[0].outcome.value == "upstream_error"


async def test_upstream_silence_is_504(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    backend = await _start(aiohttp_server, stall)
    cfg = gateway_config(server_url(backend), upstream=UpstreamConfig(read_idle_timeout_s=0.2))
    gw = await make_gateway(cfg)
    resp = await gw.post("/v1/completions", json={"model": "sim-llm", "prompt": "x"})
    assert resp.status == 504
    assert_openai_error(await resp.json(), "upstream_timeout")
    await recorder.ended.wait()
    assert recorder.records[0].outcome.value == "upstream_timeout"


async def test_upstream_error_status_is_relayed(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "too long", "type": "BadRequestError", "code": 400}}, status=400
        )

    backend = await _start(aiohttp_server, refuse)
    gw = await make_gateway(gateway_config(server_url(backend)))
    resp = await gw.post("/v1/completions", json={"model": "sim-llm", "prompt": "x"})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "too long"
    await recorder.ended.wait()
    assert recorder.records[0].status == 400


async def test_connect_failure_falls_back_to_another_endpoint(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    doomed = await aiohttp_server(create_instant_app())
    survivor = await aiohttp_server(create_instant_app())
    cfg = gateway_config(server_url(doomed), server_url(survivor), scrape_interval_ms=60_000)
    gw = await make_gateway(cfg)
    await wait_for_endpoints(gw, 2)
    doomed_name = doomed.make_url("").authority
    await doomed.close()  # dies between scrapes: only a dispatch can find out
    served = []
    for _ in range(2):
        resp = await gw.post("/v1/completions", json={"model": "sim-llm", "prompt": "x"})
        await resp.read()
        served.append((resp.status, resp.headers.get("x-slogate-endpoint")))
    assert served == [(200, survivor.make_url("").authority)] * 2
    failed = [r for r in recorder.records if r.outcome.value == "connect_error"]
    assert [r.endpoint for r in failed] == [doomed_name]
    ready = await (await gw.get("/ready")).json()
    assert ready["endpoints"] == [survivor.make_url("").authority]


async def wait_for_endpoints(gw: Any, count: int) -> None:
    for _ in range(200):
        body = await (await gw.get("/ready")).json()
        if len(body.get("endpoints", [])) == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {count} ready endpoints")
