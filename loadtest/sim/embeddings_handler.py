"""``POST /v1/embeddings`` on a sim: every input is a prefill-only request on the engine.

Each prompt is queued like a completion whose output limit is 0
(:meth:`~loadtest.sim.frontend.SimFrontend.prefill`, shared with the other pooling routes):
the engine prefills it on its usual schedule (queueing, chunked prefill, prefix cache, speed)
and finishes it at the end of the prefill, with nothing streamed. All inputs of one request
are queued at once, as vLLM queues the prompts of a batch. In the metrics an embedding counts
its prompt tokens, a TTFT at the end of its prefill, one generation token and a ``length``
finish (vLLM counts no generation token for pooling requests).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from aiohttp import web

from loadtest.sim.embeddings import (
    check_input_length,
    embedding_vector,
    embeddings_body,
    parse_embedding_request,
)
from loadtest.sim.frontend import SimFrontend


class EmbeddingsHandlers:
    """The embeddings route of one sim."""

    def __init__(self, frontend: SimFrontend, *, clock: Callable[[], float]) -> None:
        self._frontend = frontend
        self._clock = clock

    async def embeddings(self, request: web.Request) -> web.Response:
        arrival_s = self._clock()
        frontend = self._frontend
        config = frontend.config
        parsed = parse_embedding_request(await request.read(), config.model, config.lora_adapters)
        adapter = frontend.adapter_of(parsed.model)
        prompts = [await frontend.prompt(entry, adapter) for entry in parsed.inputs]
        for prompt in prompts:
            check_input_length(prompt.num_tokens, config.max_model_len)
        request_id = f"embd-{uuid.uuid4().hex}"
        await frontend.prefill(prompts, adapter, request_id=request_id, arrival_s=arrival_s)
        body = embeddings_body(
            response_id=request_id,
            model=parsed.model,
            vectors=[embedding_vector(prompt.digest, parsed.dimensions) for prompt in prompts],
            encoding_format=parsed.encoding_format,
            prompt_tokens=sum(prompt.num_tokens for prompt in prompts),
        )
        return web.Response(body=body, content_type="application/json")
