"""latency-scorer, prefix-cache-affinity-filter and predicted-latency-producer."""

from __future__ import annotations

import math
import random

import pytest

from scheduler.framework.attributes import PREDICTION, PREFIX_MATCH, Prediction, PrefixMatch
from scheduler.framework.params import Params
from scheduler.framework.plugins import Outcome, RequestRecord
from scheduler.framework.types import Candidate, CycleState, ProfileResult, SchedulingResult
from scheduler.plugins.filters.prefix_affinity import PrefixCacheAffinityFilter
from scheduler.plugins.producers.predicted_latency import FEATURE_ROWS, PredictedLatencyProducer
from scheduler.plugins.scorers.latency import LatencyScorer
from scheduler.predictor.runtime import LATENCY_PREDICTOR, LatencyPredictor
from tests.support.builders import make_candidate, make_handle, make_request


def predicted(
    c: Candidate, ttft: float | None, tpot: float | None = None, e2e: float | None = None
) -> Candidate:
    c.attributes.put(PREDICTION, Prediction(ttft_s=ttft, tpot_s=tpot, e2e_s=e2e))
    return c


def matched(c: Candidate, fraction: float) -> Candidate:
    c.attributes.put(PREFIX_MATCH, PrefixMatch(int(fraction * 100), 100, 16))
    return c


def score(
    scorer: LatencyScorer,
    candidates: list[Candidate],
    *,
    stream: bool = True,
    max_tokens: int | None = None,
) -> list[float]:
    request = make_request(stream=stream, max_tokens=max_tokens)
    return [round(s, 4) for s in scorer.score(CycleState(), request, candidates)]


def test_lowest_predicted_ttft_wins_when_tpot_is_flat() -> None:
    cs = [predicted(make_candidate(n), t, 0.02) for n, t in (("a", 0.1), ("b", 0.3), ("c", 0.2))]
    assert score(LatencyScorer("l"), cs) == [1.01, 0.01, 0.51]


def test_streamed_requests_blend_ttft_and_tpot() -> None:
    cs = [
        predicted(make_candidate("fast-start"), 0.1, 0.05),
        predicted(make_candidate("fast-decode"), 0.2, 0.01),
    ]
    # a: cost 0.8*0 + 0.2*1 = 0.2; b: 0.8*1 + 0.2*0 = 0.8
    assert score(LatencyScorer("l"), cs) == [0.81, 0.21]
    assert score(LatencyScorer("l", ttft_weight=0.0, tpot_weight=1.0), cs) == [0.01, 1.01]


def test_non_streamed_requests_rank_by_end_to_end() -> None:
    cs = [
        predicted(make_candidate("a"), 0.1, 0.05, e2e=2.0),
        predicted(make_candidate("b"), 0.5, 0.01, e2e=1.0),
    ]
    assert score(LatencyScorer("l"), cs, stream=False) == [0.01, 1.01]
    # Without an e2e model: TTFT + TPOT x (max_tokens - 1).
    cs = [predicted(make_candidate("a"), 0.1, 0.05), predicted(make_candidate("b"), 0.5, 0.01)]
    assert score(LatencyScorer("l"), cs, stream=False, max_tokens=101) == [0.01, 1.01]
    assert score(LatencyScorer("l"), cs, stream=False, max_tokens=2) == [1.01, 0.01]


def test_a_candidate_without_prediction_costs_most() -> None:
    cs = [
        predicted(make_candidate("a"), 0.1, 0.02),
        make_candidate("b"),
        predicted(make_candidate("c"), 0.3, 0.02),
    ]
    # b is unknown (costs most); c is known to be slowest but beats the unknown.
    assert score(LatencyScorer("l"), cs) == [1.01, 0.01, 0.21]


def test_fallback_composite_without_any_prediction() -> None:
    cs = [
        matched(make_candidate("a", waiting=4, kv=0.5), 1.0),
        make_candidate("b", waiting=0, kv=0.9),
        make_candidate("c", metrics=False),
    ]
    # (kv_free + rel_queue + prefix) / 3: a (0.5 + 0 + 1)/3, b (0.1 + 1 + 0)/3, c (0.5+0.5+0)/3
    assert score(LatencyScorer("l"), cs) == [0.5, 0.37, 0.33]
    prefix_only = LatencyScorer("l", kv_weight=0, queue_weight=0, prefix_weight=1)
    assert score(prefix_only, cs) == [1.0, 0.0, 0.0]


