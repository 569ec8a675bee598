"""``approx-prefix-cache-producer``: PREFIX_MATCH on every candidate, index updated at dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from scheduler.datalayer import prefix_index
from scheduler.framework.attributes import PREFIX_MATCH, PrefixMatch
from scheduler.framework.params import Params
from scheduler.framework.types import (
    Candidate,
    CycleState,
    InferenceRequest,
    ProfileResult,
    SchedulingResult,
)
from scheduler.plugins.producers import approx_prefix
from scheduler.plugins.producers.approx_prefix import PROMPT_BLOCKS, ApproxPrefixCacheProducer
from tests.support.builders import make_candidate, make_handle, make_request

PROMPT = list(range(1000, 1000 + 640))  # 10 blocks of 64


def produce(
    producer: ApproxPrefixCacheProducer, request: InferenceRequest, candidates: Sequence[Candidate]
) -> CycleState:
    state = CycleState()
    producer.produce(state, request, candidates)
    return state


def dispatch(
    producer: ApproxPrefixCacheProducer,
    request: InferenceRequest,
    candidates: Sequence[Candidate],
    target: str,
) -> CycleState:
    """produce, then pre_request as if the scheduler had picked ``target``."""
    state = produce(producer, request, candidates)
    chosen = next(c for c in candidates if c.name == target)
    result = SchedulingResult(
        primary=ProfileResult(profile="p", targets=[chosen]), candidates=candidates, state=state
    )
    producer.pre_request(request, result)
    return state


def matches(candidates: Sequence[Candidate]) -> dict[str, PrefixMatch | None]:
    return {c.name: c.attributes.get(PREFIX_MATCH) for c in candidates}


def pool(**kwargs: Any) -> list[Candidate]:
    return [make_candidate(name, **kwargs) for name in ("a", "b", "c")]


def test_every_candidate_gets_a_match_and_only_the_chosen_one_learns() -> None:
    producer = ApproxPrefixCacheProducer("p")
    request = make_request(PROMPT)
    candidates = pool()
    dispatch(producer, request, candidates, "b")
    assert matches(candidates) == dict.fromkeys("abc", PrefixMatch(0, 10, 64))

    again = pool()
    produce(producer, make_request(PROMPT[:320] + [1, 2, 3] * 100), again)
    assert matches(again) == {
        "a": PrefixMatch(0, 9, 64),
        "b": PrefixMatch(5, 9, 64),
        "c": PrefixMatch(0, 9, 64),
    }
    assert producer.index.endpoints == ["b"]


def test_pre_request_reuses_the_hashes_from_the_cycle_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = prefix_index.block_hashes

    def counting(tokens: Sequence[int], **kwargs: Any) -> list[bytes]:
        calls.append(len(tokens))
        return real(tokens, **kwargs)

    monkeypatch.setattr(approx_prefix, "block_hashes", counting)
    producer = ApproxPrefixCacheProducer("p")
    state = dispatch(producer, make_request(PROMPT), pool(), "a")
    assert calls == [len(PROMPT)]
    blocks = state.get(PROMPT_BLOCKS)
    assert blocks is not None
    assert list(blocks.by_block_size) == [64]


def test_pre_request_without_produce_still_records_the_dispatch() -> None:
    producer = ApproxPrefixCacheProducer("p")
    candidates = pool()
    result = SchedulingResult(
        primary=ProfileResult(profile="p", targets=[candidates[2]]),
        candidates=candidates,
        state=CycleState(),
    )
    producer.pre_request(make_request(PROMPT), result)
    assert producer.index.match(producer.prompt_hashes(CycleState(), make_request(PROMPT), 64)) == {
        "c": 10
    }


@pytest.mark.parametrize(
    ("params", "reported", "expected"),
    [
        ({}, None, 64),
        ({}, 16, 64),
        ({}, 48, 96),
        ({}, 128, 128),
        ({}, 1, 64),
        ({"minBlockSizeTokens": 1}, 16, 16),
        ({"minBlockSizeTokens": 1, "blockSizeTokens": 32}, None, 32),
        ({"autoTune": False}, 128, 64),
        ({"autoTune": False, "blockSizeTokens": 100}, 16, 100),
    ],
    ids=[
        "default",
        "vllm-16-clamped-to-64",
        "aligned-to-server-blocks",
        "large-kept",
        "sglang-page-1",
        "no-minimum",
        "configured-default",
        "auto-tune-off",
        "auto-tune-off-configured",
    ],
)
def test_index_block_size(params: dict[str, Any], reported: int | None, expected: int) -> None:
    producer = ApproxPrefixCacheProducer.create("p", Params(params), make_handle())
    candidate = make_candidate("a", block_size=reported)
    produce(producer, make_request(PROMPT), [candidate])
    match = candidate.attributes.get(PREFIX_MATCH)
    assert match is not None
    assert match.block_size == expected
    assert match.total_blocks == len(PROMPT) // expected


def test_endpoints_with_different_block_sizes_are_matched_at_their_own_size() -> None:
    producer = ApproxPrefixCacheProducer("p", min_block_size_tokens=1)
    candidates = [
        make_candidate("small", block_size=16),
        make_candidate("large", block_size=64),
        make_candidate("unknown", metrics=False),
    ]
    dispatch(producer, make_request(PROMPT), candidates, "small")
    again = [
        make_candidate("small", block_size=16),
        make_candidate("large", block_size=64),
        make_candidate("unknown", metrics=False),
    ]
    produce(producer, make_request(PROMPT), again)
    assert matches(again) == {
        "small": PrefixMatch(40, 40, 16),
        "large": PrefixMatch(0, 10, 64),
        "unknown": PrefixMatch(0, 40, 16),
    }


@pytest.mark.parametrize(
    ("params", "block_size", "num_gpu_blocks", "capacity"),
    [
        ({}, 16, 1000, 250),
        ({}, 64, 1000, 1000),
        ({}, None, None, 31250),
        ({}, 16, None, 31250),
        ({"lruCapacityPerServer": 7}, None, None, 7),
        ({"autoTune": False, "lruCapacityPerServer": 7}, 16, 1000, 7),
        ({}, 16, 2, 1),
    ],
    ids=[
        "kv-cache-in-index-blocks",
        "same-size",
        "unreported",
        "no-block-count",
        "configured",
        "auto-tune-off",
        "at-least-one",
    ],
)
def test_lru_capacity(
    params: dict[str, Any], block_size: int | None, num_gpu_blocks: int | None, capacity: int
) -> None:
    producer = ApproxPrefixCacheProducer.create("p", Params(params), make_handle())
    candidate = make_candidate("a", block_size=block_size, num_gpu_blocks=num_gpu_blocks)
    assert producer.capacity_for(candidate, producer.block_size_for(candidate)) == capacity


@pytest.mark.parametrize(
    ("params", "total"),
    [
        ({"maxPrefixBlocksToMatch": 4}, 4),
        ({"maxPrefixTokensToMatch": 200}, 3),
        ({"maxPrefixBlocksToMatch": 2, "maxPrefixTokensToMatch": 640}, 2),
        ({}, 10),
    ],
    ids=["blocks-cap", "tokens-cap", "smaller-cap-wins", "uncapped"],
)
def test_prompt_is_capped(params: dict[str, Any], total: int) -> None:
    producer = ApproxPrefixCacheProducer.create("p", Params(params), make_handle())
    candidate = make_candidate("a")
    produce(producer, make_request(PROMPT), [candidate])
    match = candidate.attributes.get(PREFIX_MATCH)
    assert match is not None
    assert match.total_blocks == total


def test_models_do_not_share_prefixes() -> None:
    producer = ApproxPrefixCacheProducer("p")
    dispatch(producer, make_request(PROMPT, model="llama"), pool(), "a")
    candidates = pool()
    produce(producer, make_request(PROMPT, model="qwen"), candidates)
    assert {m.matched_blocks for m in matches(candidates).values() if m} == {0}


def test_short_prompt_matches_nothing_and_records_nothing() -> None:
    producer = ApproxPrefixCacheProducer("p")
    candidates = pool()
    dispatch(producer, make_request(list(range(63))), candidates, "a")
    assert matches(candidates) == dict.fromkeys("abc", PrefixMatch(0, 0, 64))
    assert producer.index.endpoints == []


def test_forget_drops_an_endpoint() -> None:
    producer = ApproxPrefixCacheProducer("p")
    dispatch(producer, make_request(PROMPT), pool(), "a")
    producer.forget("a")
    candidates = pool()
    produce(producer, make_request(PROMPT), candidates)
    assert {m.matched_blocks for m in matches(candidates).values() if m} == {0}


def test_parameters_use_llm_d_names_and_defaults() -> None:
    params = Params(
        {
            "blockSizeTokens": 32,
            "minBlockSizeTokens": 128,
            "maxPrefixBlocksToMatch": 100,
            "maxPrefixTokensToMatch": 262144,
            "lruCapacityPerServer": 5000,
            "autoTune": False,
        }
    )
    producer = ApproxPrefixCacheProducer.create("p", params, make_handle())
    params.done()
    assert (
        producer.block_size_tokens,
        producer.min_block_size_tokens,
        producer.max_prefix_blocks_to_match,
        producer.max_prefix_tokens_to_match,
        producer.lru_capacity_per_server,
        producer.auto_tune,
    ) == (32, 128, 100, 262144, 5000, False)
    default = ApproxPrefixCacheProducer.create("p", Params({}), make_handle())
    assert (
        default.block_size_tokens,
        default.min_block_size_tokens,
        default.max_prefix_blocks_to_match,
        default.max_prefix_tokens_to_match,
        default.lru_capacity_per_server,
        default.auto_tune,
    ) == (16, 64, 2048, 0, 31250, True)
