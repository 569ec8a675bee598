"""A measuring OpenAI streaming client for demos, replays and benchmarks (httpx).

Measures what a user sees: TTFT from sending the request to the first event carrying text,
TPOT over the remaining tokens, e2e, and which endpoint served it (``x-slogate-endpoint``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.streaming import SseScanner, scan_json_body


@dataclass(frozen=True, slots=True)
class ClientResult:
    status: int
    endpoint: str
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    completion_tokens: int
    error: str | None = None


async def send(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> ClientResult:
    """POST one request (streaming or not, per ``body["stream"]``) and measure it."""
    scanner = SseScanner()
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            endpoint = resp.headers.get("x-slogate-endpoint", "")
            chunks: list[bytes] = []
            async for chunk in resp.aiter_raw():
                if body.get("stream"):
                    scanner.feed(chunk, time.perf_counter())
                else:
                    chunks.append(chunk)
            ended = time.perf_counter()
            if not body.get("stream"):
                scan_json_body(b"".join(chunks), scanner)
    except httpx.HTTPError as exc:
        return ClientResult(
            status=0,
            endpoint="",
            ttft_s=None,
            tpot_s=None,
            e2e_s=time.perf_counter() - started,
            completion_tokens=0,
            error=f"{type(exc).__name__}: {exc}",
        )
    first = scanner.first_token_at
    tokens = scanner.completion_tokens
    ttft = None if first is None else first - started
    tpot = None if first is None or tokens < 2 else (ended - first) / (tokens - 1)
    return ClientResult(
        status=resp.status_code,
        endpoint=endpoint,
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=ended - started,
        completion_tokens=tokens,
        error=None if resp.status_code < 400 else f"HTTP {resp.status_code}",
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
