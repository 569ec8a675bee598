"""Scorers: one table per scorer, hand-built candidates, exact expected scores."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from scheduler.framework.attributes import PREFIX_MATCH, PrefixMatch
from scheduler.framework.params import Params
from scheduler.framework.plugins import Scorer
from scheduler.framework.types import Candidate, CycleState
from scheduler.plugins.scorers import UNKNOWN_LOAD_SCORE, inverse_min_max
from scheduler.plugins.scorers.inflight_load import InflightLoadScorer
from scheduler.plugins.scorers.kv_cache_utilization import KvCacheUtilizationScorer
from scheduler.plugins.scorers.prefix_cache import PrefixCacheScorer
from scheduler.plugins.scorers.queue import QueueScorer
from scheduler.plugins.scorers.running_requests import RunningRequestsScorer
from tests.support.builders import make_candidate, make_handle, make_request

U = UNKNOWN_LOAD_SCORE


def run(scorer: Scorer, candidates: Sequence[Candidate]) -> list[float]:
    scores = list(scorer.score(CycleState(), make_request(), candidates))
    assert len(scores) == len(candidates)
    return scores


# -- inverse_min_max ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ([0, 5, 10], [1.0, 0.5, 0.0]),
        ([3, 3, 3], [1.0, 1.0, 1.0]),
        ([7], [1.0]),
        ([], []),
        ([None, 4, 0], [U, 0.0, 1.0]),
        ([None, None], [U, U]),
        ([None, 2, 2], [U, 1.0, 1.0]),
        ([0.25, 0.75], [1.0, 0.0]),
    ],
    ids=[
        "spread",
        "all-equal",
        "single",
        "empty",
        "unknown-mixed",
        "all-unknown",
        "equal-known",
        "fractions",
    ],
)
def test_inverse_min_max(loads: list[float | None], expected: list[float]) -> None:
    assert inverse_min_max(loads) == pytest.approx(expected)


# -- queue-scorer ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ([make_candidate("a", waiting=0), make_candidate("b", waiting=4)], [1.0, 0.0]),
        (
            [make_candidate("a", waiting=2), make_candidate("b", waiting=4), make_candidate("c")],
            [0.5, 0.0, 1.0],
        ),
        ([make_candidate("a", waiting=9), make_candidate("b", waiting=9)], [1.0, 1.0]),
        ([make_candidate("a", waiting=3), make_candidate("b", metrics=False)], [1.0, U]),
        ([make_candidate("a", metrics=False), make_candidate("b", metrics=False)], [U, U]),
        # running and KV usage are not the queue scorer's business
        ([make_candidate("a", running=50, kv=0.99), make_candidate("b", waiting=1)], [1.0, 0.0]),
    ],
    ids=["two", "three", "equal", "unknown", "all-unknown", "reads-waiting-only"],
)
def test_queue_scorer(candidates: list[Candidate], expected: list[float]) -> None:
    assert run(QueueScorer("q"), candidates) == pytest.approx(expected)


def test_unknown_load_never_beats_a_fresh_idle_endpoint() -> None:
    candidates = [make_candidate("idle"), make_candidate("unknown", metrics=False)]
    for scorer in (QueueScorer("q"), RunningRequestsScorer("r"), KvCacheUtilizationScorer("k")):
        idle, unknown = run(scorer, candidates)
        assert idle == 1.0
        assert unknown < idle, scorer.TYPE


# -- running-requests-scorer -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ([make_candidate("a", running=10), make_candidate("b", running=30)], [1.0, 0.0]),
        (
            [
                make_candidate("a", running=0),
                make_candidate("b", running=5),
                make_candidate("c", running=20),
            ],
            [1.0, 0.75, 0.0],
        ),
        ([make_candidate("a", running=4), make_candidate("b", running=4)], [1.0, 1.0]),
        ([make_candidate("a", running=4), make_candidate("b", metrics=False)], [1.0, U]),
        ([make_candidate("a", waiting=10), make_candidate("b", running=1)], [1.0, 0.0]),
    ],
    ids=["two", "three", "equal", "unknown", "reads-running-only"],
)
def test_running_requests_scorer(candidates: list[Candidate], expected: list[float]) -> None:
    assert run(RunningRequestsScorer("r"), candidates) == pytest.approx(expected)


# -- kv-cache-utilization-scorer ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("kv", "expected"),
    [
        (0.0, 1.0),
        (0.25, 0.75),
        (1.0, 0.0),
        (1.3, 0.0),
        (-0.2, 1.0),
        (float("nan"), 0.0),
    ],
    ids=["empty", "quarter", "full", "over-full-clamped", "negative-clamped", "nan-is-worst"],
)
def test_kv_cache_utilization_scorer(kv: float, expected: float) -> None:
    assert run(KvCacheUtilizationScorer("k"), [make_candidate("a", kv=kv)]) == [expected]


def test_kv_cache_utilization_scorer_is_absolute_not_relative() -> None:
    candidates = [
        make_candidate("a", kv=0.5),
        make_candidate("b", kv=0.5),
        make_candidate("c", metrics=False),
    ]
    assert run(KvCacheUtilizationScorer("k"), candidates) == [0.5, 0.5, U]


# -- inflight-load-scorer ----------------------------------------------------------------------
INFLIGHT = [
    make_candidate("a", inflight_requests=0, prefill_tokens=8000),
    make_candidate("b", inflight_requests=2, prefill_tokens=0),
    make_candidate("c", inflight_requests=4, prefill_tokens=4000),
]


@pytest.mark.parametrize(
    ("signal", "candidates", "expected"),
    [
        ("requests", INFLIGHT, [1.0, 0.5, 0.0]),
        ("tokens", INFLIGHT, [0.0, 1.0, 0.5]),
        ("both", INFLIGHT, [0.5, 0.75, 0.25]),
        ("both", [make_candidate("a"), make_candidate("b")], [1.0, 1.0]),
        # gateway-side accounting: unknown scraped metrics do not matter
        (
            "requests",
            [make_candidate("a", metrics=False), make_candidate("b", inflight_requests=1)],
            [1.0, 0.0],
        ),
    ],
    ids=["requests", "tokens", "both", "equal", "ignores-unknown-metrics"],
)
def test_inflight_load_scorer(
    signal: str, candidates: list[Candidate], expected: list[float]
) -> None:
    assert run(InflightLoadScorer("i", signal=signal), candidates) == pytest.approx(expected)


def test_inflight_load_scorer_parameters() -> None:
    assert InflightLoadScorer.create("i", Params({}), make_handle()).signal == "both"
    assert (
        InflightLoadScorer.create("i", Params({"signal": "tokens"}), make_handle()).signal
        == "tokens"
    )


# -- prefix-cache-scorer -----------------------------------------------------------------------
def with_match(name: str, match: PrefixMatch | None) -> Candidate:
    candidate = make_candidate(name)
    if match is not None:
        candidate.attributes.put(PREFIX_MATCH, match)
    return candidate


@pytest.mark.parametrize(
    ("weight", "scale", "match", "expected"),
    [
        (0.0, 8192, PrefixMatch(8, 32, 64), 0.25),
        (0.0, 8192, PrefixMatch(32, 32, 64), 1.0),
        (0.0, 8192, PrefixMatch(0, 32, 64), 0.0),
        (0.0, 8192, PrefixMatch(0, 0, 64), 0.0),
        (0.0, 8192, None, 0.0),
        # 4096 matched tokens: length term (4096/8192)^2 = 0.25; ratio 0.5
        (0.5, 8192, PrefixMatch(64, 128, 64), 0.5 * 0.25 + 0.5 * 0.5),
        # saturates at the scale: min(1, 16384/8192)^2 = 1
        (1.0, 8192, PrefixMatch(256, 1024, 64), 1.0),
        (1.0, 1024, PrefixMatch(8, 100, 64), 0.25),
        (0.3, 8192, None, 0.0),
    ],
    ids=[
        "ratio",
        "full",
        "none-matched",
        "empty-prompt",
        "no-attribute",
        "mixed",
        "length-saturates",
        "length-only",
        "no-attribute-weighted",
    ],
)
def test_prefix_cache_scorer(
    weight: float, scale: int, match: PrefixMatch | None, expected: float
) -> None:
    scorer = PrefixCacheScorer("p", match_length_weight=weight, match_length_scale_tokens=scale)
    assert run(scorer, [with_match("a", match)]) == pytest.approx([expected])


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ([0, 0, 0], [1.0, 0.0, 0.0]),
        ([4, 0, 0], [1.0, 0.0, 0.0]),  # surplus 4: not more than maxImbalanceRequests
        ([5, 0, 0], [0.0, 0.0, 0.0]),  # surplus 5 and 5 > 1.5 x (0 + 1): affinity yields
        ([15, 10, 12], [1.0, 0.0, 0.0]),  # surplus 5 but 15 < 1.5 x 11: proportionate
        ([20, 10, 12], [0.0, 0.0, 0.0]),
        ([9, 2, 0], [0.0, 0.0, 0.0]),  # measured against the least loaded
    ],
)
def test_prefix_affinity_yields_to_load(loads: list[int], expected: list[float]) -> None:
    """Requests sharing one hot prefix must not pile up on the pod that cached it."""
    candidates = [make_candidate(n, inflight_requests=q) for n, q in zip("abc", loads, strict=True)]
    candidates[0].attributes.put(PREFIX_MATCH, PrefixMatch(32, 32, 64))
    scorer = PrefixCacheScorer("p", max_imbalance_requests=4, max_imbalance_ratio=1.5)
    assert run(scorer, candidates) == expected
    never = PrefixCacheScorer("p", max_imbalance_requests=0)
    assert run(never, candidates) == [1.0, 0.0, 0.0]


def test_prefix_cache_scorer_llm_d_parameter_names() -> None:
    params = Params({"matchLengthWeight": 0.4, "matchLengthScaleTokens": 2048})
    scorer = PrefixCacheScorer.create("p", params, make_handle())
    params.done()
    assert (scorer.match_length_weight, scorer.match_length_scale_tokens) == (0.4, 2048)
    default = PrefixCacheScorer.create("p", Params({}), make_handle())
    assert (default.match_length_weight, default.match_length_scale_tokens) == (0.0, 8192)
    assert (default.max_imbalance_requests, default.max_imbalance_ratio) == (4, 1.5)
    params = Params({"maxImbalanceRequests": 0, "maxImbalanceRatio": 2})
    off = PrefixCacheScorer.create("p", params, make_handle())
    params.done()
    assert (off.max_imbalance_requests, off.max_imbalance_ratio) == (0, 2.0)


@pytest.mark.parametrize(
    "scorer",
    [
        QueueScorer("q"),
        RunningRequestsScorer("r"),
        KvCacheUtilizationScorer("k"),
        InflightLoadScorer("i"),
        PrefixCacheScorer("p", match_length_weight=0.5),
    ],
    ids=lambda s: s.TYPE,
)
def test_every_scorer_stays_in_range_on_a_mixed_pool(scorer: Scorer) -> None:
    candidates = [
        make_candidate("a", waiting=3, running=9, kv=0.3, inflight_requests=2, prefill_tokens=100),
        make_candidate("b", metrics=False, inflight_requests=5),
        make_candidate("c", waiting=0, running=1, kv=0.9, prefill_tokens=9000),
    ]
    candidates[0].attributes.put(PREFIX_MATCH, PrefixMatch(3, 4, 64))
    assert all(0.0 <= s <= 1.0 for s in run(scorer, candidates))
