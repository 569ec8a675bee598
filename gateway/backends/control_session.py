"""The control-plane client: what the scraper, model discovery and the health checks of
ejected endpoints talk to endpoints through.

Configured for scraping, unlike the relay's session (which passes bytes through untouched):
model servers answer ``/metrics`` gzip-compressed when asked (vLLM and SGLang through
prometheus_client, Go servers through promhttp), so this session decompresses. It advertises
only ``gzip, deflate``, which aiohttp always decodes; aiohttp's own default would add ``br`` and
``zstd`` whenever an optional decoder package happens to be installed, making what the gateway
asks for depend on its environment. It asks for the classic text format (what the fast parser
reads), keeps no cookies, and has a small pool of its own (three connections per endpoint: a
scrape, a model poll and a health check), so it never waits behind the relay's streams.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

ACCEPT_ENCODING = "gzip, deflate"
ACCEPT = "text/plain;version=0.0.4;q=0.9, */*;q=0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlSessionConfig:
    connect_timeout_s: float
    request_timeout_s: float
    """Whole request, connect to last byte (a scrape answer is small)."""
    max_connections: int
    """Three per endpoint: a scrape, a model poll and a health check in flight at most. A
    total, not per host: endpoints behind one host (path-routed) must not queue behind each
    other."""
    keepalive_s: float = 4.0
    """Below uvicorn's 5 s default, so a slow scrape interval never reuses a connection the
    server is closing."""
    ssl: ssl.SSLContext | bool = True
    """TLS for ``https://`` endpoints: aiohttp's verified default, a context trusting the
    configured CA, or ``False`` (no verification)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Sent with every request (the pods' token, ``Authorization``)."""


def make_control_session(cfg: ControlSessionConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=cfg.max_connections,
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=cfg.keepalive_s,
        ssl=cfg.ssl,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        headers={"Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING, **cfg.headers},
        timeout=aiohttp.ClientTimeout(
            total=cfg.request_timeout_s, sock_connect=cfg.connect_timeout_s
        ),
        skip_auto_headers=("User-Agent",),
    )