def test_relative_scoring_is_a_softmax_over_relative_slowness() -> None:
    relative = LatencyScorer("l", normalization="relative", temperature=0.25)
    cs = [predicted(make_candidate(n), t, 0.02) for n, t in (("a", 0.1), ("b", 0.11), ("c", 0.2))]
    # exp(-(t / 0.1 - 1) / 0.25): 10 % slower keeps 2/3 of the weight, twice as slow 2 %.
    assert score(relative, cs) == [1.0, round(math.exp(-0.4), 4), round(math.exp(-4.0), 4)]
    # Min-max stretches any spread to [0, 1]: the near-equal "b" would score as little as "c".
    spread = [predicted(make_candidate(n), t, 0.02) for n, t in (("a", 0.1), ("b", 0.101))]
    assert score(LatencyScorer("l"), spread) == [1.01, 0.01]
    assert score(relative, spread)[1] > 0.95


def test_relative_scoring_blends_and_knows_what_is_missing() -> None:
    relative = LatencyScorer("l", normalization="relative", temperature=1.0)
    cs = [
        predicted(make_candidate("fast-start"), 0.1, 0.04),
        predicted(make_candidate("fast-decode"), 0.2, 0.02),
        make_candidate("unknown"),
    ]
    # fast-start: 0.8 * 0 + 0.2 * 1 = 0.2; fast-decode: 0.8 * 1 + 0.2 * 0 = 0.8
    assert score(relative, cs) == [round(math.exp(-0.2), 4), round(math.exp(-0.8), 4), 0.0]
    # Non-streamed: by end-to-end latency.
    e2e = [
        predicted(make_candidate("a"), 0.1, e2e=2.0),
        predicted(make_candidate("b"), 0.1, e2e=1.0),
    ]
    assert score(relative, e2e, stream=False) == [round(math.exp(-1.0), 4), 1.0]


def test_scorer_parameters() -> None:
    scorer = LatencyScorer.create("l", Params({"ttftWeight": 1, "tpotWeight": 3}), make_handle())
    assert (scorer.ttft_weight, scorer.tpot_weight) == (0.25, 0.75)
    with pytest.raises(Exception, match="ttftWeight"):
        LatencyScorer.create("l", Params({"ttftWeight": -1}), make_handle())
    assert (scorer.normalization, scorer.temperature) == ("minmax", 0.25)
    params = Params({"normalization": "relative", "temperature": 0.5})
    relative = LatencyScorer.create("l", params, make_handle())
    assert (relative.normalization, relative.temperature) == ("relative", 0.5)
    with pytest.raises(Exception, match="normalization"):
        LatencyScorer.create("l", Params({"normalization": "softmax"}), make_handle())


def affinity(**kw: object) -> PrefixCacheAffinityFilter:
    return PrefixCacheAffinityFilter("f", rng=random.Random(0), **kw)  # type: ignore[arg-type]


def names(cs: object) -> list[str]:
    return [c.name for c in cs]  # type: ignore[attr-defined]


def test_affinity_keeps_only_warm_endpoints() -> None:
    cs = [
        matched(predicted(make_candidate("warm"), 0.5), 0.9),
        predicted(make_candidate("cold"), 0.2),
    ]
    assert names(affinity().filter(CycleState(), make_request(), cs)) == ["warm"]


@pytest.mark.parametrize(
    ("warm_load", "cold_load", "expected"),
    [(4, 0, ["warm"]), (5, 0, ["warm", "cold"]), (14, 9, ["warm"]), (16, 9, ["warm", "cold"])],
)
def test_affinity_yields_to_in_flight_imbalance(
    warm_load: int, cold_load: int, expected: list[str]
) -> None:
    """Before any TTFT is compared (none is known here): a warm pod carrying more than 4
    requests and 1.5x (+1) the least loaded cold pod's loses its affinity."""
    cs = [
        matched(make_candidate("warm", inflight_requests=warm_load), 0.9),
        make_candidate("cold", inflight_requests=cold_load),
    ]
    assert names(affinity().filter(CycleState(), make_request(), cs)) == expected
    never = affinity(max_imbalance_requests=0)
    assert names(never.filter(CycleState(), make_request(), cs)) == ["warm"]


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [((0.5, 0.0), ["a", "b"]), ((0.9, 0.85), ["a", "b"]), ((0.9, 0.1), ["a"])],
    ids=["none-warm", "all-warm", "one-warm"],
)
def test_affinity_passes_through_without_a_choice(
    fractions: tuple[float, float], expected: list[str]
) -> None:
    cs = [
        matched(predicted(make_candidate(n), 0.1), f) for n, f in zip("ab", fractions, strict=True)
    ]
    assert names(affinity().filter(CycleState(), make_request(), cs)) == expected


