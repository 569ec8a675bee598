"""Bad input at the edge: limits, undecodable bodies, trickling clients, malformed HTTP.

Each is a 4xx (408 for time) with an OpenAI-style body once a request is parsed, never a 5xx,
and the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from config import ServerConfig
from gateway.deps import Dependencies
from gateway.tokenizer import ByteEstimateTokenizer
from tests.gateway.conftest import MakeGateway, Recorder, gateway_config, server_url
from tests.gateway.edge_support import (
    Seen,
    body_of,
    raw_exchange,
    recording_backend,
    start_gateway,
    status_of,
)
from tests.gateway.test_errors import assert_openai_error

HEALTH = b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
LIMITS = ServerConfig(
    max_prompt_chars=200, max_prompt_tokens=10, max_tokens_limit=1000, max_n=4, max_batch_size=3
)

OVER_LIMITS = [
    ("/v1/completions", {"prompt": "x" * 201}, "prompt_too_long", "prompt"),
    ("/v1/completions", {"prompt": ["x" * 100, "y" * 101]}, "prompt_too_long", "prompt"),
    ("/v1/completions", {"prompt": list(range(11))}, "prompt_too_long", "prompt"),
    ("/v1/completions", {"prompt": [[1] * 6, [2] * 5]}, "prompt_too_long", "prompt"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x" * 200}]},
        "prompt_too_long",
        "messages",
    ),
    ("/v1/responses", {"input": "x" * 300}, "prompt_too_long", "input"),
    ("/v1/embeddings", {"input": "x" * 201}, "prompt_too_long", "input"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1001}, "invalid_value", "max_tokens"),
    (
        "/v1/completions",
        {"prompt": "x", "max_tokens": 2**63 - 1},
        "invalid_value",
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5000},
        "invalid_value",
        "max_completion_tokens",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 5,
            "max_tokens": 2**40,
        },
        "invalid_value",
        "max_tokens",
    ),
    (
        "/v1/responses",
        {"input": "x", "max_output_tokens": 1001},
        "invalid_value",
        "max_output_tokens",
    ),
    ("/v1/completions", {"prompt": "x", "n": 5}, "invalid_value", "n"),
    ("/v1/completions", {"prompt": [""] * 4}, "too_many_prompts", "prompt"),
    ("/v1/embeddings", {"input": [[1], [2], [3], [4]]}, "too_many_prompts", "input"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 4}, "too_many_prompts", "input"),
]


@pytest.mark.parametrize(
    ("path", "fields", "code", "param"),
    OVER_LIMITS,
    ids=[
        f"{p.strip('/').replace('/', '.')}-{param}-{i}"
        for i, (p, _, _, param) in enumerate(OVER_LIMITS)
    ],
)
async def test_requests_over_the_limits_are_400_before_any_work(
    instant_backend: TestServer,
    make_gateway: MakeGateway,
    recorder: Recorder,
    path: str,
    fields: dict[str, Any],
    code: str,
    param: str,
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend), server=LIMITS))
    resp = await gw.post(path, data=orjson.dumps({"model": "sim-llm", **fields}))
    assert resp.status == 400
    error = assert_openai_error(await resp.json(), code)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert recorder.records == []


async def test_requests_at_the_limits_are_served(
    instant_backend: TestServer, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend), server=LIMITS))
    for body in (
        {"prompt": "x" * 190, "max_tokens": 1000, "n": 4},
        {"prompt": list(range(10))},
        {"prompt": "x", "max_tokens": 3},
    ):
        resp = await gw.post("/v1/completions", data=orjson.dumps({"model": "sim-llm", **body}))
        await resp.read()
        assert resp.status == 200, body


async def test_gzip_body_is_decoded_and_forwarded_without_its_encoding(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    seen = Seen()
    backend = await aiohttp_server(recording_backend(seen))
    gw = await make_gateway(gateway_config(server_url(backend)))
    body = orjson.dumps({"model": "sim-llm", "prompt": "hi", "max_tokens": 2})
    resp = await gw.post(
        "/v1/completions", data=gzip.compress(body), headers={"Content-Encoding": "gzip"}
    )
    assert resp.status == 200
    (headers,) = seen.headers("/v1/completions")
    assert "content-encoding" not in headers
    assert int(headers["content-length"]) == len(body)


async def test_undecodable_gzip_body_is_400(
    instant_backend: TestServer, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    resp = await gw.post(
        "/v1/completions", data=b"\x1f\x8bnot gzip at all", headers={"Content-Encoding": "gzip"}
    )
    assert resp.status == 400
    assert_openai_error(await resp.json(), "invalid_body")


# -- a real listener, raw sockets -----------------------------------------------------------
def _request(
    path: str, body: bytes, *, content_length: int | None = None, extra: bytes = b""
) -> bytes:
    length = len(body) if content_length is None else content_length
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def test_a_body_trickling_past_its_timeout_is_408_and_the_connection_closes(
    instant_backend: TestServer, aiohttp_server: AiohttpServer
) -> None:
    cfg = gateway_config(server_url(instant_backend), server=ServerConfig(body_read_timeout_s=0.3))
    gw = await start_gateway(aiohttp_server, cfg)
    assert gw.port is not None
    started = asyncio.get_running_loop().time()
    raw = await raw_exchange(gw.port, _request("/v1/completions", b'{"model":', content_length=100))
    assert 0.25 < asyncio.get_running_loop().time() - started < 3
    assert status_of(raw) == 408
    assert not raw.endswith(b"<still open>")  # closed: the rest of the body is never read
    error = assert_openai_error(orjson.loads(body_of(raw)), "request_timeout")
    assert error["type"] == "invalid_request_error"
    raw = await raw_exchange(gw.port, HEALTH, read_timeout_s=1)
    assert status_of(raw) == 200


async def test_headers_trickling_past_the_keepalive_timeout_are_cut_off(
    instant_backend: TestServer, aiohttp_server: AiohttpServer
) -> None:
    cfg = gateway_config(server_url(instant_backend), server=ServerConfig(keepalive_timeout_s=0.3))
    gw = await start_gateway(aiohttp_server, cfg)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"POST /v1/completions HTTP/1.1\r\n")
    closed_after = None
    for i in range(40):  # one header line every 50 ms, never the blank line
        try:
            writer.write(f"X-Slow-{i}: y\r\n".encode())
            await writer.drain()
        except ConnectionError:
            closed_after = loop.time() - started
            break
        try:
            if await asyncio.wait_for(reader.read(1024), 0.05) == b"":
                closed_after = loop.time() - started
                break
        except TimeoutError:
            pass
    writer.close()
    assert closed_after is not None, "the server kept a trickling client for 2 s"
    assert closed_after < 1.5


async def test_a_lying_content_length_never_makes_a_5xx(
    instant_backend: TestServer, aiohttp_server: AiohttpServer
) -> None:
    cfg = gateway_config(server_url(instant_backend), server=ServerConfig(body_read_timeout_s=0.3))
    gw = await start_gateway(aiohttp_server, cfg)
    assert gw.port is not None
    body = orjson.dumps({"model": "sim-llm", "prompt": "hello"})
    raw = await raw_exchange(gw.port, _request("/v1/completions", body, content_length=10))
    # The rest of the body, arriving with the request, is not HTTP: aiohttp's parser refuses
    # the whole segment with its own plain-text 400 (documented in gateway.listener).
    assert status_of(raw) == 400
    assert not raw.endswith(b"<still open>")
    raw = await raw_exchange(gw.port, _request("/v1/completions", body, content_length=1000))
    assert status_of(raw) == 408  # ...and a body shorter than announced times out


async def test_header_values_that_are_not_utf8_are_400(
    instant_backend: TestServer, aiohttp_server: AiohttpServer
) -> None:
    gw = await start_gateway(aiohttp_server, gateway_config(server_url(instant_backend)))
    assert gw.port is not None
    body = orjson.dumps({"model": "sim-llm", "prompt": "hello"})
    raw = await raw_exchange(
        gw.port,
        _request("/v1/completions", body, extra=b"X-Custom: caf\xe9\r\nConnection: close\r\n"),
        read_timeout_s=1,
    )
    assert status_of(raw) == 400
    error = assert_openai_error(orjson.loads(body_of(raw)), "invalid_header")
    assert error["param"] == "X-Custom"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"b" * 300 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["long-request-line", "long-header", "too-many-headers", "bad-content-length"],
)
async def test_malformed_http_is_400_and_closed(
    instant_backend: TestServer, aiohttp_server: AiohttpServer, request_bytes: bytes
) -> None:
    server = ServerConfig(max_request_line_bytes=256, max_header_bytes=256, max_headers=16)
    gw = await start_gateway(
        aiohttp_server, gateway_config(server_url(instant_backend), server=server)
    )
    assert gw.port is not None
    raw = await raw_exchange(gw.port, request_bytes, read_timeout_s=2)
    assert status_of(raw) == 400
    assert not raw.endswith(b"<still open>")
    raw = await raw_exchange(gw.port, HEALTH, read_timeout_s=1)
    assert status_of(raw) == 200


async def test_a_client_leaving_mid_body_is_not_an_error(
    instant_backend: TestServer, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    assert gw.port is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(_request("/v1/completions", b'{"model": "sim', content_length=500))
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.1)
    resp = await gw.get("/health")
    assert resp.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_tools_nested_deeper_than_can_be_rendered_are_400(
    instant_backend: TestServer, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    tools = b"[" * 300 + b"]" * 300
    body = (
        b'{"model": "sim-llm", "messages": [{"role": "user", "content": "x"}], "tools": ['
        + tools
        + b"]}"
    )
    resp = await gw.post("/v1/chat/completions", data=body)
    assert resp.status == 400
    error = assert_openai_error(await resp.json(), "invalid_value")
    assert error["param"] == "tools"


async def test_the_pod_refusing_is_still_relayed(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    """Limits are the gateway's; below them the pod's own 4xx still reaches the client."""

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "context too long", "code": 400}}, status=400
        )

    app = recording_backend(Seen())
    app.router.add_post("/v1/embeddings", refuse)
    backend = await aiohttp_server(app)
    gw = await make_gateway(gateway_config(server_url(backend)))
    resp = await gw.post("/v1/embeddings", json={"model": "sim-llm", "input": "x" * 100})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "context too long"


class _CountingTokenizer:
    """The byte estimate, counting the characters it was asked to encode."""

    def __init__(self) -> None:
        self.chars = 0

    @property
    def name(self) -> str:
        return "counting"

    def encode(self, text: str) -> list[int]:
        self.chars += len(text)
        return ByteEstimateTokenizer().encode(text)


async def test_an_over_long_prompt_is_refused_before_tokenizing(
    instant_backend: TestServer, aiohttp_server: AiohttpServer
) -> None:
    tokenizer = _CountingTokenizer()
    cfg = gateway_config(server_url(instant_backend), server=LIMITS)
    gw = await start_gateway(aiohttp_server, cfg, deps=Dependencies(tokenizer=tokenizer))
    async with aiohttp.ClientSession(gw.make_url("")) as client:
        body = {"model": "sim-llm", "prompt": "x" * 300_000}  # decoded in a worker thread
        async with client.post("/v1/completions", json=body) as resp:
            assert resp.status == 400
        assert tokenizer.chars == 0
        async with client.post("/v1/completions", json={**body, "prompt": "hi"}) as resp:
            assert resp.status == 200
        assert tokenizer.chars == 2
