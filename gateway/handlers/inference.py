"""``/v1/completions`` and ``/v1/chat/completions``: thin, the director tells the story."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import gateway_key
from scheduler.framework.types import Api


async def completions(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.COMPLETIONS)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].director.handle(request, Api.CHAT)
