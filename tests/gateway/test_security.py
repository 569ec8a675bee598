"""Security at the edge: client API keys, the /metrics token, what pods are told, where the
gateway connects, request ids, and what never reaches the logs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from config import ConfigError, GatewayConfig, ServerConfig, UpstreamConfig, from_yaml
from gateway.app import create_app
from gateway.auth import API_KEYS_ENV, BearerTokens, bearer_token
from tests.gateway.conftest import gateway_config, server_url
from tests.gateway.edge_support import (
    Seen,
    raw_exchange,
    recording_backend,
    start_gateway,
    status_of,
)
from tests.gateway.test_errors import assert_openai_error

PROMPT = "the-secret-prompt-7c1e"
FILE_KEY = "sk-file-key-0001"
ENV_KEY = "sk-env-key-0002"
COMPLETION = {"model": "sim-llm", "prompt": PROMPT, "max_tokens": 2}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"# client keys\n\n{FILE_KEY}\n  # rotated out: sk-old\n")
    return path


@pytest.fixture
async def backend(aiohttp_server: AiohttpServer) -> tuple[TestServer, Seen]:
    seen = Seen()
    return await aiohttp_server(recording_backend(seen)), seen


async def _with_keys(
    aiohttp_server: AiohttpServer, backend: TestServer, keys_file: Path, **server: object
) -> TestServer:
    cfg = gateway_config(
        server_url(backend),
        server=ServerConfig(api_keys_file=str(keys_file), **server),  # type: ignore[arg-type]
    )
    return await start_gateway(aiohttp_server, cfg, environ={API_KEYS_ENV: f" {ENV_KEY} ,"})


# -- client API keys ------------------------------------------------------------------------
async def test_api_keys_guard_every_route_but_the_probes(
    aiohttp_server: AiohttpServer, backend: tuple[TestServer, Seen], keys_file: Path
) -> None:
    gw = await _with_keys(aiohttp_server, backend[0], keys_file)
    async with aiohttp.ClientSession(gw.make_url("")) as client:
        for method, path in (
            ("POST", "/v1/completions"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/embeddings"),
            ("GET", "/v1/models"),
            ("GET", "/version"),
            ("POST", "/tokenize"),
            ("GET", "/v1/responses/resp_1"),
            ("GET", "/no/such/route"),
        ):
            for headers in ({}, _bearer("sk-wrong"), {"Authorization": FILE_KEY}):
                async with client.request(method, path, json=COMPLETION, headers=headers) as r:
                    assert r.status == 401, (method, path, headers)
                    assert r.headers["WWW-Authenticate"] == "Bearer"
                    error = assert_openai_error(await r.json(), "invalid_api_key")
                    assert error["type"] == "authentication_error"
                    assert FILE_KEY not in error["message"]
        for key in (FILE_KEY, ENV_KEY):
            async with client.post("/v1/completions", json=COMPLETION, headers=_bearer(key)) as r:
                assert r.status == 200
            async with client.get("/v1/models", headers={"authorization": f"bearer {key}"}) as r:
                assert r.status == 200
        for path in ("/health", "/ready", "/metrics"):
            async with client.get(path) as r:
                assert r.status == 200, path
    assert len(backend[1].headers("/v1/completions")) == 2  # the refused never reached a pod


async def test_the_metrics_token_guards_metrics_alone(
    aiohttp_server: AiohttpServer, backend: tuple[TestServer, Seen], tmp_path: Path
) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text("# scrape token\nmetrics-token-9\n")
    cfg = gateway_config(
        server_url(backend[0]), server=ServerConfig(metrics_token_file=str(token_file))
    )
    gw = await start_gateway(aiohttp_server, cfg)
    async with aiohttp.ClientSession(gw.make_url("")) as client:
        async with client.get("/metrics") as r:
            assert r.status == 401
            assert_openai_error(await r.json(), "invalid_metrics_token")
        async with client.get("/metrics", headers=_bearer("metrics-token-9")) as r:
            assert r.status == 200
            assert b"slogate_http_requests_total" in await r.read()
        async with client.post("/v1/completions", json=COMPLETION) as r:
            assert r.status == 200  # no client keys configured: inference stays open


def test_bearer_tokens_compare_whole_tokens() -> None:
    tokens = BearerTokens(["sk-a", "sk-b", ""])
    assert len(tokens) == 2
    assert tokens.accepts("Bearer sk-a")
    assert tokens.accepts("bearer   sk-b ")
    for value in (
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic sk-a",
        "sk-a",
        "Bearer sk-a2",
        "Bearer sk-",
    ):
        assert not tokens.accepts(value), value
    assert not tokens.accepts("Bearer caf\udce9")  # undecodable header bytes: refused, no crash
    assert not BearerTokens([])
    assert bearer_token("Bearer x y") == "x y"


# -- what the pods are told -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        (UpstreamConfig(), None),
        (UpstreamConfig(forward_authorization=True), f"Bearer {FILE_KEY}"),
        (UpstreamConfig(authorization="pod-token-3"), "Bearer pod-token-3"),
    ],
    ids=["stripped", "forwarded", "pod-token"],
)
async def test_the_client_authorization_reaches_pods_only_when_configured(
    aiohttp_server: AiohttpServer,
    backend: tuple[TestServer, Seen],
    keys_file: Path,
    upstream: UpstreamConfig,
    expected: str | None,
) -> None:
    server, seen = backend
    cfg = gateway_config(
        server_url(server), server=ServerConfig(api_keys_file=str(keys_file)), upstream=upstream
    )
    gw = await start_gateway(aiohttp_server, cfg)
    async with aiohttp.ClientSession(gw.make_url(""), headers=_bearer(FILE_KEY)) as client:
        async with client.post("/v1/completions", json=COMPLETION) as r:
            assert r.status == 200
        async with client.get("/version") as r:
            assert r.status == 200
    for path in ("/v1/completions", "/version"):
        (headers,) = seen.headers(path)
        assert headers.get("Authorization") == expected, path
    if upstream.authorization:  # the scraper and model discovery present the pod token too
        for path in ("/metrics", "/v1/models"):
            assert seen.headers(path)
            assert {h.get("Authorization") for h in seen.headers(path)} == {expected}


async def test_hop_by_hop_headers_are_not_forwarded(
    aiohttp_server: AiohttpServer, backend: tuple[TestServer, Seen]
) -> None:
    server, seen = backend
    gw = await start_gateway(aiohttp_server, gateway_config(server_url(server)))
    hop_by_hop = {
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "X-Kept": "yes",
    }
    async with (
        aiohttp.ClientSession(gw.make_url("")) as client,
        client.post("/v1/completions", json=COMPLETION, headers=hop_by_hop) as r,
    ):
        assert r.status == 200
    (headers,) = seen.headers("/v1/completions")
    assert headers["X-Kept"] == "yes"
    for name in ("Keep-Alive", "Proxy-Authorization", "TE", "Trailer"):
        assert name not in headers


async def test_no_request_target_points_the_gateway_elsewhere(
    aiohttp_server: AiohttpServer, backend: tuple[TestServer, Seen]
) -> None:
    elsewhere = Seen()
    decoy = await aiohttp_server(recording_backend(elsewhere))
    server, seen = backend
    gw = await start_gateway(aiohttp_server, gateway_config(server_url(server)))
    assert gw.port is not None
    decoy_url = server_url(decoy)
    for target, host in (
        (f"{decoy_url}/version", "gw"),
        ("/version", decoy.make_url("").authority),
        (f"/version?next={decoy_url}", "gw"),
        (f"{decoy_url}/v1/models", "gw"),
    ):
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        raw = await raw_exchange(gw.port, request.encode())
        assert status_of(raw) == 200, (target, raw[:200])
    assert elsewhere.requests == []
    assert [p for _, p, _ in seen.requests if p == "/version"] == ["/version"] * 3


async def test_request_ids_travel_to_the_pod_and_back(
    aiohttp_server: AiohttpServer, backend: tuple[TestServer, Seen]
) -> None:
    server, seen = backend
    gw = await start_gateway(aiohttp_server, gateway_config(server_url(server)))
    async with aiohttp.ClientSession(gw.make_url("")) as client:
        for path, body in (("/v1/completions", COMPLETION), ("/tokenize", {"model": "sim-llm"})):
            async with client.post(path, json=body, headers={"X-Request-Id": "req-42"}) as r:
                await r.read()
                assert r.headers["x-request-id"] == "req-42", path
            assert seen.headers(path)[-1]["x-request-id"] == "req-42"
        async with client.post("/v1/completions", json=COMPLETION) as r:
            assert r.status == 200
            generated = r.headers["x-request-id"]
        assert generated
        assert seen.headers("/v1/completions")[-1]["x-request-id"] == generated
        async with client.post(
            "/v1/completions", data=b"{", headers={"X-Request-Id": "req-43"}
        ) as r:
            assert r.status == 400  # the gateway's own error carries the client's id too
            assert r.headers["x-request-id"] == "req-43"


# -- logs -----------------------------------------------------------------------------------
async def test_no_prompt_or_key_in_the_logs_at_info(
    aiohttp_server: AiohttpServer,
    backend: tuple[TestServer, Seen],
    keys_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gw = await _with_keys(aiohttp_server, backend[0], keys_file, body_read_timeout_s=0.2)
    assert gw.port is not None
    async with aiohttp.ClientSession(gw.make_url("")) as client:
        for key in (FILE_KEY, ENV_KEY, "sk-wrong-key-0003"):
            for body in (
                orjson.dumps(COMPLETION),
                orjson.dumps({**COMPLETION, "stream": True}),
                orjson.dumps({**COMPLETION, "model": "gpt-none"}),
                orjson.dumps({**COMPLETION, "max_tokens": PROMPT}),
                b'{"model": "sim-llm", "prompt": "' + PROMPT.encode() + b'"',
            ):
                async with client.post("/v1/completions", data=body, headers=_bearer(key)) as r:
                    await r.read()
                    assert r.status < 500
    body = orjson.dumps(COMPLETION)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {FILE_KEY}\r\n"
    for data in (  # malformed framing: aiohttp's parser quotes the bytes it chokes on
        f"{head}Content-Length: 10\r\n\r\n".encode() + body,
        f"{head}Content-Length: 500\r\n\r\n".encode() + body,
        f"{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode() + body,
        f"{head}Content-Length: 12{PROMPT}\r\n\r\n".encode() + body,
        f"{head}X-Prompt: {PROMPT}".encode() + b"y" * 9000 + b"\r\n\r\n",
    ):
        raw = await raw_exchange(gw.port, data, read_timeout_s=1)
        assert 400 <= status_of(raw) < 500
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert caplog.records  # the requests were logged, just not their secrets
    for secret in (PROMPT, FILE_KEY, ENV_KEY, "sk-wrong-key-0003"):
        assert secret not in logged
    assert any(r.getMessage() == "http.malformed_request" for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- configuration --------------------------------------------------------------------------
def test_new_keys_load_and_are_validated() -> None:
    cfg = from_yaml(
        """
