"""Talking to model servers: the client session, header hygiene and timeouts.

Requests are forwarded with their body bytes as the gateway received them (decoded: aiohttp's
server undoes a client's ``Content-Encoding``, so that header is not forwarded either).
Hop-by-hop headers are dropped both ways, ``accept-encoding`` is not forwarded (so the model
server answers uncompressed and the gateway can read the SSE it relays) and the session never
decompresses, so response bytes pass through untouched. The client's ``Authorization`` is
removed before this module sees the request unless ``upstream.forward_authorization`` (see
:mod:`gateway.auth`); the session adds the pod token and TLS trust of
:mod:`gateway.pod_access`.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from config import UpstreamConfig
from gateway.pod_access import pod_headers, pod_ssl

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "expect",
}
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "date", "server"}

ENDPOINT_HEADER = "x-slogate-endpoint"
REQUEST_ID_HEADER = "x-request-id"


def make_session(cfg: UpstreamConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=cfg.max_connections,
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=60,
        ssl=pod_ssl(cfg),
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers=pod_headers(cfg),
        # A proxy must never keep cookies: one client's upstream cookies would leak into
        # another client's requests. (It also skips cookie work on every request.)
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=request_timeout(cfg),
        skip_auto_headers=("User-Agent",),
    )


def request_timeout(cfg: UpstreamConfig) -> aiohttp.ClientTimeout:
    """No total limit (streams are long); bounded connect and bounded silence between bytes."""
    return aiohttp.ClientTimeout(
        total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.read_idle_timeout_s
    )


def upstream_headers(headers: Mapping[str, str], request_id: str) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in _NOT_FORWARDED:
            out.add(key, value)
    out[REQUEST_ID_HEADER] = request_id
    return out


def downstream_headers(
    headers: CIMultiDictProxy[str], endpoint: str, request_id: str
) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in _NOT_RETURNED:
            out.add(key, value)
    out[ENDPOINT_HEADER] = endpoint
    out[REQUEST_ID_HEADER] = request_id
    return out
