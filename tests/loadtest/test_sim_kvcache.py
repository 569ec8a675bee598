"""KV block pool and prefix cache: allocation, ref counting, chained hashes, LRU eviction."""

from __future__ import annotations

import pytest

from loadtest.sim.kvcache import KVCache, hash_prompt_blocks


def test_hashes_cover_only_full_blocks() -> None:
    assert len(hash_prompt_blocks(list(range(47)), 16)) == 2
    assert len(hash_prompt_blocks(list(range(48)), 16)) == 3
    assert hash_prompt_blocks(list(range(15)), 16) == []


def test_hashes_are_chained_on_the_whole_prefix() -> None:
    block = list(range(16))
    first = hash_prompt_blocks([*block, *block], 16)
    # The same tokens after a different first block hash differently: position matters.
    other = hash_prompt_blocks([*range(100, 116), *block], 16)
    assert first[0] != first[1]
    assert first[1] != other[1]
    # Same prefix, different tail: the shared blocks hash identically.
    assert hash_prompt_blocks([*block, *range(50, 66)], 16)[0] == first[0]


def test_hashes_are_deterministic() -> None:
    tokens = list(range(1000, 1064))
    assert hash_prompt_blocks(tokens, 16) == hash_prompt_blocks(list(tokens), 16)
    assert hash_prompt_blocks(tokens, 16, root=1) != hash_prompt_blocks(tokens, 16, root=2)


def test_allocate_until_full_then_none_without_side_effects() -> None:
    kv = KVCache(num_blocks=4, block_size=16)
    first = kv.allocate(3)
    assert first is not None
    assert len(set(first)) == 3
    assert kv.allocate(2) is None
    assert kv.num_free_blocks == 1
    assert kv.usage == pytest.approx(0.75)
    kv.release(first)
    assert kv.num_free_blocks == 4
    assert kv.usage == 0.0


def test_shared_blocks_are_ref_counted() -> None:
    kv = KVCache(num_blocks=4, block_size=16)
    blocks = kv.allocate(2)
    assert blocks is not None
    hashes = [11, 22]
    for block, block_hash in zip(blocks, hashes, strict=True):
        kv.register(block, block_hash)
    hits = kv.match_prefix(hashes, max_blocks=2)
    assert hits == blocks
    kv.acquire(hits)
    assert [kv.ref_count(b) for b in blocks] == [2, 2]
    kv.release(blocks)
    assert kv.num_in_use == 2  # still held by the second request
    kv.release(hits)
    assert kv.num_in_use == 0
    # Released but cached: still found, and reusable without a new allocation.
    assert kv.match_prefix(hashes, max_blocks=2) == blocks
    assert kv.num_cached_blocks == 2


def test_match_prefix_stops_at_first_miss_and_at_max_blocks() -> None:
    kv = KVCache(num_blocks=8, block_size=16)
    blocks = kv.allocate(3)
    assert blocks is not None
    for block, block_hash in zip(blocks, [1, 2, 3], strict=True):
        kv.register(block, block_hash)
    assert kv.match_prefix([1, 2, 99, 3], max_blocks=10) == blocks[:2]
    assert kv.match_prefix([1, 2, 3], max_blocks=1) == blocks[:1]
    assert kv.match_prefix([99, 1], max_blocks=10) == []


def test_evicts_least_recently_released_cached_blocks_first() -> None:
    kv = KVCache(num_blocks=4, block_size=16)
    old = kv.allocate(2)
    new = kv.allocate(2)
    assert old is not None
    assert new is not None
    for block, block_hash in zip([*old, *new], [1, 2, 3, 4], strict=True):
        kv.register(block, block_hash)
    kv.release(old)
    kv.release(new)
    assert kv.num_free_blocks == 4
    taken = kv.allocate(2)
    assert taken is not None
    assert set(taken) == set(old)
    assert kv.match_prefix([1], max_blocks=1) == []
    assert kv.match_prefix([3, 4], max_blocks=2) == new


def test_within_a_sequence_the_tail_is_evicted_before_the_prefix() -> None:
    kv = KVCache(num_blocks=3, block_size=16)
    blocks = kv.allocate(3)
    assert blocks is not None
    for block, block_hash in zip(blocks, [1, 2, 3], strict=True):
        kv.register(block, block_hash)
    kv.release(blocks)
    taken = kv.allocate(1)
    assert taken == [blocks[2]]
    assert kv.match_prefix([1, 2, 3], max_blocks=3) == blocks[:2]


def test_never_hashed_blocks_are_used_before_evicting_cached_ones() -> None:
    kv = KVCache(num_blocks=3, block_size=16)
    cached = kv.allocate(1)
    assert cached is not None
    kv.register(cached[0], 42)
    kv.release(cached)
    fresh = kv.allocate(2)
    assert fresh is not None
    assert cached[0] not in fresh
    assert kv.match_prefix([42], max_blocks=1) == cached


def test_reacquiring_an_evictable_hit_removes_it_from_the_free_pool() -> None:
    kv = KVCache(num_blocks=2, block_size=16)
    blocks = kv.allocate(1)
    assert blocks is not None
    kv.register(blocks[0], 7)
    kv.release(blocks)
    hits = kv.match_prefix([7], max_blocks=1)
    assert kv.can_allocate(1, hits)
    assert not kv.can_allocate(2, hits)
    assert kv.can_allocate(2, [])
    kv.acquire(hits)
    assert kv.num_free_blocks == 1
    assert kv.num_in_use == 1


def test_duplicate_content_keeps_the_first_block_named() -> None:
    kv = KVCache(num_blocks=2, block_size=16)
    blocks = kv.allocate(2)
    assert blocks is not None
    kv.register(blocks[0], 5)
    kv.register(blocks[1], 5)
    assert kv.match_prefix([5], max_blocks=1) == [blocks[0]]
    kv.release(blocks)
    # The unnamed duplicate went back to the never-hashed pool and is reused first.
    assert kv.allocate(1) == [blocks[1]]


def test_can_allocate_honours_the_reserve() -> None:
    kv = KVCache(num_blocks=10, block_size=16)
    assert kv.can_allocate(9, [], reserve=1)
    assert not kv.can_allocate(10, [], reserve=1)
