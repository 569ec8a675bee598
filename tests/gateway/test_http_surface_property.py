"""Property: whatever arrives over HTTP, the gateway answers 2xx or 4xx, never 5xx; its own
errors are OpenAI-shaped JSON; and it keeps serving.

A real gateway (production listener settings, a client API key, small limits) in front of the
instant backend runs on 127.0.0.1 in a thread of its own; Hypothesis writes raw HTTP/1.1 to it:
generated JSON of every shape (wrong types, huge numbers, deep nesting), bytes that are not
UTF-8, random header sets (SLO and objective headers, Authorization, Content-Encoding, a
``Content-Length`` that lies). Each example uses a fresh connection.

Profiles: ``http-surface`` (200 examples, the default, for ``make test``: a few seconds) and
``http-surface-deep`` (5,000, about a minute: run it with ``--timeout 0``); pick one with
``SLOGATE_HYPOTHESIS_PROFILE``.

Exceptions, by design: an answer the pod itself gave (``x-slogate-endpoint``) is relayed as it
came, so only its status is checked; and what aiohttp's HTTP parser refuses before the app sees
a request (body bytes beyond a too short or absent ``Content-Length``, a ``Content-Encoding`` it
cannot decode or a body that does not decode as it says, sent with the headers) is a plain-text
400 (see :mod:`gateway.listener`).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings, strategies as st

from config import (
    EndpointConfig,
    GatewayConfig,
    PoolConfig,
    SchedulingConfig,
    ServerConfig,
)
from gateway.app import create_app
from gateway.cli import new_event_loop
from gateway.listener import listener_settings
from loadtest.instant_backend import create_instant_app

API_KEY = "sk-property-key"
_COMMON = {
    "deadline": None,
    "database": None,  # no .hypothesis/ directory in the work tree
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("http-surface", max_examples=200, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("http-surface-deep", max_examples=5000, **_COMMON)  # type: ignore[arg-type]
PROFILE = settings.get_profile(os.environ.get("SLOGATE_HYPOTHESIS_PROFILE", "http-surface"))


# -- the gateway under test, in its own thread ---------------------------------------------
@dataclass
class LiveGateway:
    port: int
    errors: list[logging.LogRecord] = field(default_factory=list)
    statuses: set[int] = field(default_factory=set)
    """Every status the property met: the generators must reach more than one kind."""


class _ErrorRecords(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def live_gateway() -> Iterator[LiveGateway]:
    loop = new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-under-test", daemon=True)
    thread.start()
    backend_port, gateway_port = _free_port(), _free_port()
    cfg = GatewayConfig(
        server=ServerConfig(
            host="127.0.0.1",
            port=gateway_port,
            max_body_bytes=64 * 1024,
            body_read_timeout_s=0.3,
            keepalive_timeout_s=5,
            max_prompt_chars=20_000,
            max_tokens_limit=64,
            max_n=4,
        ),
        pool=PoolConfig(endpoints=(EndpointConfig(url=f"http://127.0.0.1:{backend_port}"),)),
        scheduling=SchedulingConfig(preset="round-robin"),
    )
    live = LiveGateway(port=gateway_port)
    handler = _ErrorRecords(live.errors)
    logging.getLogger().addHandler(handler)
    runners: list[web.AppRunner] = []

    async def start() -> None:
        for app, port, kwargs in (
            (create_instant_app(), backend_port, {}),
            (
                create_app(cfg, environ={"SLOGATE_API_KEYS": API_KEY}),
                gateway_port,
                listener_settings(cfg.server),
            ),
        ):
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None, **kwargs)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)

    async def stop() -> None:
        for runner in reversed(runners):
            await runner.cleanup()

    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        _wait_ready(gateway_port)
        yield live
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        logging.getLogger().removeHandler(handler)


def _wait_ready(port: int) -> None:
    for _ in range(250):
        if _exchange(port, b"GET /ready HTTP/1.1\r\nHost: gw\r\n\r\n").status == 200:
            return
        threading.Event().wait(0.02)
    raise AssertionError("the gateway under test never became ready")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _exchange(port: int, data: bytes, *, method: str = "GET") -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Answer(response.status, response.headers, response.read())


# -- what clients send -------------------------------------------------------------------------
def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight (``one_of`` picks evenly)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=25,
)
_small_int = st.integers(min_value=-3, max_value=100) | st.integers(
    min_value=2**31, max_value=2**63 - 1
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "tool"]) | _json,
        "content": _text
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}))
        | _json,
    },
)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["sim-llm", "gpt-none", ""]) | _json,
    "prompt": _text | st.lists(_text, max_size=4) | st.lists(_small_int, max_size=8) | _json,
    "messages": st.lists(_message, max_size=4) | _json,
    "input": _text | st.lists(_message, max_size=3) | _json,
    "instructions": _text | _json,
    "tools": st.lists(_json, max_size=3) | _json,
    "max_tokens": _small_int | _json,
    "max_completion_tokens": _small_int | _json,
    "max_output_tokens": _small_int | _json,
    "n": _small_int | _json,
    "stream": st.booleans() | _json,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}) | _json,
    "previous_response_id": _text | _json,
    "query": _text | _json,
    "documents": st.lists(_text, max_size=3) | _json,
    "text_1": _text | _json,
    "text_2": _text | _json,
}
_STREAMS = {"stream": st.booleans(), "max_tokens": st.integers(min_value=1, max_value=8)}
_VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/completions": st.fixed_dictionaries(
        {"model": st.just("sim-llm"), "prompt": _text}, optional=_STREAMS
    ),
    "/v1/chat/completions": st.fixed_dictionaries(
        {
            "model": st.just("sim-llm"),
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": _text}),
                min_size=1,
                max_size=3,
            ),
        },
        optional=_STREAMS,
    ),
    "/v1/responses": st.fixed_dictionaries({"model": st.just("sim-llm"), "input": _text}),
    "/v1/embeddings": st.fixed_dictionaries({"model": st.just("sim-llm"), "input": _text}),
    "/v1/rerank": st.fixed_dictionaries(
        {
            "model": st.just("sim-llm"),
            "query": _text,
            "documents": st.lists(_text, min_size=1, max_size=3),
        }
    ),
}
"""A request each route accepts, for mutation: most generated requests start from one, so that
they get past parsing and meet the limits, the objectives, the scheduler and the relay."""


@st.composite
def _mutated(draw: st.DrawFn, path: str) -> bytes:
    """A valid request for ``path`` with up to two fields replaced by anything."""
    data = dict(draw(_VALID.get(path, _VALID["/v1/completions"])))
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=2, unique=True)):
        data[name] = draw(_FIELDS[name])
    return orjson.dumps(data)


def _deep(depth: int) -> bytes:
    return b'{"model": "sim-llm", "prompt": ' + b"[" * depth + b"]" * depth + b"}"


def _not_utf8(raw: bytes, at: int, junk: bytes) -> bytes:
    at %= len(raw) + 1
    return raw[:at] + junk + raw[at:]


def _bodies(path: str) -> st.SearchStrategy[bytes]:
    valid = _VALID.get(path, _VALID["/v1/completions"]).map(orjson.dumps)
    return _weighted(
        (4, valid),
        (4, _mutated(path)),
        (1, st.fixed_dictionaries({}, optional=_FIELDS).map(orjson.dumps)),
        (1, _json.map(orjson.dumps)),
        (1, st.binary(max_size=200)),
        (1, st.integers(min_value=1, max_value=3000).map(_deep)),
        (
            1,
            st.builds(
                _not_utf8,
                _mutated(path),
                st.integers(min_value=0),
                st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xfe\xff"]),
            ),
        ),
        (1, st.just(b"")),
    )


_ROUTES = [
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/score",
    "/v1/rerank",
    "/pooling",
    "/classify",
    "/tokenize",
    "/v1/models",
    "/version",
    "/v1/responses/resp_123",
    "/v1/responses/resp_123/cancel",
    "/health",
    "/ready",
    "/metrics",
    "/v1//completions",
    "/v1/completions?x=%ff",
    "http://127.0.0.1:9/v1/completions",
]
_paths = _weighted(
    (6, st.sampled_from(["/v1/completions", "/v1/chat/completions"])),
    (3, st.sampled_from(_ROUTES)),
    (
        1,
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30).map(
            lambda p: "/" + p
        ),
    ),
)
_methods = st.sampled_from(["POST"] * 10 + ["GET", "PUT", "DELETE", "OPTIONS", "HEAD"])
_header_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=30,
).map(lambda v: v.strip().encode("latin-1"))
_number_text = st.sampled_from(
    ["100", "0", "-5", "1e309", "nan", "inf", "-inf", "1e-300", "86400001", " 250 ", "0x10", ""]
) | st.floats().map(repr)
_authorization = _weighted(
    (12, st.just(f"Bearer {API_KEY}".encode())),
    (
        3,
        st.sampled_from(
            [f"bearer {API_KEY}", "Bearer sk-wrong", "Bearer", "", "Basic c2s6eA==", API_KEY]
        ).map(str.encode),
    ),
    (1, st.none()),
    (1, _header_value),
)
"""Mostly the right key, so that requests get past authentication and meet what lies beyond."""
_OPTIONAL_HEADERS: dict[str, st.SearchStrategy[bytes]] = {
    "x-llm-d-slo-ttft-ms": _number_text.map(str.encode) | _header_value,
    "x-llm-d-slo-tpot-ms": _number_text.map(str.encode) | _header_value,
    "x-slo-ttft-ms": _number_text.map(str.encode),
    "x-slo-tpot-ms": _number_text.map(str.encode),
    "x-llm-d-inference-objective": st.sampled_from(
        [b"critical", b"standard", b"sheddable", b"batch", b" critical "]
    )
    | _header_value,
    "x-gateway-inference-objective": _header_value,
    "x-request-id": _header_value,
    "x-slogate-explain": st.sampled_from([b"1", b"true", b"0"]),
    "Content-Type": st.sampled_from([b"application/json", b"text/plain", b""]) | _header_value,
    "Content-Encoding": st.sampled_from([b"gzip", b"deflate", b"br", b"identity", b"zstd"]),
    "Accept-Encoding": st.sampled_from([b"gzip", b"br", b"*"]),
    "Expect": st.just(b"100-continue"),
    "X-Anything": _header_value,
}


@st.composite
def _headers(draw: st.DrawFn) -> dict[str, bytes | None]:
    headers: dict[str, bytes | None] = {"Authorization": draw(_authorization)}
    for name in draw(st.lists(st.sampled_from(sorted(_OPTIONAL_HEADERS)), max_size=3, unique=True)):
        headers[name] = draw(_OPTIONAL_HEADERS[name])
    return headers


_length_lies = st.sampled_from(["exact"] * 12 + ["short", "long", "none"])


@dataclass(frozen=True)
class Sent:
    method: str
    path: str
    headers: dict[str, bytes | None]
    """``None``: the header is not sent."""
    body: bytes
    gzipped: bool
    length: str

    @property
    def refused_by_the_http_parser(self) -> bool:
        """Whether aiohttp's parser, not the app, may answer (a plain-text 400): body bytes
        beyond a too short or absent Content-Length are not HTTP; a Content-Encoding aiohttp
        cannot decode is refused with the headers; a body that does not decode as its
        Content-Encoding says, when it arrives with the headers."""
        undeclared = bool(self.body or self.gzipped) and self.length in ("short", "none")
        encoding = self.headers.get("Content-Encoding", b"identity")
        return undeclared or (encoding != b"identity" and not self.gzipped)

    def wire(self) -> bytes:
        body = gzip.compress(self.body) if self.gzipped else self.body
        headers = {k: v for k, v in self.headers.items() if v is not None}
        if self.gzipped:
            headers["Content-Encoding"] = b"gzip"
        lines = [
            f"{self.method} {self.path} HTTP/1.1".encode(),
            b"Host: gateway",
            b"Connection: close",
        ]
        lines += [name.encode() + b": " + value for name, value in headers.items()]
        declared = {"exact": len(body), "short": max(0, len(body) - 3), "long": len(body) + 50}
        if self.length in declared:
            lines.append(b"Content-Length: %d" % declared[self.length])
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


@st.composite
def _requests(draw: st.DrawFn) -> Sent:
    path = draw(_paths)
    return Sent(
        method=draw(_methods),
        path=path,
        headers=draw(_headers()),
        body=draw(_bodies(path)),
        gzipped=draw(st.sampled_from([False] * 7 + [True])),
        length=draw(_length_lies),
    )


# -- the property --------------------------------------------------------------------------
def _assert_openai_error(answer: Answer) -> None:
    error = orjson.loads(answer.body)["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert isinstance(error["code"], str)
    assert error["param"] is None or isinstance(error["param"], str)


@settings(PROFILE)
@given(sent=_requests())
def test_any_request_gets_a_4xx_or_better_and_openai_errors(
    live_gateway: LiveGateway, sent: Sent
) -> None:
    answer = _exchange(live_gateway.port, sent.wire(), method=sent.method)
    live_gateway.statuses.add(answer.status)
    assert 200 <= answer.status < 500, (answer.status, answer.body[:300])
    if answer.status < 400 or sent.method == "HEAD":
        return
    if "x-slogate-endpoint" in answer.headers:
        return  # the pod's own answer, relayed as it came
    if sent.refused_by_the_http_parser and answer.headers.get_content_type() == "text/plain":
        assert answer.status == 400
        return
    assert answer.headers.get_content_type() == "application/json", answer.body[:300]
    _assert_openai_error(answer)
    if answer.status == 401:
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_the_gateway_still_serves_after_the_onslaught(live_gateway: LiveGateway) -> None:
    """Runs after the property (file order): nothing broke, nothing unexpected was logged."""
    assert _exchange(live_gateway.port, b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n").status == 200
    body = orjson.dumps({"model": "sim-llm", "prompt": "still here", "max_tokens": 3})
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = _exchange(live_gateway.port, request, method="POST")
    assert answer.status == 200
    assert [r.getMessage() for r in live_gateway.errors] == []
    assert {200, 400, 401, 404} <= live_gateway.statuses
