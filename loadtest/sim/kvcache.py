"""The simulated GPU KV cache: a fixed pool of blocks with vLLM-style automatic prefix caching.

Why it matters for routing: KV pressure is what makes a busy pod queue or preempt, and a prefix
hit is what makes a pod that already saw a conversation cheaper to send it to. Both must come
from real bookkeeping, not a hit-rate knob.

Model (vLLM V1's block pool, simplified):

- ``num_blocks`` blocks of ``block_size`` tokens. A block is *in use* while a running request
  holds it (ref count > 0); several requests share a cached prefix block.
- A full prompt block is identified by a chained hash, ``hash((parent_hash, block_token_ids))``,
  so a block only matches when everything before it matches too.
- A block whose ref count drops to 0 keeps its hash and stays reusable. It is evicted, least
  recently released first, only when a fresh block is needed and no never-hashed block is left.
- Usage is the fraction of blocks in use, as ``vllm:kv_cache_usage_perc``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

# The chain's root. vLLM seeds it per process; a constant keeps runs reproducible.
ROOT_BLOCK_HASH = 0x5EED_B10C


def hash_prompt_blocks(
    token_ids: Sequence[int], block_size: int, *, root: int = ROOT_BLOCK_HASH
) -> list[int]:
    """Chained hashes of every *full* block of ``token_ids`` (a partial tail is not cached).

    Python's hash of a tuple of ints is deterministic across processes, and fast.
    """
    hashes: list[int] = []
    parent = root
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


class KVCache:
    """Block allocator with ref counting, a hash -> block index and an LRU of evictable blocks."""

    __slots__ = (
        "_block_hash",
        "_block_of_hash",
        "_evictable",
        "_never_hashed",
        "_num_in_use",
        "_ref_count",
        "block_size",
        "num_blocks",
    )

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._ref_count = [0] * num_blocks
        self._block_hash: list[int | None] = [None] * num_blocks
        self._block_of_hash: dict[int, int] = {}
        # Free blocks holding nothing reusable; popped first so cached blocks live longer.
        self._never_hashed: list[int] = list(range(num_blocks - 1, -1, -1))
        # Free blocks that still hold a cached prefix, least recently released first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._num_in_use = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take (never-hashed plus evictable cached ones)."""
        return len(self._never_hashed) + len(self._evictable)

    @property
    def num_in_use(self) -> int:
        return self._num_in_use

    @property
    def num_cached_blocks(self) -> int:
        """Blocks with a registered hash, in use or not."""
        return len(self._block_of_hash)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running requests, 0..1."""
        return self._num_in_use / self.num_blocks

    def ref_count(self, block: int) -> int:
        return self._ref_count[block]

    def match_prefix(self, block_hashes: Sequence[int], max_blocks: int) -> list[int]:
        """The cached blocks of the longest chain prefix of ``block_hashes`` (at most max)."""
        found: list[int] = []
        block_of_hash = self._block_of_hash
        for block_hash in block_hashes[:max_blocks]:
            block = block_of_hash.get(block_hash)
            if block is None:
                break
            found.append(block)
        return found

    def can_allocate(self, num_new: int, hit_blocks: Sequence[int], *, reserve: int = 0) -> bool:
        """Whether ``num_new`` fresh blocks fit after re-using ``hit_blocks``, keeping
        ``reserve`` blocks free. A hit block that is currently evictable leaves the free pool
        when it is re-used, so it counts against the space too."""
        ref_count = self._ref_count
        revived = sum(1 for block in hit_blocks if ref_count[block] == 0)
        return self.num_free_blocks - revived - num_new >= reserve

    def acquire(self, blocks: Sequence[int]) -> None:
        """Take a reference on cached blocks found by :meth:`match_prefix`."""
        ref_count = self._ref_count
        for block in blocks:
            if ref_count[block] == 0:
                del self._evictable[block]
                self._num_in_use += 1
            ref_count[block] += 1

    def allocate(self, num_blocks: int) -> list[int] | None:
        """``num_blocks`` fresh blocks (ref count 1), evicting LRU cached ones if needed;
        ``None`` when not enough blocks are free (nothing is taken then)."""
        if num_blocks > self.num_free_blocks:
            return None
        blocks: list[int] = []
        never_hashed = self._never_hashed
        for _ in range(num_blocks):
            if never_hashed:
                block = never_hashed.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                self._forget_hash(block)
            self._ref_count[block] = 1
            blocks.append(block)
        self._num_in_use += num_blocks
        return blocks

    def register(self, block: int, block_hash: int) -> None:
        """Record that ``block`` now holds the computed content named by ``block_hash``.

        If another block already holds the same content (two requests prefilled the same
        prefix concurrently), the index keeps the first one and this block stays unnamed.
        """
        if self._block_hash[block] is None and block_hash not in self._block_of_hash:
            self._block_of_hash[block_hash] = block
            self._block_hash[block] = block_hash

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block. Freed in reverse so a sequence's tail blocks,
        the least likely to be shared, are evicted before its prefix."""
        ref_count = self._ref_count
        block_hash = self._block_hash
        for block in reversed(blocks):
            ref_count[block] -= 1
            if ref_count[block] == 0:
                self._num_in_use -= 1
                if block_hash[block] is None:
                    self._never_hashed.append(block)
                else:
                    self._evictable[block] = None

    def _forget_hash(self, block: int) -> None:
        block_hash = self._block_hash[block]
        if block_hash is not None:
            del self._block_of_hash[block_hash]
            self._block_hash[block] = None
