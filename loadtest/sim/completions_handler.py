"""``POST /v1/completions`` and ``POST /v1/chat/completions`` on a sim.

Parse (:mod:`loadtest.sim.protocol`), plan one engine request per prompt and sample
(:mod:`loadtest.sim.choices`), queue them through the
:class:`~loadtest.sim.frontend.SimFrontend`, then either wait for the end or stream each
engine step's tokens as they come, one SSE event per token, each with its choice's index.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence

from aiohttp import web

from loadtest.sim.choices import ChoiceRun, SamplingPlan, plan_choices
from loadtest.sim.frontend import SimFrontend
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
        max_model_len = frontend.config.max_model_len
        adapter = frontend.adapter_of(parsed.model)
        prompts = [await frontend.prompt(prompt, adapter) for prompt in parsed.prompts]
        max_tokens = [resolve_max_tokens(parsed, p.num_tokens, max_model_len) for p in prompts]
        request_id = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
        plan = SamplingPlan(
            request_id=request_id,
            n=parsed.n,
            ignore_eos=parsed.ignore_eos,
            seed=parsed.seed,
            stream=parsed.stream,
            arrival_s=arrival_s,
        )
        groups = plan_choices(frontend, prompts, max_tokens, plan)
        created = int(time.time())
        with ChoiceRun(frontend, adapter, groups) as run:
            if parsed.stream:
                encoders = [
                    StreamEncoder(
                        chat=parsed.chat,
                        request_id=request_id,
                        created=created,
                        model=parsed.model,
                        word_offset=choice.word_offset,
                        index=choice.index,
                    )
                    for choice in run.choices
                ]
                return await self._stream(request, run, parsed, encoders)
            await run.wait()
            body = completion_body(
                chat=parsed.chat,
                request_id=request_id,
                created=created,
                model=parsed.model,
                choices=[
                    (
                        filler_text(choice.word_offset, 0, choice.request.num_generated),
                        choice.request.finish_reason or "stop",
                    )
                    for choice in run.choices
                ],
                usage=usage_dict(*run.token_counts()),
            )
            return web.Response(body=body, content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        run: ChoiceRun,
        parsed: ParsedRequest,
        encoders: Sequence[StreamEncoder],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        # vLLM sends the role chunk of every choice with the first token of any.
        role_pending = parsed.chat
        try:
            async with contextlib.aclosing(run.progress()) as progress:
                async for batch in progress:
                    parts: list[bytes] = []
                    if role_pending:
                        parts.extend(encoder.role_chunk() for encoder in encoders)
                        role_pending = False
                    for choice, start, stop, finished in batch:
                        finish_reason = choice.request.finish_reason if finished else None
                        parts.append(encoders[choice.index].tokens(start, stop, finish_reason))
                    if run.finished:
                        if parsed.include_usage:
                            parts.append(encoders[0].usage_chunk(*run.token_counts()))
                        parts.append(SSE_DONE)
                    await response.write(b"".join(parts))
            # An engine that stopped mid-way ends the stream without [DONE].
            await response.write_eof()
        except ConnectionResetError:
            # The client went away and handler cancellation is off: the requests are aborted
            # when the handler leaves the ChoiceRun.
            pass
        return response
