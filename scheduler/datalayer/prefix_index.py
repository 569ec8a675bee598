"""Approximate prefix-cache index: which endpoint likely holds which prompt prefix.

llm-d's approximate prefix cache (``approx-prefix-cache-producer``), adapted. The gateway cannot
see the model servers' KV caches, so it remembers where it sent each prompt: an endpoint that
served a prompt recently probably still holds its prefix in cache.

Blocks and hashes. A prompt's token ids are cut into blocks of ``block_size`` tokens; only full
blocks count (model servers cache full blocks only), at most ``max_blocks`` of them. Block ``i``
is identified by a prefix hash ``h_i = blake2b-64(seed || block_0 || ... || block_i)`` (token ids
as uint32 little-endian), so ``h_i`` stands for the whole prompt up to its block: two prompts share
it only if their first ``i + 1`` blocks are equal. That is the property of llm-d's chain
``h_i = H(h_{i-1} || block_i)``, computed with one running hasher (one update and one digest per
block). The seed is derived from the model name and the block size, so different models or block
sizes never share a hash. blake2b (not Python's ``hash()``, randomised per process for bytes and
free to change between Python versions) keeps hashes stable across processes and runs.

Index. Per endpoint, an LRU of the block hashes it was sent, with a capacity in blocks (sized
from the endpoint's KV cache by the caller); plus a map hash -> endpoints holding it.
:meth:`PrefixIndex.add` records a dispatch. It touches the blocks last to first, so a prompt's
first blocks are its most recent: an endpoint then always loses a block before the blocks that
precede it (as vLLM, which frees a finished request's tail blocks first), and what it holds of
any prompt is a prefix.

Lookup. :meth:`PrefixIndex.match` walks the request's hashes in order, stops at the first hash
no endpoint holds, and counts for each endpoint how many of the walked blocks it holds (llm-d's
rule). Because holdings are prefixes, an endpoint's count is the depth of the deepest walked
block it holds, which the walk computes from set sizes without touching every (block, endpoint)
pair: the cost is O(blocks + endpoints that match), not O(blocks x endpoints).

Memory: 130-180 bytes per (endpoint, block) entry (measured with tracemalloc), so llm-d's
default capacity of 31,250 blocks is 4-6 MB per endpoint when full.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b

HASH_BYTES = 8

BlockHash = bytes
"""An 8-byte prefix hash of a block (and everything before it)."""


def hash_seed(model: str, block_size: int) -> BlockHash:
    """The chain's starting value: distinct per model and per block size."""
    return blake2b(f"{model}\0{block_size}".encode(), digest_size=HASH_BYTES).digest()


