"""``approx-prefix-cache-producer``: estimate how much of the prompt each endpoint has cached.

llm-d's approximate prefix cache (see ``scheduler.datalayer.prefix_index`` for the algorithm).
Before scheduling it hashes the prompt's blocks once and writes ``PREFIX_MATCH``
(``PrefixMatch(matched_blocks, total_blocks, block_size)``) on every candidate; at dispatch it
records the prompt's blocks under the **chosen** endpoint. The index is the gateway's own routing
history, not the servers' real caches: requests from other clients and evictions caused by them
are invisible to it.

Block size. Per endpoint, the model server's KV block size (``vllm:cache_config_info``
``block_size``, SGLang's page size) when ``autoTune`` is on and the endpoint reports one, else
``blockSizeTokens``; then raised to the smallest multiple of it that is at least
``minBlockSizeTokens``, so index blocks stay aligned with real cache blocks. vLLM's usual 16
becomes 64 (llm-d clamps to 64 too): hashing and index updates cost a quarter, and what is lost
is at most 63 tokens of matched prefix per request, noise next to the hundreds or thousands of
shared tokens that make prefix affinity worth anything.
Set ``minBlockSizeTokens: 1`` to index at the server's own granularity.

Capacity. Per endpoint, its LRU holds what its KV cache can: ``num_gpu_blocks`` (reported
``vllm:cache_config_info`` ``num_gpu_blocks``, SGLang's page count) converted to index blocks
(x server block size / index block size) when ``autoTune`` is on and reported, else
``lruCapacityPerServer`` index blocks. (llm-d uses ``num_gpu_blocks`` as is, which overstates the
cache by the clamping factor.)

Deviations from llm-d, deliberate: only full blocks are hashed (model servers cache nothing
else), hashes are blake2b instead of xxhash64 (stdlib; ~0.5 us per block), and a dispatch touches
blocks last to first (see the index's doc).

Inputs: ``request.prompt_tokens``, ``request.model``; ``candidate.metrics.block_size`` and
``num_gpu_blocks``. Output: ``PREFIX_MATCH`` on every candidate (read by ``prefix-cache-scorer``
and the latency predictor).

Parameters:

| name                     | default | meaning                                                     |
|--------------------------|---------|-------------------------------------------------------------|
| `blockSizeTokens`        | `16`    | block size of endpoints that report none                    |
| `minBlockSizeTokens`     | `64`    | index blocks are at least this long (see above)             |
| `maxPrefixBlocksToMatch` | `2048`  | at most this many leading blocks are hashed and matched     |
| `maxPrefixTokensToMatch` | `0`     | if > 0, also at most this many leading tokens (llm-d's cap) |
| `lruCapacityPerServer`   | `31250` | index blocks remembered per endpoint without reported size  |
| `autoTune`               | `true`  | use the endpoint-reported block size and block count        |

Extension points: data producer (before scheduling), pre-request (at dispatch). When an endpoint
leaves the pool, call :meth:`ApproxPrefixCacheProducer.forget`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from scheduler.datalayer.prefix_index import BlockHash, PrefixIndex, block_hashes, hash_seed
from scheduler.framework.attributes import PREFIX_MATCH, PrefixMatch
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import (
    AttrKey,
    Candidate,
    CycleState,
    InferenceRequest,
    SchedulingResult,
)


@dataclass(slots=True)
class PromptBlocks:
    """The request's block hashes per index block size, computed once per request."""

    by_block_size: dict[int, list[BlockHash]] = field(default_factory=dict)


PROMPT_BLOCKS: AttrKey[PromptBlocks] = AttrKey("approx-prefix-cache-producer.prompt-blocks")
"""Cycle state: the hashes ``produce`` computed, reused by ``pre_request``."""


