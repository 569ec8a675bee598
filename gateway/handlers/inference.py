"""Inference routes: thin, the director tells the story. One handler per kind of request."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import gateway_key
from scheduler.framework.types import Api


async def completions(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.COMPLETIONS)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.CHAT)


async def responses(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.RESPONSES)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.EMBEDDINGS)


async def pooling(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.POOLING)


async def classify(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.CLASSIFY)


async def score(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.SCORE)


async def rerank(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.RERANK)
