"""The engine requests behind one completions or chat request: one per prompt and sample.

A completions batch has one entry per prompt, and every prompt is sampled ``n`` times, so a
request becomes ``len(prompts) x n`` choices; choice ``i * n + j`` is sample ``j`` of prompt
``i``, vLLM's numbering. Each choice is a :class:`~loadtest.sim.request.SimRequest` of its own:
it takes a batch slot and KV blocks, loads the pod and shows in the metrics like any request,
as in vLLM, where each prompt of a batch is an engine request and ``n > 1`` fans out into
``n`` child requests that share the prompt.

**When siblings are queued.** The first sample of every prompt is queued at once; the other
``n - 1`` samples of a prompt are queued when its first sample's prefill is done. vLLM V1
caches a prompt's blocks as they are allocated, so children scheduled together share one
prefill. The sim's engines publish blocks to the prefix cache only once they are computed,
so queueing the siblings after the first prefill is what lets them find the prompt there and
prefill only its last block. Under load they queue behind requests that arrived meanwhile.

A request with one choice (the common case) follows its one request directly; several are
followed by one small task each, merged so that each wake-up writes every choice's new
tokens at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from types import TracebackType

from loadtest.sim.frontend import PromptInfo, SimFrontend, sample_digest, token_progress
from loadtest.sim.protocol import engine_stopped
from loadtest.sim.request import RequestState, SimRequest

_FINISHED = RequestState.FINISHED


@dataclass(frozen=True, slots=True, eq=False)
class Choice:
    """One sequence of a request: its ``index`` in the answer, its prompt and engine request,
    and where its filler words start."""

    index: int
    prompt: PromptInfo
    request: SimRequest
    word_offset: int


# (choice, first new token, end of the new tokens, finished): one step's progress of a choice.
Progress = tuple[Choice, int, int, bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingPlan:
    """What every choice of one request shares."""

    request_id: str
    n: int
    ignore_eos: bool
    seed: int | None
    stream: bool
    arrival_s: float


def plan_choices(
    frontend: SimFrontend,
    prompts: Sequence[PromptInfo],
    max_tokens: Sequence[int],
    plan: SamplingPlan,
) -> list[list[Choice]]:
    """The choices of each prompt, its first sample first. ``max_tokens[i]`` is prompt
    ``i``'s output limit. A first sample with siblings streams its tokens to the handler even
    in a non-streaming request: its first token is the signal to queue the siblings."""
    n = plan.n
    single = len(prompts) == 1 and n == 1
    groups: list[list[Choice]] = []
    for prompt_index, (prompt, limit) in enumerate(zip(prompts, max_tokens, strict=True)):
        group: list[Choice] = []
        for sample in range(n):
            index = prompt_index * n + sample
            request = SimRequest(
                request_id=plan.request_id if single else f"{plan.request_id}-{index}",
                prompt_len=prompt.num_tokens,
                block_hashes=prompt.block_hashes,
                max_tokens=limit,
                output_len=frontend.output_len(
                    prompt,
                    max_tokens=limit,
                    ignore_eos=plan.ignore_eos,
                    seed=plan.seed,
                    sample=sample,
                ),
                stream=plan.stream or (sample == 0 and n > 1),
                arrival_s=plan.arrival_s,
            )
            word_offset = sample_digest(prompt, sample) % 1024
            group.append(Choice(index, prompt, request, word_offset))
        groups.append(group)
    return groups


class ChoiceRun:
    """The choices of one request on the engine, for the duration of a ``with`` block.

    Entering queues each prompt's first sample; :meth:`progress` queues the siblings as the
    first samples' prefills end, and reports every choice's tokens. Leaving the block aborts
    every request not done yet (client gone, shutdown, an error), freeing slots and KV.
    """

    def __init__(
        self, frontend: SimFrontend, adapter: str | None, groups: Sequence[Sequence[Choice]]
    ) -> None:
        self._frontend = frontend
        self._adapter = adapter
        self._leaders = [group[0] for group in groups]
        self._siblings = {group[0].index: group[1:] for group in groups if len(group) > 1}
        self.choices = sorted((choice for group in groups for choice in group), key=_index)
        self._queued = contextlib.ExitStack()

    def __enter__(self) -> ChoiceRun:
        for leader in self._leaders:
            self._submit(leader)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._queued.close()

    @property
    def finished(self) -> bool:
        """Whether every choice has finished (none aborted, none still to come)."""
        return all(choice.request.state is _FINISHED for choice in self.choices)

    def token_counts(self) -> tuple[int, int, int]:
        """``(prompt, completion, cached)`` tokens as vLLM's usage counts them: each prompt
        once, however many samples it had; every choice's tokens; the prompts' prefix-cache
        hits (their first samples')."""
        return (
            sum(leader.prompt.num_tokens for leader in self._leaders),
            sum(choice.request.num_generated for choice in self.choices),
            sum(max(0, leader.request.num_cached_tokens) for leader in self._leaders),
        )

    async def wait(self) -> None:
        """Return when every choice has finished; 503 if the engine stopped first."""
        async with contextlib.aclosing(self.progress()) as progress:
            async for _ in progress:
                pass
        if not self.finished:
            raise engine_stopped()

    async def progress(self) -> AsyncGenerator[list[Progress], None]:
        """Each wake-up's progress, every choice with new tokens (or just finished) once. Ends
        when every choice has finished, or silently if the engine stopped first."""
        if len(self.choices) == 1:
            (choice,) = self.choices
            async with contextlib.aclosing(token_progress(choice.request)) as single:
                async for start, stop, finished in single:
                    yield [(choice, start, stop, finished)]
            return
        queue: asyncio.Queue[Progress | Choice] = asyncio.Queue()
        followers: list[asyncio.Task[None]] = []
        try:
            for leader in self._leaders:
                followers.append(asyncio.create_task(_follow(leader, queue)))
            following = len(followers)
            while following:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                batch: list[Progress] = []
                for event in events:
                    if isinstance(event, Choice):
                        following -= 1  # that choice's request is done
                        continue
                    # A first sample's first progress: its prefill is done, siblings go now.
                    for sibling in self._siblings.pop(event[0].index, ()):
                        self._submit(sibling)
                        followers.append(asyncio.create_task(_follow(sibling, queue)))
                        following += 1
                    batch.append(event)
                if batch:
                    yield batch
        finally:
            for follower in followers:
                follower.cancel()

    def _submit(self, choice: Choice) -> None:
        self._queued.enter_context(self._frontend.submitted(choice.request, self._adapter))


async def _follow(choice: Choice, queue: asyncio.Queue[Progress | Choice]) -> None:
    """Relay one choice's progress to ``queue``, then the choice itself as its end marker."""
    async with contextlib.aclosing(token_progress(choice.request)) as progress:
        async for start, stop, finished in progress:
            queue.put_nowait((choice, start, stop, finished))
    queue.put_nowait(choice)


def _index(choice: Choice) -> int:
    return choice.index
