"""A model server that misbehaves on demand, for the upstream-fault tests.

:class:`FaultPod` speaks enough of vLLM's API for the gateway (``/v1/models``, ``/metrics``,
``/health``, ``/version``, ``/v1/completions`` streamed or not) and answers completions the way
its ``mode`` says, which a test may change at any time:

- ``ok``: a good answer (a stream of token events and ``[DONE]``, or a JSON body);
- an ``int``: that status with an OpenAI-style error body naming the pod (``/version`` too);
- ``reset``: the connection is closed before any answer;
- ``headers_then_close`` / ``headers_then_stall``: a stream's head, then the connection closed
  / nothing more;
- ``drop`` / ``stall``: a stream's head and two token events, then the connection closed /
  nothing more;
- ``hold``: a stream's head and one token event, then the rest once ``release`` is set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.gateway.scrape_support import VLLM_EXPOSITION

MODEL = "sim-llm"
STALL_S = 30.0
"""How long a stalling pod stays silent (the gateway's read-idle timeout cuts it long before;
its handler is cancelled when the gateway drops the connection)."""


def token_event(text: str) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": None}
    payload = {"id": "x", "object": "text_completion", "model": MODEL, "choices": [choice]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


@dataclass
class FaultPod:
    name: str = "pod"
    mode: str | int = "ok"
    health_status: int = 200
    serves_metrics: bool = True
    completions: int = 0
    """Completion requests received."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a stream's first token event was sent."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.serves_metrics:
            raise web.HTTPNotFound()
        return web.Response(body=VLLM_EXPOSITION, content_type="text/plain")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.health_status)

    async def _version(self, request: web.Request) -> web.Response:
        if isinstance(self.mode, int):
            return web.json_response({"error": f"{self.name} says {self.mode}"}, status=self.mode)
        return web.json_response({"version": "0.0.0", "pod": self.name})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.completions += 1
        body = orjson.loads(await request.read())
        mode = self.mode
        if isinstance(mode, int):
            error = {"message": f"{self.name} says {mode}", "type": "Error", "code": mode}
            return web.json_response({"error": error}, status=mode)
        if mode == "reset":
            await _hang_up(request)
        if mode == "ok" and not body.get("stream"):
            choice = {"index": 0, "text": " tok tok tok", "finish_reason": "length"}
            return web.json_response(
                {"id": "x", "object": "text_completion", "model": MODEL, "choices": [choice]}
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if mode == "headers_then_close":
            await _hang_up(request)
        if mode == "headers_then_stall":
            await asyncio.sleep(STALL_S)
        await response.write(token_event(f" {self.name}"))
        self.streaming.set()
        if mode == "hold":
            await self.release.wait()
        if mode in ("drop", "stall"):
            await response.write(token_event(" two"))
            if mode == "drop":
                await _hang_up(request)
            await asyncio.sleep(STALL_S)
        for text in (" b", " c"):
            await response.write(token_event(text))
        await response.write(DONE)
        await response.write_eof()
        return response


async def _hang_up(request: web.Request) -> None:
    """Close the connection under the handler, as a process that died would."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(STALL_S)
