"""One request's life inside the engine, and the hand-off to the HTTP handler that serves it.

The engine mutates a :class:`SimRequest` (state, computed and generated token counts); the
handler task sleeps on :meth:`SimRequest.wait_for_update` and, when woken, writes every token
generated since its last write in one go. One wake-up per step per stream, never one per
token and never a queue of token objects.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections.abc import Sequence


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


def draw_output_len(
    prompt_digest: int, request_seed: int | None, *, sim_seed: int, median: float, sigma: float
) -> int:
    """How many tokens a request generates before its (simulated) EOS.

    Deterministic in (prompt, request ``seed``, sim seed), so a replayed request behaves the
    same on every pod and in every run; log-normal, so a few answers are very long.
    """
    mix = hash((prompt_digest, -1 if request_seed is None else request_seed, sim_seed))
    rng = random.Random(mix)
    return max(1, round(rng.lognormvariate(math.log(median), sigma)))


class SimRequest:
    """A request as the engine sees it: token counts, KV blocks, timestamps, a waker."""

    __slots__ = (
        "_waiter",
        "arrival_s",
        "block_hashes",
        "blocks",
        "finish_reason",
        "finished_s",
        "first_token_s",
        "last_token_s",
        "max_tokens",
        "num_cached_tokens",
        "num_computed",
        "num_generated",
        "num_hashed_blocks",
        "output_len",
        "prompt_len",
        "request_id",
        "state",
        "stream",
    )

    def __init__(
        self,
        *,
        request_id: str,
        prompt_len: int,
        block_hashes: Sequence[int],
        max_tokens: int,
        output_len: int,
        stream: bool,
        arrival_s: float,
    ) -> None:
        self.request_id = request_id
        self.prompt_len = prompt_len
        self.block_hashes = block_hashes
        self.max_tokens = max_tokens
        # Tokens to generate: max_tokens with ignore_eos, else the drawn EOS position.
        self.output_len = min(output_len, max_tokens)
        self.stream = stream
        self.arrival_s = arrival_s
        self.state = RequestState.WAITING
        self.num_computed = 0
        self.num_generated = 0
        self.num_hashed_blocks = 0
        self.blocks: list[int] = []
        # Prompt tokens served from the prefix cache at first admission (-1 = not yet).
        self.num_cached_tokens = -1
        self.first_token_s: float | None = None
        self.last_token_s = 0.0
        self.finished_s: float | None = None
        self.finish_reason: str | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens the sequence has (prompt plus generated): what must be in KV to go on."""
        return self.prompt_len + self.num_generated

    @property
    def done(self) -> bool:
        return self.state is RequestState.FINISHED or self.state is RequestState.ABORTED

    async def wait_for_update(self) -> None:
        """Sleep until the engine generated a token, finished or aborted this request."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def notify(self) -> None:
        """Wake the handler if it waits (called by the engine)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
