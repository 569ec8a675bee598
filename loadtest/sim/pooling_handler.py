"""vLLM's pooling routes on a sim: ``/v1/embeddings``, ``/pooling``, ``/classify``, the score
routes (``/score``, ``/v1/score``) and the rerank routes (``/rerank``, ``/v1/rerank``,
``/v2/rerank``).

Each input, or each pair for score and rerank, runs on the engine as a prefill-only request
through :meth:`~loadtest.sim.frontend.SimFrontend.prefill`: all inputs of a request queued at
once, each costing its prefill on the pod's schedule, using the
prefix cache and showing in ``/metrics``. Wire formats are in :mod:`loadtest.sim.pooling` and
:mod:`loadtest.sim.embeddings`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from aiohttp import web

from loadtest.sim.embeddings import (
    check_input_length,
    embedding_vector,
    parse_embedding_request,
    vectors_body,
)
from loadtest.sim.frontend import PromptInfo, SimFrontend
from loadtest.sim.pooling import (
    class_probs,
    classify_body,
    parse_classify_request,
    parse_rerank_request,
    parse_score_request,
    relevance_score,
    rerank_body,
    score_body,
)


class PoolingHandlers:
    """The pooling routes of one sim."""

    def __init__(self, frontend: SimFrontend, *, clock: Callable[[], float]) -> None:
        self._frontend = frontend
        self._clock = clock

    async def embeddings(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``: one prefill-only engine request per input."""
        return await self._vectors(request, "embd", "embedding")

    async def pooling(self, request: web.Request) -> web.Response:
        """``POST /pooling``: as embeddings, vLLM's ``PoolingResponse`` shape."""
        return await self._vectors(request, "pool", "pooling")

    async def _vectors(self, request: web.Request, prefix: str, kind: str) -> web.Response:
        arrival_s = self._clock()
        frontend = self._frontend
        config = frontend.config
        parsed = parse_embedding_request(await request.read(), config.model, config.lora_adapters)
        adapter = frontend.adapter_of(parsed.model)
        prompts = [await frontend.prompt(entry, adapter) for entry in parsed.inputs]
        request_id = await self._prefill(
            prefix, prompts, adapter, arrival_s, operation="embedding generation", param="input"
        )
        body = vectors_body(
            kind=kind,
            response_id=request_id,
            model=parsed.model,
            vectors=[embedding_vector(prompt.digest, parsed.dimensions) for prompt in prompts],
            encoding_format=parsed.encoding_format,
            prompt_tokens=_prompt_tokens(prompts),
        )
        return web.Response(body=body, content_type="application/json")

    async def classify(self, request: web.Request) -> web.Response:
        arrival_s = self._clock()
        frontend = self._frontend
        config = frontend.config
        parsed = parse_classify_request(await request.read(), config.model, config.lora_adapters)
        adapter = frontend.adapter_of(parsed.model)
        prompts = [await frontend.prompt(entry, adapter) for entry in parsed.inputs]
        request_id = await self._prefill(
            "classify", prompts, adapter, arrival_s, operation="classification", param="input"
        )
        body = classify_body(
            response_id=request_id,
            model=parsed.model,
            probs=[class_probs(prompt.digest) for prompt in prompts],
            prompt_tokens=_prompt_tokens(prompts),
        )
        return web.Response(body=body, content_type="application/json")

    async def score(self, request: web.Request) -> web.Response:
        arrival_s = self._clock()
        frontend = self._frontend
        config = frontend.config
        parsed = parse_score_request(await request.read(), config.model, config.lora_adapters)
        adapter = frontend.adapter_of(parsed.model)
        prompts = [
            await self._pair(await frontend.encode(first), second, adapter)
            for first, second in parsed.pairs
        ]
        request_id = await self._prefill("score", prompts, adapter, arrival_s, operation="score")
        body = score_body(
            response_id=request_id,
            model=parsed.model,
            scores=[relevance_score(prompt.digest) for prompt in prompts],
            prompt_tokens=_prompt_tokens(prompts),
        )
        return web.Response(body=body, content_type="application/json")

    async def rerank(self, request: web.Request) -> web.Response:
        arrival_s = self._clock()
        frontend = self._frontend
        config = frontend.config
        parsed = parse_rerank_request(await request.read(), config.model, config.lora_adapters)
        adapter = frontend.adapter_of(parsed.model)
        query_ids = await frontend.encode(parsed.query)
        prompts = [await self._pair(query_ids, document, adapter) for document in parsed.documents]
        # vLLM names no operation of its own for rerank in the length error.
        request_id = await self._prefill(
            "rerank", prompts, adapter, arrival_s, operation="embedding generation"
        )
        body = rerank_body(
            response_id=request_id,
            model=parsed.model,
            documents=parsed.documents,
            scores=[relevance_score(prompt.digest) for prompt in prompts],
            top_n=parsed.top_n,
            prompt_tokens=_prompt_tokens(prompts),
        )
        return web.Response(body=body, content_type="application/json")

    async def _pair(self, first_ids: list[int], second: str, adapter: str | None) -> PromptInfo:
        """A cross-encoder's prompt for a pair: the first text's tokens, then the second's."""
        frontend = self._frontend
        return await frontend.ids_prompt(first_ids + await frontend.encode(second), adapter)

    async def _prefill(
        self,
        prefix: str,
        prompts: Sequence[PromptInfo],
        adapter: str | None,
        arrival_s: float,
        *,
        operation: str,
        param: str | None = None,
    ) -> str:
        """Check every prompt fits the context (vLLM's 400 naming ``operation``), run them all
        on the engine, and return the response id (``<prefix>-<hex>``)."""
        max_model_len = self._frontend.config.max_model_len
        for prompt in prompts:
            check_input_length(prompt.num_tokens, max_model_len, operation, param)
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        await self._frontend.prefill(prompts, adapter, request_id=request_id, arrival_s=arrival_s)
        return request_id


def _prompt_tokens(prompts: Sequence[PromptInfo]) -> int:
    return sum(prompt.num_tokens for prompt in prompts)