server:
  body_read_timeout_s: 5
  max_prompt_chars: 1000
  max_tokens_limit: 4096
  metrics_token: metrics-secret-5
upstream:
  authorization: pod-secret-6
  tls_verify: false
"""
    )
    assert cfg.server.body_read_timeout_s == 5.0
    assert cfg.upstream.tls_verify is False
    assert cfg.upstream.authorization == "pod-secret-6"
    assert "secret" not in repr(cfg)  # a logged config shows no token
    for text, path in (
        ("server: {max_n: 0}", "server.max_n"),
        ("server: {body_read_timeout_s: -1}", "server.body_read_timeout_s"),
        ("upstream: {forward_authorization: 1}", "upstream.forward_authorization"),
    ):
        with pytest.raises(ConfigError) as info:
            from_yaml(text)
        assert info.value.path == path


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"server": {"api_keys_file": "/nonexistent/keys"}}, "server.api_keys_file"),
        ({"server": {"api_keys_file": "EMPTY"}}, "server.api_keys_file"),
        (
            {"server": {"metrics_token": "a", "metrics_token_file": "EMPTY"}},
            "server.metrics_token_file",
        ),
        ({"server": {"metrics_token_file": "EMPTY"}}, "server.metrics_token_file"),
        ({"server": {"metrics_token": " padded "}}, "server.metrics_token"),
        (
            {"upstream": {"authorization": "t", "forward_authorization": True}},
            "upstream.forward_authorization",
        ),
        ({"upstream": {"tls_ca_file": "EMPTY"}}, "upstream.tls_ca_file"),
    ],
)
def test_bad_security_settings_fail_at_start_naming_the_key(
    tmp_path: Path, change: dict[str, dict[str, object]], path: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n")
    sections = {
        name: {k: str(empty) if v == "EMPTY" else v for k, v in values.items()}
        for name, values in change.items()
    }
    base = gateway_config("http://127.0.0.1:9")
    cfg = dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, **sections.get("server", {})),  # type: ignore[arg-type]
        upstream=dataclasses.replace(base.upstream, **sections.get("upstream", {})),  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError) as info:
        create_app(cfg, environ={})
    assert info.value.path == path
    assert " padded " not in str(info.value)  # secrets are never echoed


async def test_keys_from_the_environment_alone_turn_authentication_on(
    aiohttp_server: AiohttpServer, backend: tuple[TestServer, Seen]
) -> None:
    cfg: GatewayConfig = gateway_config(server_url(backend[0]))
    gw = await start_gateway(aiohttp_server, cfg, environ={API_KEYS_ENV: ENV_KEY})
    async with aiohttp.ClientSession(gw.make_url("")) as client:
        async with client.post("/v1/completions", json=COMPLETION) as r:
            assert r.status == 401
        async with client.post("/v1/completions", json=COMPLETION, headers=_bearer(ENV_KEY)) as r:
            assert r.status == 200


async def test_unauthenticated_bodies_are_not_read(
    aiohttp_server: AiohttpServer, backend: tuple[TestServer, Seen], keys_file: Path
) -> None:
    """A refused client cannot make the gateway wait for (or buffer) its body."""
    gw = await _with_keys(aiohttp_server, backend[0], keys_file, body_read_timeout_s=30)
    assert gw.port is not None
    request = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n{"
    raw = await raw_exchange(gw.port, request, read_timeout_s=0.5)
    assert status_of(raw) == 401