class ApproxPrefixCacheProducer:
    TYPE: ClassVar[str] = "approx-prefix-cache-producer"

    def __init__(
        self,
        name: str,
        *,
        block_size_tokens: int = 16,
        min_block_size_tokens: int = 64,
        max_prefix_blocks_to_match: int = 2048,
        max_prefix_tokens_to_match: int = 0,
        lru_capacity_per_server: int = 31250,
        auto_tune: bool = True,
        index: PrefixIndex | None = None,
    ) -> None:
        for label, value in (
            ("block_size_tokens", block_size_tokens),
            ("min_block_size_tokens", min_block_size_tokens),
            ("max_prefix_blocks_to_match", max_prefix_blocks_to_match),
            ("lru_capacity_per_server", lru_capacity_per_server),
        ):
            if value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        self.name = name
        self.block_size_tokens = block_size_tokens
        self.min_block_size_tokens = min_block_size_tokens
        self.max_prefix_blocks_to_match = max_prefix_blocks_to_match
        self.max_prefix_tokens_to_match = max_prefix_tokens_to_match
        self.lru_capacity_per_server = lru_capacity_per_server
        self.auto_tune = auto_tune
        self.index = PrefixIndex() if index is None else index
        self._aligned: dict[int, int] = {}
        self._seeds: dict[tuple[str, int], BlockHash] = {}
        self._default_block_size = self.index_block_size(block_size_tokens)

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(
            name,
            block_size_tokens=params.int("blockSizeTokens", 16, ge=1),
            min_block_size_tokens=params.int("minBlockSizeTokens", 64, ge=1),
            max_prefix_blocks_to_match=params.int("maxPrefixBlocksToMatch", 2048, ge=1),
            max_prefix_tokens_to_match=params.int("maxPrefixTokensToMatch", 0, ge=0),
            lru_capacity_per_server=params.int("lruCapacityPerServer", 31250, ge=1),
            auto_tune=params.bool("autoTune", True),
        )

    # -- sizing --------------------------------------------------------------------------------
    def index_block_size(self, server_block_size: int) -> int:
        """The smallest multiple of the server's block size that is >= ``minBlockSizeTokens``."""
        size = self._aligned.get(server_block_size)
        if size is None:
            multiple = -(-self.min_block_size_tokens // server_block_size)
            size = self._aligned[server_block_size] = server_block_size * multiple
        return size

    def block_size_for(self, candidate: Candidate) -> int:
        """The index block size used for this endpoint."""
        m = candidate.metrics
        if self.auto_tune and m is not None and m.block_size:
            return self.index_block_size(m.block_size)
        return self._default_block_size

    def capacity_for(self, candidate: Candidate, block_size: int) -> int:
        """How many index blocks of this endpoint's LRU its KV cache can hold."""
        m = candidate.metrics
        if self.auto_tune and m is not None and m.num_gpu_blocks and m.block_size:
            return max(1, m.num_gpu_blocks * m.block_size // block_size)
        return self.lru_capacity_per_server

    def _max_blocks(self, block_size: int) -> int:
        cap = self.max_prefix_blocks_to_match
        if self.max_prefix_tokens_to_match:
            cap = min(cap, self.max_prefix_tokens_to_match // block_size)
        return cap

    def prompt_hashes(
        self, state: CycleState, request: InferenceRequest, block_size: int
    ) -> list[BlockHash]:
        """The request's block hashes at this block size, computed once per cycle."""
        blocks = state.get(PROMPT_BLOCKS)
        if blocks is None:
            blocks = PromptBlocks()
            state.put(PROMPT_BLOCKS, blocks)
        hashes = blocks.by_block_size.get(block_size)
        if hashes is None:
            hashes = blocks.by_block_size[block_size] = block_hashes(
                request.prompt_tokens,
                block_size=block_size,
                seed=self._seed(request.model, block_size),
                max_blocks=self._max_blocks(block_size),
            )
        return hashes

    def _seed(self, model: str, block_size: int) -> BlockHash:
        seed = self._seeds.get((model, block_size))
        if seed is None:
            if len(self._seeds) >= 1024:  # model names come from clients: keep this bounded
                self._seeds.clear()
            seed = self._seeds[model, block_size] = hash_seed(model, block_size)
        return seed

    # -- extension points ----------------------------------------------------------------------
    def produce(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None:
        if not candidates:
            return
        size = self._default_block_size
        if self.auto_tune:
            reported = {None if (m := c.metrics) is None else m.block_size for c in candidates}
            if len(reported) > 1:
                self._produce_grouped(state, request, candidates)
                return
            (only,) = reported
            if only:
                size = self.index_block_size(only)
        self._produce_for(state, request, candidates, size)

    def _produce_grouped(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None:
        """Endpoints report different block sizes: one prompt hashing and lookup per size."""
        groups: dict[int, list[Candidate]] = {}
        for c in candidates:
            groups.setdefault(self.block_size_for(c), []).append(c)
        for size, group in groups.items():
            self._produce_for(state, request, group, size)

    def _produce_for(
        self,
        state: CycleState,
        request: InferenceRequest,
        candidates: Sequence[Candidate],
        block_size: int,
    ) -> None:
        hashes = self.prompt_hashes(state, request, block_size)
        total = len(hashes)
        counts = self.index.match(hashes)
        # PrefixMatch is immutable: one object per distinct match length, shared by candidates.
        shared = {0: PrefixMatch(0, total, block_size)}
        for matched in counts.values():
            if matched not in shared:
                shared[matched] = PrefixMatch(matched, total, block_size)
        no_match = shared[0]
        if not counts:
            for c in candidates:
                c.attributes.put(PREFIX_MATCH, no_match)
            return
        for c in candidates:
            depth = counts.get(c.endpoint.name)
            c.attributes.put(PREFIX_MATCH, no_match if depth is None else shared[depth])

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        target = result.target
        block_size = self.block_size_for(target)
        hashes = self.prompt_hashes(result.state, request, block_size)
        if hashes:
            self.index.add(
                target.endpoint.name, hashes, capacity=self.capacity_for(target, block_size)
            )

    def forget(self, endpoint: str) -> None:
        """Drop an endpoint's history (it left the pool, or restarted with an empty cache)."""
        self.index.forget(endpoint)
