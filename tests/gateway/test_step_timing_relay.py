"""The relay times each pod's engine steps from the token events it passes through.

A model server sends every running stream one event per engine step, but TCP and the server's
writes can cut an event in two (or send the usage event and ``[DONE]`` on their own after the
last token). Only chunks that complete a token event mark a step.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from gateway.keys import gateway_key
from loadtest import instant_backend
from tests.gateway.conftest import MakeGateway, gateway_config, server_url

STEP_S = 0.06
TOKENS = 5


@pytest.fixture
async def paced(aiohttp_server: AiohttpServer) -> tuple[str, asyncio.Event]:
    """A backend whose answer is ``TOKENS`` token events ``STEP_S`` apart, each written in two
    halves 2 ms apart; it then holds the stream open until released."""
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        token = instant_backend._chunk("chat", "hi")
        for _ in range(TOKENS):
            await response.write(token[:25])
            await asyncio.sleep(0.002)
            await response.write(token[25:])
            await asyncio.sleep(STEP_S)
        await release.wait()
        await response.write(b'data: {"choices":[],"usage":{"completion_tokens":5}}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", instant_backend.models)
    app.router.add_get("/metrics", instant_backend.metrics)
    app.router.add_get("/health", instant_backend.health)
    return server_url(await aiohttp_server(app)), release


async def test_steps_come_from_whole_token_events(
    paced: tuple[str, asyncio.Event], make_gateway: MakeGateway
) -> None:
    url, release = paced
    client = await make_gateway(gateway_config(url))
    inflight = client.app[gateway_key].store.inflight
    endpoint = url.removeprefix("http://")
    body = {
        "model": instant_backend.MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    seen = b""
    while seen.count(b"\n\n") < TOKENS:  # every token relayed; the stream is still open
        seen += await response.content.readany()
    steps = inflight.steps(endpoint)
    assert steps is not None
    # Counting half events as steps would put the smoothed interval near 0.02 s.
    assert steps.interval_s >= STEP_S * 0.8
    release.set()
    rest = await response.read()
    assert rest.endswith(b"data: [DONE]\n\n")
    assert inflight.steps(endpoint) is None  # nothing streams from there any more
