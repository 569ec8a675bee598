"""``/metrics`` compressed the way vLLM (prometheus_client) serves it, seen as raw bytes."""

from __future__ import annotations

import gzip

import pytest
from aiohttp import ClientSession, hdrs

from loadtest.sim import SimConfig, start_sim_server

# (Accept-Encoding sent, None = no header at all; whether the body comes back gzipped)
CASES = [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("deflate, GZIP;q=0.5", True),
    ("identity", False),
    ("deflate", False),
    ("br", False),
    ("", False),
    (None, False),
]


@pytest.mark.parametrize(("accept_encoding", "gzipped"), CASES, ids=[str(c[0]) for c in CASES])
async def test_metrics_are_gzipped_only_for_clients_that_accept_it(
    accept_encoding: str | None, gzipped: bool
) -> None:
    server = await start_sim_server(SimConfig())
    try:
        # No auto-decompression and no default Accept-Encoding: the test sees the wire.
        async with ClientSession(
            base_url=server.url,
            auto_decompress=False,
            skip_auto_headers=[hdrs.ACCEPT_ENCODING],
        ) as session:
            headers = {} if accept_encoding is None else {hdrs.ACCEPT_ENCODING: accept_encoding}
            async with session.get("/metrics", headers=headers) as response:
                assert response.status == 200
                raw = await response.read()
                content_encoding = response.headers.get(hdrs.CONTENT_ENCODING)
                assert response.headers[hdrs.CONTENT_TYPE].startswith("text/plain")
                assert response.headers[hdrs.VARY] == "Accept-Encoding"
                assert int(response.headers[hdrs.CONTENT_LENGTH]) == len(raw)
    finally:
        await server.close()
    if gzipped:
        assert content_encoding == "gzip"
        assert raw[:2] == b"\x1f\x8b"
        text = gzip.decompress(raw).decode()
    else:
        assert content_encoding is None
        text = raw.decode()
    assert text.startswith("# HELP vllm:num_requests_running")
    assert 'vllm:num_requests_waiting{engine="0",model_name="sim-llm"} 0.0' in text


async def test_a_decompressing_client_reads_gzipped_metrics_transparently() -> None:
    server = await start_sim_server(SimConfig(engine="slots"))
    try:
        # aiohttp's default client asks for gzip and decodes it, as the gateway's scraper does.
        async with (
            ClientSession(base_url=server.url) as session,
            session.get("/metrics") as response,
        ):
            assert response.headers[hdrs.CONTENT_ENCODING] == "gzip"
            text = await response.text()
    finally:
        await server.close()
    assert "vllm:kv_cache_usage_perc" in text
