"""What every route that runs the engine shares, whatever its wire format.

Completions, chat, the Responses API and the pooling routes (embeddings, score, rerank,
classify, pooling) differ only in how they parse a request and shape the answer. Underneath,
each one turns a prompt into a :class:`PromptInfo` (its length, KV block hashes and a content
digest), queues a :class:`~loadtest.sim.request.SimRequest` in the engine, follows its
tokens, and aborts it if the handler leaves early. :class:`SimFrontend` does those steps
once for all of them (vLLM's ``EngineClient`` plays this part there), so every route loads
the pod the same way and shows up in the same metrics. It also owns the tokenizer, loaded off
the event loop at startup.
The pooling routes share one more step, :meth:`SimFrontend.prefill`: their prompts run as
prefill-only requests, all queued at once.

Prompts of a LoRA adapter hash their KV blocks under a root of their own: vLLM keys cached
blocks by adapter too, so an adapter never reuses the base model's prefix cache or another
adapter's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.tokenizer import Tokenizer, load_tokenizer
from loadtest.sim.config import SimConfig
from loadtest.sim.engines import SimEngine
from loadtest.sim.kvcache import ROOT_BLOCK_HASH, hash_prompt_blocks
from loadtest.sim.lora import LoraTracker
from loadtest.sim.protocol import Prompt, engine_stopped
from loadtest.sim.request import RequestState, SimRequest, draw_output_len

# Above these sizes, tokenizing and hashing move to a worker thread so the step loop and the
# other streams keep their timing.
LARGE_PROMPT_CHARS = 20_000
LARGE_PROMPT_TOKENS = 16_384

_FINISHED = RequestState.FINISHED
_ABORTED = RequestState.ABORTED


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """What the engine needs of a prompt: its length, block hashes and a content digest."""

    num_tokens: int
    block_hashes: list[int]
    digest: int


def block_root(adapter: str | None) -> int:
    """The root of a prompt's block-hash chain: one per LoRA adapter, deterministic across
    processes (``hash`` of a string is not)."""
    if adapter is None:
        return ROOT_BLOCK_HASH
    return hash((ROOT_BLOCK_HASH, zlib.crc32(adapter.encode())))


def prompt_info(
    token_ids: Sequence[int], block_size: int, *, root: int = ROOT_BLOCK_HASH
) -> PromptInfo:
    return PromptInfo(
        num_tokens=len(token_ids),
        block_hashes=hash_prompt_blocks(token_ids, block_size, root=root),
        digest=hash(tuple(token_ids)),
    )


def _text_prompt_info(tokenizer: Tokenizer, text: str, block_size: int, root: int) -> PromptInfo:
    return prompt_info(tokenizer.encode(text), block_size, root=root)


def sample_digest(prompt: PromptInfo, sample: int) -> int:
    """What seeds sample ``sample`` of a prompt (its length, its words): the prompt's digest
    for the first, a mix of both for the others, so ``n`` samples differ from each other."""
    return prompt.digest if sample == 0 else hash((prompt.digest, sample))


async def token_progress(request: SimRequest) -> AsyncGenerator[tuple[int, int, bool], None]:
    """``(start, stop, finished)`` each time the engine generated tokens ``start..stop`` of
    ``request`` or finished it; ends after the finishing step, or silently if the request is
    aborted (the engine stopped). One wake-up per engine step, never one per token."""
    sent = 0
    while True:
        generated = request.num_generated
        finished = request.state is _FINISHED
        if generated > sent or finished:
            yield sent, generated, finished
            sent = generated
            if finished:
                return
        elif request.state is _ABORTED:
            return
        await request.wait_for_update()


async def wait_until_done(request: SimRequest) -> None:
    """Sleep until ``request`` finished; 503 if the engine stopped first."""
    while not request.done:
        await request.wait_for_update()
    if request.state is _ABORTED:
        raise engine_stopped()


class SimFrontend:
    """Prompts in, engine requests out: shared by every route that runs the engine."""

    def __init__(
        self,
        config: SimConfig,
        engine: SimEngine,
        lora: LoraTracker,
        *,
        tokenizer: Tokenizer | None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.lora = lora
        self._tokenizer = tokenizer

    async def tokenizer_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Load the default tokenizer off the event loop unless one was injected."""
        if self._tokenizer is None:
            self._tokenizer = await asyncio.get_running_loop().run_in_executor(None, load_tokenizer)
        yield

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:  # pragma: no cover - cleanup_ctx loads it first
            raise RuntimeError("the sim app was not started")
        return self._tokenizer

    def adapter_of(self, model: str) -> str | None:
        """The LoRA adapter a (validated) model name asks for; None for the base model."""
        return None if model == self.config.model else model

    async def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (in a worker thread when it is large)."""
        tokenizer = self.tokenizer
        if len(text) > LARGE_PROMPT_CHARS:
            return await asyncio.get_running_loop().run_in_executor(None, tokenizer.encode, text)
        return tokenizer.encode(text)

    async def text_prompt(self, text: str, adapter: str | None) -> PromptInfo:
        block_size = self.config.block_size
        root = block_root(adapter)
        tokenizer = self.tokenizer
        if len(text) > LARGE_PROMPT_CHARS:
            return await asyncio.get_running_loop().run_in_executor(
                None, _text_prompt_info, tokenizer, text, block_size, root
            )
        return _text_prompt_info(tokenizer, text, block_size, root)

    async def prompt(self, prompt: Prompt, adapter: str | None) -> PromptInfo:
        """The :class:`PromptInfo` of a prompt given as text or as token ids."""
        if isinstance(prompt, str):
            return await self.text_prompt(prompt, adapter)
        return await self.ids_prompt(prompt, adapter)

    async def ids_prompt(self, ids: Sequence[int], adapter: str | None) -> PromptInfo:
        block_size = self.config.block_size
        root = block_root(adapter)
        if len(ids) > LARGE_PROMPT_TOKENS:
            return await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(prompt_info, ids, block_size, root=root)
            )
        return prompt_info(ids, block_size, root=root)

    def output_len(
        self,
        prompt: PromptInfo,
        *,
        max_tokens: int,
        ignore_eos: bool,
        seed: int | None,
        sample: int = 0,
    ) -> int:
        """Tokens the request generates: ``max_tokens`` with ``ignore_eos``, else its drawn
        (simulated) EOS position, deterministic in the prompt, ``seed`` and which of the
        prompt's ``n`` samples it is."""
        if ignore_eos:
            return max_tokens
        config = self.config
        return draw_output_len(
            sample_digest(prompt, sample),
            seed,
            sim_seed=config.seed,
            median=config.output_len_median_tokens,
            sigma=config.output_len_sigma,
        )

    @contextlib.contextmanager
    def submitted(self, request: SimRequest, adapter: str | None) -> Iterator[SimRequest]:
        """Queue ``request`` in the engine for the duration of the block. Leaving the block
        before it is done (client gone, shutdown, an error) aborts it, freeing its slot and
        KV blocks at once, whether it was running or still waiting."""
        self.engine.add_request(request)
        self.lora.started(adapter, request)
        try:
            yield request
        finally:
            if not request.done:
                self.engine.abort(request)
            self.lora.ended(adapter, request)

    async def prefill(
        self,
        prompts: Sequence[PromptInfo],
        adapter: str | None,
        *,
        request_id: str,
        arrival_s: float,
    ) -> None:
        """Run each prompt as a prefill-only request (output limit 0, nothing streamed), all
        queued at once as vLLM queues a pooling batch; return when all are done (503 if the
        engine stopped first). The pooling routes' shared path to the engine."""
        sim_requests = [
            SimRequest(
                request_id=f"{request_id}-{index}",
                prompt_len=prompt.num_tokens,
                block_hashes=prompt.block_hashes,
                max_tokens=0,
                output_len=0,
                stream=False,
                arrival_s=arrival_s,
            )
            for index, prompt in enumerate(prompts)
        ]
        with contextlib.ExitStack() as queued:
            for sim_request in sim_requests:
                queued.enter_context(self.submitted(sim_request, adapter))
            for sim_request in sim_requests:
                await wait_until_done(sim_request)
