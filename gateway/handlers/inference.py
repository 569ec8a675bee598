"""Inference routes: thin, the director tells the story. One handler per kind of request.

Each request is checked against the gateway's :class:`~gateway.limits.RequestLimits` first (its
body already read by the body middleware, so the director's read is free). That costs a second
JSON decode of the body (about 1 µs for a 2 KB request; in a worker thread for large bodies); it
moves into the director, which decodes once, when the director takes the limits.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.keys import gateway_key
from gateway.parsing import parse_request
from scheduler.framework.types import Api

_PARSE_OFFLOAD_BYTES = 256 * 1024
"""Larger bodies are decoded for the limits check in a worker thread, off the event loop."""


async def _routed(request: web.Request, api: Api) -> web.StreamResponse:
    gateway = request.app[gateway_key]
    body = await request.read()
    if len(body) > _PARSE_OFFLOAD_BYTES:
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(None, parse_request, body, api)
    else:
        parsed = parse_request(body, api)
    gateway.limits.check(parsed)
    return await gateway.director.handle(request, api)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.COMPLETIONS)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.CHAT)


async def responses(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.RESPONSES)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.EMBEDDINGS)


async def pooling(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.POOLING)


async def classify(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.CLASSIFY)


async def score(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.SCORE)


async def rerank(request: web.Request) -> web.StreamResponse:
    return await _routed(request, Api.RERANK)
