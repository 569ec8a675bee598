"""``POST /v1/responses`` and ``GET /v1/responses/{response_id}`` on a sim.

A response runs on the engine exactly like a chat completion (same prompt rendering, same
:class:`~loadtest.sim.frontend.SimFrontend`), so its first token and every later one come on
the engine's schedule, and it loads the pod and shows in its metrics like any other request.
Wire shapes are in :mod:`loadtest.sim.responses`; finished responses go to the pod's
:class:`~loadtest.sim.response_store.ResponseStore` unless the request says ``store: false``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from gateway.tokenizer import render_chat
from loadtest.sim.frontend import SimFrontend, token_progress, wait_until_done
from loadtest.sim.protocol import filler_text
from loadtest.sim.request import SimRequest
from loadtest.sim.response_store import ResponseStore, StoredResponse
from loadtest.sim.responses import (
    ResponseEventEncoder,
    ResponseShape,
    conversation,
    parse_responses_request,
    resolve_max_output_tokens,
    response_not_found,
    response_usage,
)

SSE_HEADERS = {"Cache-Control": "no-cache"}


class ResponsesHandlers:
    """The Responses API routes of one sim."""

    def __init__(
        self, frontend: SimFrontend, store: ResponseStore, *, clock: Callable[[], float]
    ) -> None:
        self._frontend = frontend
        self._store = store
        self._clock = clock

    async def create(self, request: web.Request) -> web.StreamResponse:
        arrival_s = self._clock()
        frontend = self._frontend
        config = frontend.config
        parsed = parse_responses_request(await request.read(), config.model, config.lora_adapters)
        previous_messages: Sequence[Mapping[str, Any]] = ()
        previous_output: str | None = None
        if parsed.previous_response_id is not None:
            previous = self._store.get(parsed.previous_response_id)
            if previous is None:
                raise response_not_found(parsed.previous_response_id)
            previous_messages, previous_output = previous.messages, previous.output_text
        messages = conversation(parsed, previous_messages, previous_output)
        adapter = frontend.adapter_of(parsed.model)
        prompt = await frontend.text_prompt(render_chat(messages, parsed.tools), adapter)
        max_tokens = resolve_max_output_tokens(parsed, prompt.num_tokens, config.max_model_len)
        output_len = frontend.output_len(
            prompt, max_tokens=max_tokens, ignore_eos=parsed.ignore_eos, seed=None
        )
        shape = ResponseShape(
            response_id=f"resp_{uuid.uuid4().hex}",
            item_id=f"msg_{uuid.uuid4().hex}",
            created_at=int(time.time()),
            model=parsed.model,
            max_output_tokens=max_tokens,
            request=parsed,
        )
        sim_request = SimRequest(
            request_id=shape.response_id,
            prompt_len=prompt.num_tokens,
            block_hashes=prompt.block_hashes,
            max_tokens=max_tokens,
            output_len=output_len,
            stream=parsed.stream,
            arrival_s=arrival_s,
        )
        word_offset = prompt.digest % 1024
        with frontend.submitted(sim_request, adapter):
            if parsed.stream:
                encoder = ResponseEventEncoder(shape, word_offset=word_offset)
                return await self._stream(request, sim_request, shape, encoder, messages)
            await wait_until_done(sim_request)
            text = filler_text(word_offset, 0, sim_request.num_generated)
            _, body = self._complete(shape, sim_request, text, messages)
            return web.Response(body=body, content_type="application/json")

    async def retrieve(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        stored = self._store.get(response_id)
        if stored is None:
            raise response_not_found(response_id)
        return web.Response(body=stored.body, content_type="application/json")

    def _complete(
        self,
        shape: ResponseShape,
        sim_request: SimRequest,
        text: str,
        messages: Sequence[Mapping[str, Any]],
    ) -> tuple[dict[str, Any], bytes]:
        """The finished response and its body, stored unless the request said
        ``store: false``."""
        usage = response_usage(
            sim_request.prompt_len,
            sim_request.num_generated,
            max(0, sim_request.num_cached_tokens),
        )
        completed = shape.response(status="completed", text=text, usage=usage)
        body = orjson.dumps(completed)
        if shape.request.store:
            self._store.put(shape.response_id, StoredResponse(body, messages, text))
        return completed, body

    async def _stream(
        self,
        request: web.Request,
        sim_request: SimRequest,
        shape: ResponseShape,
        encoder: ResponseEventEncoder,
        messages: Sequence[Mapping[str, Any]],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        item_open = False
        try:
            await response.write(encoder.started())
            async with contextlib.aclosing(token_progress(sim_request)) as progress:
                async for start, stop, finished in progress:
                    parts: list[bytes] = []
                    if not item_open:
                        parts.append(encoder.item_added())
                        item_open = True
                    parts.append(encoder.deltas(start, stop))
                    if finished:
                        text = filler_text(encoder.word_offset, 0, stop)
                        completed, _ = self._complete(shape, sim_request, text, messages)
                        parts.append(encoder.finished(text, completed))
                    await response.write(b"".join(parts))
            # An engine that stopped mid-way ends the stream without response.completed.
            await response.write_eof()
        except ConnectionResetError:
            # The client went away and handler cancellation is off: the request is aborted
            # when the handler leaves frontend.submitted.
            pass
        return response