def block_hashes(
    tokens: Sequence[int], *, block_size: int, seed: BlockHash, max_blocks: int
) -> list[BlockHash]:
    """Prefix hashes of the full ``block_size``-token blocks of ``tokens``, at most ``max_blocks``.

    Token ids must fit in an unsigned 32-bit integer (as in llm-d, which packs them as uint32).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    count = min(len(tokens) // block_size, max_blocks)
    if count <= 0:
        return []
    used = count * block_size
    if isinstance(tokens, array) and tokens.typecode == "I" and tokens.itemsize == 4:
        # The gateway's prompts already are uint32 arrays: hash their memory, no copy.
        raw: bytes | memoryview = memoryview(tokens).cast("B")
    else:
        try:
            # Converting a short unused tail is cheaper than copying the list to cut it off.
            packed = array("I", tokens if len(tokens) - used < used else tokens[:used])
        except OverflowError as exc:
            raise ValueError("token ids must lie in [0, 2**32)") from exc
        if packed.itemsize != 4:  # pragma: no cover - no mainstream platform has this
            raise RuntimeError("array('I') is not 4 bytes wide on this platform")
        raw = packed.tobytes()
    step = block_size * 4
    running = blake2b(seed, digest_size=HASH_BYTES)
    update, digest = running.update, running.digest
    hashes: list[BlockHash] = []
    append = hashes.append
    for start in range(0, used * 4, step):
        update(raw[start : start + step])
        append(digest())
    return hashes


Holders = str | set[str]
"""The endpoints holding a block: the name alone when there is one (most blocks: a prompt's own
tail), a set when several share it. Saves a set per block and keeps the garbage collector's work
small: a full index is ~200k blocks."""


class PrefixIndex:
    """Block hashes per endpoint (LRU) and endpoints per block hash. Not thread-safe."""

    __slots__ = ("_holders", "_lrus")

    def __init__(self) -> None:
        self._holders: dict[BlockHash, Holders] = {}
        self._lrus: dict[str, OrderedDict[BlockHash, None]] = {}

    def match(self, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """For each endpoint holding the first block, how many of the leading blocks it holds.

        Endpoints that hold nothing are absent from the result.
        """
        holders = self._holders
        walked: list[Holders] = []
        for h in hashes:
            held_by = holders.get(h)
            if held_by is None:
                break
            walked.append(held_by)
        counts: dict[str, int] = {}
        deeper = 0  # how many endpoints hold the next deeper block
        for depth in range(len(walked), 0, -1):
            held_by = walked[depth - 1]
            # Holdings are prefixes (see the module doc), so the holders of a block include the
            # holders of the next one: the same number means the same endpoints, nobody new.
            if isinstance(held_by, str):
                if not deeper:
                    counts[held_by] = depth
                    deeper = 1
            elif len(held_by) != deeper:
                counts.update(dict.fromkeys(held_by.difference(counts), depth))
                deeper = len(held_by)
        return counts

    def add(self, endpoint: str, hashes: Sequence[BlockHash], *, capacity: int) -> None:
        """Record that ``endpoint`` was sent a prompt with these block hashes.

        ``capacity`` bounds the endpoint's LRU, in blocks; the least recent blocks are evicted.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        lru = self._lrus.get(endpoint)
        if lru is None:
            lru = self._lrus[endpoint] = OrderedDict()
        holders = self._holders
        touch = lru.move_to_end
        # Last block first: the prompt's first blocks end up the most recent (module doc).
        for h in reversed(hashes[:capacity]):
            if h in lru:
                touch(h)
                continue
            lru[h] = None
            held_by = holders.setdefault(h, endpoint)
            if held_by is endpoint:  # nobody held it: one dict lookup, not two
                continue
            if isinstance(held_by, str):
                holders[h] = {held_by, endpoint}
            else:
                held_by.add(endpoint)
        if len(lru) > capacity:
            evict = lru.popitem
            for _ in range(len(lru) - capacity):
                # _release, inlined (this runs per evicted block): pop, put back if shared
                evicted = evict(last=False)[0]
                held_by = holders.pop(evicted)
                if not isinstance(held_by, str):
                    held_by.discard(endpoint)
                    if len(held_by) == 1:
                        (holders[evicted],) = held_by
                    else:
                        holders[evicted] = held_by

    def forget(self, endpoint: str) -> None:
        """Drop everything recorded for an endpoint (it left the pool or restarted)."""
        lru = self._lrus.pop(endpoint, None)
        if lru is not None:
            for h in lru:
                self._release(h, endpoint)

    def _release(self, h: BlockHash, endpoint: str) -> None:
        held_by = self._holders[h]
        if isinstance(held_by, str):
            del self._holders[h]
            return
        held_by.discard(endpoint)
        if len(held_by) == 1:
            (self._holders[h],) = held_by

    def holders(self, h: BlockHash) -> frozenset[str]:
        """The endpoints holding a block."""
        held_by = self._holders.get(h)
        if held_by is None:
            return frozenset()
        return frozenset((held_by,)) if isinstance(held_by, str) else frozenset(held_by)

    def blocks(self, endpoint: str) -> int:
        """How many blocks the index holds for ``endpoint``."""
        lru = self._lrus.get(endpoint)
        return 0 if lru is None else len(lru)

    @property
    def endpoints(self) -> list[str]:
        return sorted(self._lrus)

    def __len__(self) -> int:
        """Distinct block hashes held by any endpoint."""
        return len(self._holders)
