"""``POST /v1/completions`` and ``POST /v1/chat/completions`` on a sim.

Parse (:mod:`loadtest.sim.protocol`), queue the request on the engine through the
:class:`~loadtest.sim.frontend.SimFrontend`, then either wait for the end or stream each
engine step's tokens as they come, one SSE event per token.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable

from aiohttp import web

from loadtest.sim.frontend import PromptInfo, SimFrontend, token_progress, wait_until_done
from loadtest.sim.protocol import (
    SSE_DONE,
    ParsedRequest,
    StreamEncoder,
    completion_body,
    filler_text,
    parse_chat_request,
    parse_completion_request,
    resolve_max_tokens,
    usage_dict,
)
from loadtest.sim.request import SimRequest

SSE_HEADERS = {"Cache-Control": "no-cache"}


class CompletionHandlers:
    """The completions and chat routes of one sim."""

    def __init__(self, frontend: SimFrontend, *, clock: Callable[[], float]) -> None:
        self._frontend = frontend
        self._clock = clock

    async def completions(self, request: web.Request) -> web.StreamResponse:
        config = self._frontend.config
        parsed = parse_completion_request(await request.read(), config.model, config.lora_adapters)
        return await self._generate(request, parsed)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        config = self._frontend.config
        parsed = parse_chat_request(await request.read(), config.model, config.lora_adapters)
        return await self._generate(request, parsed)

    async def _generate(self, request: web.Request, parsed: ParsedRequest) -> web.StreamResponse:
        arrival_s = self._clock()
        frontend = self._frontend
        adapter = frontend.adapter_of(parsed.model)
        prompt = await self._prompt(parsed, adapter)
        max_tokens = resolve_max_tokens(parsed, prompt.num_tokens, frontend.config.max_model_len)
        request_id = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
        sim_request = SimRequest(
            request_id=request_id,
            prompt_len=prompt.num_tokens,
            block_hashes=prompt.block_hashes,
            max_tokens=max_tokens,
            output_len=frontend.output_len(
                prompt, max_tokens=max_tokens, ignore_eos=parsed.ignore_eos, seed=parsed.seed
            ),
            stream=parsed.stream,
            arrival_s=arrival_s,
        )
        word_offset = prompt.digest % 1024
        created = int(time.time())
        with frontend.submitted(sim_request, adapter):
            if parsed.stream:
                encoder = StreamEncoder(
                    chat=parsed.chat,
                    request_id=request_id,
                    created=created,
                    model=parsed.model,
                    word_offset=word_offset,
                )
                return await self._stream(request, sim_request, parsed, encoder)
            await wait_until_done(sim_request)
            body = completion_body(
                chat=parsed.chat,
                request_id=request_id,
                created=created,
                model=parsed.model,
                text=filler_text(word_offset, 0, sim_request.num_generated),
                finish_reason=sim_request.finish_reason or "stop",
                usage=usage_dict(
                    sim_request.prompt_len,
                    sim_request.num_generated,
                    max(0, sim_request.num_cached_tokens),
                ),
            )
            return web.Response(body=body, content_type="application/json")

    async def _prompt(self, parsed: ParsedRequest, adapter: str | None) -> PromptInfo:
        if parsed.prompt_ids is not None:
            return await self._frontend.ids_prompt(parsed.prompt_ids, adapter)
        if parsed.prompt_text is None:  # pragma: no cover - the parser sets one of the two
            raise RuntimeError("a parsed request without a prompt")
        return await self._frontend.text_prompt(parsed.prompt_text, adapter)

    async def _stream(
        self,
        request: web.Request,
        sim_request: SimRequest,
        parsed: ParsedRequest,
        encoder: StreamEncoder,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        role_pending = parsed.chat  # vLLM sends the role chunk with the first token
        try:
            async with contextlib.aclosing(token_progress(sim_request)) as progress:
                async for start, stop, finished in progress:
                    finish_reason = sim_request.finish_reason if finished else None
                    parts = [encoder.tokens(start, stop, finish_reason)]
                    if role_pending:
                        parts.insert(0, encoder.role_chunk())
                        role_pending = False
                    if finished:
                        if parsed.include_usage:
                            parts.append(
                                encoder.usage_chunk(
                                    sim_request.prompt_len,
                                    stop,
                                    max(0, sim_request.num_cached_tokens),
                                )
                            )
                        parts.append(SSE_DONE)
                    await response.write(b"".join(parts))
            # An engine that stopped mid-way ends the stream without [DONE].
            await response.write_eof()
        except ConnectionResetError:
            # The client went away and handler cancellation is off: the request is aborted
            # when the handler leaves frontend.submitted.
            pass
        return response
