"""TLS: the listener's certificate (reloaded when its files change) and verified TLS to pods.

Certificates come from a throwaway CA made in the test (``trustme``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from config import ConfigError, ServerConfig, UpstreamConfig
from gateway.app import create_app
from gateway.auth import API_KEYS_ENV
from gateway.listener import listener_settings
from gateway.tls import CertificateReloader
from loadtest.instant_backend import create_instant_app
from tests.gateway.conftest import gateway_config, server_url
from tests.gateway.edge_support import start_gateway, wait_ready_at

COMPLETION = {"model": "sim-llm", "prompt": "hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _write_pair(cert: trustme.LeafCert, directory: Path) -> tuple[Path, Path]:
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return cert_file, key_file


def _client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def _served_cert(port: int, client: ssl.SSLContext) -> bytes:
    """The DER certificate a new connection to ``port`` is shown."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert isinstance(der, bytes)
        return der
    finally:
        writer.close()


def _der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


async def test_the_listener_serves_https_and_picks_up_a_renewed_certificate(
    ca: trustme.CA,
    instant_backend: TestServer,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    first, renewed = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    cert_file, key_file = _write_pair(first, tmp_path)
    server = ServerConfig(
        tls_cert_file=str(cert_file), tls_key_file=str(key_file), tls_reload_interval_s=0.05
    )
    cfg = gateway_config(server_url(instant_backend), server=server)
    tls = CertificateReloader.from_config(cfg.server)
    assert tls is not None
    app = create_app(cfg, environ={})
    app.cleanup_ctx.append(tls.ctx)
    gw = await aiohttp_server(app, ssl=tls.context, **listener_settings(cfg.server))
    assert gw.port is not None
    client = _client_ssl(ca)
    await wait_ready_at(str(gw.make_url("/ready")), ssl_context=client)
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.make_url("/v1/completions"), json=COMPLETION, ssl=client) as resp,
    ):
        assert resp.status == 200
    assert await _served_cert(gw.port, client) == _der(first)

    # A key that does not match: refused, the old certificate stays, one warning.
    other = ca.issue_cert("127.0.0.1")
    key_file.write_bytes(other.private_key_pem.bytes())

    def warnings() -> int:
        return sum(r.getMessage() == "tls.reload_failed" for r in caplog.records)

    for _ in range(100):
        if warnings():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # a few more rounds of the watcher: still one warning
    assert warnings() == 1
    assert await _served_cert(gw.port, client) == _der(first)

    _write_pair(renewed, tmp_path)
    for _ in range(100):
        if await _served_cert(gw.port, client) == _der(renewed):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the renewed certificate was never served")
    assert any(r.getMessage() == "tls.certificate_reloaded" for r in caplog.records)


def test_tls_settings_fail_at_start_naming_the_key(ca: trustme.CA, tmp_path: Path) -> None:
    cert_file, key_file = _write_pair(ca.issue_cert("127.0.0.1"), tmp_path)
    assert CertificateReloader.from_config(ServerConfig()) is None
    for server, path in (
        (ServerConfig(tls_cert_file=str(cert_file)), "server.tls_key_file"),
        (ServerConfig(tls_key_file=str(key_file)), "server.tls_cert_file"),
        (
            ServerConfig(tls_cert_file=str(tmp_path / "missing"), tls_key_file=str(key_file)),
            "server.tls_cert_file",
        ),
        (
            ServerConfig(tls_cert_file=str(key_file), tls_key_file=str(cert_file)),
            "server.tls_cert_file",
        ),
    ):
        with pytest.raises(ConfigError) as info:
            CertificateReloader.from_config(server)
        assert info.value.path == path


@pytest.fixture
async def tls_backend(ca: trustme.CA, aiohttp_server: AiohttpServer) -> TestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return await aiohttp_server(create_instant_app(), ssl=context)


async def test_pods_over_https_are_verified_against_the_configured_ca(
    ca: trustme.CA, tls_backend: TestServer, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    url = server_url(tls_backend)
    assert url.startswith("https://")
    cfg = gateway_config(url, upstream=UpstreamConfig(tls_ca_file=str(ca_file)))
    gw = await start_gateway(aiohttp_server, cfg)  # ready: scrapes and discovery verified
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.make_url("/v1/completions"), json=COMPLETION) as resp,
    ):
        assert resp.status == 200


async def test_pods_with_an_untrusted_certificate_are_not_used(
    tls_backend: TestServer, aiohttp_server: AiohttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL)  # the scraper's complaints are expected here
    cfg = gateway_config(server_url(tls_backend), models=("sim-llm",))
    gw = await start_gateway(aiohttp_server, cfg, wait_ready=False)
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/ready")) as resp:
            assert resp.status == 503
            detail = await resp.json()
        async with session.post(gw.make_url("/v1/completions"), json=COMPLETION) as resp:
            assert resp.status in (502, 503)
    assert "certificate" in str(detail).lower()


async def test_tls_verify_false_accepts_any_pod_certificate(
    tls_backend: TestServer, aiohttp_server: AiohttpServer
) -> None:
    cfg = gateway_config(server_url(tls_backend), upstream=UpstreamConfig(tls_verify=False))
    gw = await start_gateway(aiohttp_server, cfg)
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.make_url("/v1/completions"), json=COMPLETION) as resp,
    ):
        assert resp.status == 200


async def test_slogate_serve_speaks_https_with_api_keys(
    ca: trustme.CA, instant_backend: TestServer, unused_tcp_port: int, tmp_path: Path
) -> None:
    """The wiring of ``slogate serve``: TLS listener, client keys from the environment, the
    listener's protocol settings."""
    cert_file, key_file = _write_pair(ca.issue_cert("127.0.0.1"), tmp_path)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"server:\n  tls_cert_file: {cert_file}\n  tls_key_file: {key_file}\n"
        "  max_request_line_bytes: 1024\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        "--endpoint", server_url(instant_backend),
        "--host", "127.0.0.1", "--port", str(unused_tcp_port), "--log-level", "warning",
        env={**os.environ, API_KEYS_ENV: "sk-serve-key"},
    )  # fmt: skip
    base = f"https://127.0.0.1:{unused_tcp_port}"
    client = _client_ssl(ca)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{base}/ready", ssl=client) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            url = f"{base}/v1/completions"
            async with session.post(url, json=COMPLETION, ssl=client) as resp:
                assert resp.status == 401
            headers = {"Authorization": "Bearer sk-serve-key"}
            async with session.post(url, json=COMPLETION, ssl=client, headers=headers) as resp:
                assert resp.status == 200
            async with session.get(f"{base}/{'a' * 2000}", ssl=client) as resp:
                assert resp.status == 400  # the request line limit from the config
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