def test_affinity_breaks_when_the_warm_endpoint_is_too_slow() -> None:
    cs = [
        matched(predicted(make_candidate("warm"), 6.0), 0.95),
        predicted(make_candidate("cold"), 0.5),
    ]
    assert names(affinity().filter(CycleState(), make_request(), cs)) == ["warm", "cold"]
    assert names(affinity(max_penalty_ms=10_000).filter(CycleState(), make_request(), cs)) == [
        "warm"
    ]
    # Without predictions the warm endpoint counts as infinitely slow: affinity breaks.
    bare = [matched(make_candidate("warm"), 0.95), predicted(make_candidate("cold"), 0.5)]
    assert names(affinity().filter(CycleState(), make_request(), bare)) == ["warm", "cold"]


def test_affinity_breaks_when_the_warm_endpoint_is_relatively_too_slow() -> None:
    cs = [
        matched(predicted(make_candidate("warm-slow"), 0.08), 0.95),
        predicted(make_candidate("cold-fast"), 0.02),
    ]
    assert names(affinity().filter(CycleState(), make_request(), cs)) == ["warm-slow"]
    ratio = affinity(max_penalty_ratio=1.5)
    assert names(ratio.filter(CycleState(), make_request(), cs)) == ["warm-slow", "cold-fast"]
    close = [
        matched(predicted(make_candidate("warm"), 0.025), 0.95),
        predicted(make_candidate("cold"), 0.02),
    ]
    assert names(ratio.filter(CycleState(), make_request(), close)) == ["warm"]
    # While nothing is predicted, affinity holds.
    bare = [matched(make_candidate("warm"), 0.95), make_candidate("cold")]
    only_ratio = affinity(max_penalty_ms=0, max_penalty_ratio=1.5)
    assert names(only_ratio.filter(CycleState(), make_request(), bare)) == ["warm"]


def test_affinity_with_prefill_throughput_source() -> None:
    cs = [matched(make_candidate("warm", prefill_tokens=200_000), 0.95), make_candidate("cold")]
    f = affinity(ttft_source="prefillThroughput", peak_prefill_tps=10_000)
    assert names(f.filter(CycleState(), make_request(), cs)) == ["warm", "cold"]  # 20 s behind
    light = [matched(make_candidate("warm", prefill_tokens=1000), 0.95), make_candidate("cold")]
    assert names(f.filter(CycleState(), make_request(), light)) == ["warm"]


def test_affinity_explores_with_its_probability() -> None:
    cs = [
        matched(predicted(make_candidate("warm"), 0.1), 0.95),
        predicted(make_candidate("cold"), 0.1),
    ]
    f = affinity(exploration=0.25)
    kept = [len(f.filter(CycleState(), make_request(), cs)) for _ in range(2000)]
    assert 0.2 < kept.count(2) / 2000 < 0.3


def test_producer_records_the_chosen_row_and_turns_the_request_into_samples() -> None:
    handle = make_handle()
    producer = PredictedLatencyProducer.create("p", Params({}), handle)
    predictor = handle.services.get(LATENCY_PREDICTOR)
    assert isinstance(predictor, LatencyPredictor)
    assert predictor.enabled
    request = make_request(prompt_tokens=range(100), stream=True)
    cs = [make_candidate("a", waiting=1), make_candidate("b", waiting=7)]
    state = CycleState()
    producer.produce(state, request, cs)
    rows = state.get(FEATURE_ROWS)
    assert rows is not None
    assert rows.shape[0] == 2
    # No model yet: cold-start estimates only, for ordering the candidates.
    assert all((p := c.attributes.get(PREDICTION)) is not None and p.estimated for c in cs)
    result = SchedulingResult(
        primary=ProfileResult(profile="d", targets=[cs[1]]), candidates=cs, state=state
    )
    producer.pre_request(request, result)
    producer.on_first_token(request, "b", handle.clock() + 0.3)
    producer.on_end(
        request,
        RequestRecord(
            request_id=request.request_id, model="m", endpoint="b", stream=True,
            outcome=Outcome.SUCCESS, status=200, prompt_tokens=100, dispatched_at=0.0,
            first_token_at=0.3, ended_at=1.3, completion_tokens=11,
        ),
    )  # fmt: skip
    ttft = predictor.windows["ttft"]
    samples = ttft.snapshot() if len(ttft) else ttft.test_snapshot()
    assert samples.endpoints == ("b",)
    assert samples.X[0].tolist() == rows[1].tolist()
    assert samples.y[0] == pytest.approx(0.3)
