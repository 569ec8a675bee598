"""The approximate prefix index: block hashing, LRU per endpoint, longest-prefix lookup."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from scheduler.datalayer.prefix_index import PrefixIndex, block_hashes, hash_seed

SEED = hash_seed("m", 4)


def hashes(tokens: list[int], *, block_size: int = 4, max_blocks: int = 100) -> list[bytes]:
    return block_hashes(
        tokens, block_size=block_size, seed=hash_seed("m", block_size), max_blocks=max_blocks
    )


# -- hashing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "block_size", "max_blocks", "expected"),
    [
        (0, 4, 100, 0),
        (3, 4, 100, 0),
        (4, 4, 100, 1),
        (11, 4, 100, 2),
        (12, 4, 100, 3),
        (40, 4, 5, 5),
        (2048, 64, 2048, 32),
    ],
    ids=["empty", "short", "one-block", "partial-tail-dropped", "exact", "capped", "2k-prompt"],
)
def test_only_full_blocks_are_hashed(
    length: int, block_size: int, max_blocks: int, expected: int
) -> None:
    out = hashes(list(range(length)), block_size=block_size, max_blocks=max_blocks)
    assert len(out) == expected
    assert all(len(h) == 8 for h in out)
    assert len(set(out)) == len(out)


def test_same_prefix_shares_hashes_up_to_the_first_difference() -> None:
    a = hashes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    b = hashes([1, 2, 3, 4, 5, 6, 7, 8, 99, 10, 11, 12, 13, 14, 15, 16])
    assert a[:2] == b[:2]
    assert a[2] != b[2]
    assert len(b) == 4


def test_different_first_block_shares_nothing() -> None:
    a = hashes([1, 2, 3, 4, 5, 6, 7, 8])
    b = hashes([0, 2, 3, 4, 5, 6, 7, 8])
    assert not set(a) & set(b)


def test_a_hash_stands_for_the_whole_prefix_not_the_block() -> None:
    # Same second block after different first blocks: different hashes (chaining).
    a = hashes([1, 1, 1, 1, 7, 7, 7, 7])
    b = hashes([2, 2, 2, 2, 7, 7, 7, 7])
    assert a[1] != b[1]


@pytest.mark.parametrize(
    ("seed_a", "seed_b"),
    [(("m", 4), ("other", 4)), (("m", 4), ("m", 8))],
    ids=["model", "block-size"],
)
def test_seed_separates_models_and_block_sizes(
    seed_a: tuple[str, int], seed_b: tuple[str, int]
) -> None:
    tokens = list(range(64))
    a = block_hashes(tokens, block_size=4, seed=hash_seed(*seed_a), max_blocks=100)
    b = block_hashes(tokens, block_size=4, seed=hash_seed(*seed_b), max_blocks=100)
    assert not set(a) & set(b)


def test_hashes_are_stable_across_processes() -> None:
    code = (
        "from scheduler.datalayer.prefix_index import block_hashes, hash_seed;"
        "print(block_hashes(list(range(64)), block_size=16, seed=hash_seed('m', 16),"
        " max_blocks=10)[-1].hex())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    local = block_hashes(list(range(64)), block_size=16, seed=hash_seed("m", 16), max_blocks=10)
    assert runs == {local[-1].hex()}


@pytest.mark.parametrize("bad", [-1, 2**32], ids=["negative", "too-large"])
def test_token_ids_must_fit_uint32(bad: int) -> None:
    with pytest.raises(ValueError, match="token ids"):
        hashes([1, 2, 3, bad])


# -- index -------------------------------------------------------------------------------------
A = hashes(list(range(40)))  # 10 blocks
B = hashes([7, *range(1, 40)])  # 10 blocks, nothing in common with A


def test_match_counts_leading_blocks_per_endpoint() -> None:
    index = PrefixIndex()
    index.add("full", A, capacity=100)
    index.add("half", A[:5], capacity=100)
    index.add("other", B, capacity=100)
    assert index.match(A) == {"full": 10, "half": 5}
    assert index.match(A[:3]) == {"full": 3, "half": 3}
    assert index.match(B) == {"other": 10}
    assert index.match([]) == {}


def test_match_stops_at_the_first_block_cached_nowhere() -> None:
    index = PrefixIndex()
    index.add("x", A[:3], capacity=100)
    # A request whose 4th block differs: its 5th block can never be matched even if some
    # endpoint held a block with the same hash further on.
    request = [*A[:3], b"unknown!", A[4]]
    index.add("y", [A[4]], capacity=100)
    assert index.match(request) == {"x": 3}


def test_update_only_touches_the_given_endpoint() -> None:
    index = PrefixIndex()
    index.add("chosen", A, capacity=100)
    assert index.blocks("chosen") == 10
    assert index.blocks("bystander") == 0
    assert index.endpoints == ["chosen"]


def test_lru_evicts_least_recent_blocks_at_capacity() -> None:
    index = PrefixIndex()
    index.add("e", A[:4], capacity=6)
    index.add("e", B[:4], capacity=6)
    # B is the more recent prompt; A lost its two deepest blocks, never its first ones
    assert index.blocks("e") == 6
    assert index.match(A) == {"e": 2}
    assert index.match(B) == {"e": 4}
    assert len(index) == 6


def test_touching_a_prefix_again_protects_it() -> None:
    index = PrefixIndex()
    index.add("e", A[:4], capacity=6)
    index.add("e", B[:4], capacity=6)  # evicts A's two deepest blocks
    index.add("e", A[:2], capacity=6)  # A's first blocks are now the most recent
    index.add("e", hashes([5, 5, 5, 5, 6, 6, 6, 6]), capacity=6)  # evicts B's deepest two
    assert index.match(A) == {"e": 2}
    assert index.match(B) == {"e": 2}


def test_capacity_truncates_a_long_prompt_to_its_first_blocks() -> None:
    index = PrefixIndex()
    index.add("e", A, capacity=3)
    assert index.match(A) == {"e": 3}


def test_shrinking_capacity_evicts_on_next_update() -> None:
    index = PrefixIndex()
    index.add("e", A, capacity=10)
    index.add("e", A[:1], capacity=4)
    assert index.match(A) == {"e": 4}


def test_forget_drops_an_endpoint_and_its_orphaned_hashes() -> None:
    index = PrefixIndex()
    index.add("gone", A, capacity=100)
    index.add("stays", A[:2], capacity=100)
    index.forget("gone")
    index.forget("never-seen")
    assert index.match(A) == {"stays": 2}
    assert index.endpoints == ["stays"]
    assert len(index) == 2


def test_holders_follow_adds_evictions_and_forgets() -> None:
    index = PrefixIndex()
    index.add("a", A[:2], capacity=2)
    index.add("b", A[:1], capacity=1)
    index.add("c", A[:1], capacity=1)
    assert index.holders(A[0]) == {"a", "b", "c"}
    assert index.holders(A[1]) == {"a"}
    index.add("b", B[:1], capacity=1)  # b evicts A[0]
    index.forget("c")
    assert index.holders(A[0]) == {"a"}
    index.forget("a")
    assert index.holders(A[0]) == frozenset()
    assert len(index) == 1  # B[0], held by b


@pytest.mark.parametrize("capacity", [0, -5], ids=["zero", "negative"])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        PrefixIndex().add("e", A, capacity=capacity)


def test_match_equals_brute_force_count_under_random_traffic() -> None:
    """llm-d's rule (count the walked blocks each endpoint holds) on a busy, evicting index."""
    rng = random.Random(3)
    prefixes = [[rng.randrange(50) for _ in range(rng.choice((8, 16, 24)))] for _ in range(6)]
    index = PrefixIndex()
    lrus: dict[str, list[bytes]] = {}

    def brute(request: list[bytes]) -> dict[str, int]:
        held = {ep: set(index_hashes) for ep, index_hashes in lrus.items()}
        counts: dict[str, int] = {}
        for h in request:
            holders = [ep for ep, hs in held.items() if h in hs]
            if not holders:
                break
            for ep in holders:
                counts[ep] = counts.get(ep, 0) + 1
        return counts

    for _ in range(400):
        prompt = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(0, 12))]
        request = hashes(prompt)
        assert index.match(request) == brute(request)
        endpoint = f"e{rng.randrange(5)}"
        index.add(endpoint, request, capacity=12)
        lru = [h for h in lrus.get(endpoint, []) if h not in request[:12]]
        lrus[endpoint] = (lru + list(reversed(request[:12])))[-12:]


def test_uint32_arrays_hash_like_lists() -> None:
    from array import array

    from scheduler.datalayer.prefix_index import block_hashes, hash_seed

    tokens = [(i * 7919) % 100_000 for i in range(1000)]
    seed = hash_seed("m", 64)
    as_list = block_hashes(tokens, block_size=64, seed=seed, max_blocks=100)
    as_array = block_hashes(array("I", tokens), block_size=64, seed=seed, max_blocks=100)
    assert as_array == as_list
    assert len(as_list) == 15
    assert block_hashes(array("I", tokens), block_size=64, seed=seed, max_blocks=3) == as_list[:3]
