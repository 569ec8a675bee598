"""Pickers: order, fallbacks, tie-breaks and sampling frequencies under a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from scheduler.framework.errors import PluginConfigError
from scheduler.framework.params import Params
from scheduler.framework.plugins import Picker
from scheduler.framework.types import CycleState, ScoredCandidate
from scheduler.plugins.pickers.max_score import MaxScorePicker
from scheduler.plugins.pickers.random_pick import RandomPicker, random_order
from scheduler.plugins.pickers.round_robin import RoundRobinPicker
from scheduler.plugins.pickers.weighted_random import WeightedRandomPicker
from tests.support.builders import make_handle, make_request, scored

PICKERS = [MaxScorePicker, WeightedRandomPicker, RandomPicker]


def pick(picker: Picker, candidates: list[ScoredCandidate]) -> list[str]:
    return [c.name for c in picker.pick(CycleState(), make_request(), candidates)]


def first_counts(picker: Picker, candidates: list[ScoredCandidate], rounds: int) -> Counter[str]:
    return Counter(pick(picker, candidates)[0] for _ in range(rounds))


# -- max-score-picker --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ((("a", 0.2), ("b", 0.9), ("c", 0.5)), ["b", "c", "a"]),
        ((("a", 3.0), ("b", 0.0)), ["a", "b"]),
        ((("only", 0.0),), ["only"]),
        ((("a", 7.0), ("b", 6.9999), ("c", 7.0001)), ["c", "a", "b"]),
    ],
    ids=["three", "two", "single", "close-scores"],
)
def test_max_score_orders_every_candidate_best_first(
    pairs: tuple[tuple[str, float], ...], expected: list[str]
) -> None:
    picker = MaxScorePicker("p", rng=random.Random(0))
    assert pick(picker, scored(*pairs)) == expected


def test_max_score_breaks_ties_with_the_rng() -> None:
    tied = scored(("a", 1.0), ("b", 1.0), ("c", 1.0), ("low", 0.5))
    counts = first_counts(MaxScorePicker("p", rng=random.Random(42)), tied, 3000)
    assert set(counts) == {"a", "b", "c"}
    assert all(900 <= n <= 1100 for n in counts.values()), counts
    # the lower candidate is always last
    assert all(
        pick(MaxScorePicker("p", rng=random.Random(s)), tied)[-1] == "low" for s in range(20)
    )


def test_max_score_is_deterministic_given_the_seed() -> None:
    tied = scored(*((f"e{i}", 1.0) for i in range(8)))
    runs = [
        [pick(MaxScorePicker("p", rng=random.Random(seed)), tied) for _ in range(5)]
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_max_score_does_not_draw_random_numbers_without_ties() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    pick(MaxScorePicker("p", rng=rng), scored(("a", 0.1), ("b", 0.2), ("c", 0.3)))
    assert rng.getstate() == state


def test_max_score_shuffles_every_group_of_equal_scores() -> None:
    candidates = scored(("a", 5.0), ("b", 5.0), ("c", 5.0), ("mid", 3.0), ("y", 1.0), ("z", 1.0))
    heads: set[str] = set()
    tails: set[tuple[str, ...]] = set()
    for seed in range(40):
        order = pick(MaxScorePicker("p", rng=random.Random(seed)), candidates)
        assert sorted(order[:3]) == ["a", "b", "c"]
        assert order[3] == "mid"
        heads.add(order[0])
        tails.add(tuple(order[4:]))
    assert heads == {"a", "b", "c"}
    assert tails == {("y", "z"), ("z", "y")}


# -- weighted-random-picker --------------------------------------------------------------------
def test_weighted_random_first_pick_frequencies_follow_the_scores() -> None:
    candidates = scored(("a", 1.0), ("b", 2.0), ("c", 7.0))
    rounds = 20000
    counts = first_counts(WeightedRandomPicker("w", rng=random.Random(1234)), candidates, rounds)
    assert counts["a"] / rounds == pytest.approx(0.1, abs=0.015)
    assert counts["b"] / rounds == pytest.approx(0.2, abs=0.015)
    assert counts["c"] / rounds == pytest.approx(0.7, abs=0.015)


def test_weighted_random_never_prefers_a_zero_score() -> None:
    candidates = scored(("zero1", 0.0), ("pos", 0.01), ("zero2", 0.0))
    picker = WeightedRandomPicker("w", rng=random.Random(5))
    orders = [pick(picker, candidates) for _ in range(500)]
    assert all(order[0] == "pos" for order in orders)
    # the zero-scored fallbacks come last, in random order
    assert {tuple(order[1:]) for order in orders} == {("zero1", "zero2"), ("zero2", "zero1")}


def test_weighted_random_all_zero_is_uniform() -> None:
    candidates = scored(("a", 0.0), ("b", 0.0), ("c", 0.0), ("d", -1.0))
    counts = first_counts(WeightedRandomPicker("w", rng=random.Random(9)), candidates, 4000)
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(850 <= n <= 1150 for n in counts.values()), counts


# -- random-picker -----------------------------------------------------------------------------
def test_random_picker_is_uniform_and_ignores_scores() -> None:
    candidates = scored(("a", 100.0), ("b", 0.0), ("c", 0.5))
    counts = first_counts(RandomPicker("r", rng=random.Random(11)), candidates, 3000)
    assert all(900 <= n <= 1100 for n in counts.values()), counts


def test_random_order_is_a_permutation() -> None:
    rng = random.Random(0)
    for n in (0, 1, 2, 17):
        assert sorted(random_order(rng, n)) == list(range(n))


# -- round-robin-picker ------------------------------------------------------------------------
def test_round_robin_cycles_through_the_pool() -> None:
    picker = RoundRobinPicker("rr")
    candidates = scored(("a", 0.0), ("b", 9.0), ("c", 1.0))
    assert [pick(picker, candidates) for _ in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_round_robin_survives_a_shrinking_pool() -> None:
    picker = RoundRobinPicker("rr")
    pick(picker, scored(("a", 0.0), ("b", 0.0), ("c", 0.0)))
    pick(picker, scored(("a", 0.0), ("b", 0.0), ("c", 0.0)))
    assert pick(picker, scored(("a", 0.0), ("b", 0.0))) == ["a", "b"]


# -- common ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", PICKERS, ids=lambda c: c.TYPE)
def test_every_picker_returns_each_candidate_once(cls: type[MaxScorePicker]) -> None:
    picker = cls.create("p", Params({}), make_handle(seed=3))
    candidates = scored(*((f"e{i}", i % 3 / 2) for i in range(10)))
    assert sorted(pick(picker, candidates)) == sorted(f"e{i}" for i in range(10))


@pytest.mark.parametrize("cls", PICKERS, ids=lambda c: c.TYPE)
def test_max_num_of_endpoints_is_accepted_and_validated(cls: type[MaxScorePicker]) -> None:
    assert cls.create("p", Params({}), make_handle()).max_num_of_endpoints == 1
    assert (
        cls.create("p", Params({"maxNumOfEndpoints": 3}), make_handle()).max_num_of_endpoints == 3
    )
    with pytest.raises(PluginConfigError) as info:
        cls.create("p", Params({"maxNumOfEndpoints": 0}), make_handle())
    assert info.value.field == "maxNumOfEndpoints"
