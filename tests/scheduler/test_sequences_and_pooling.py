"""Requests of several sequences (n > 1, batches) and pooling requests, as the scheduler and the
predictor's producer see them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scheduler.framework.attributes import PREDICTION
from scheduler.framework.params import Params
from scheduler.framework.plugins import Outcome, RequestRecord
from scheduler.framework.types import Api, CycleState, ProfileResult, SchedulingResult
from scheduler.plugins.producers.predicted_latency import FEATURE_ROWS, PredictedLatencyProducer
from scheduler.predictor import estimate
from scheduler.predictor.features import INFLIGHT, feature_rows
from scheduler.predictor.runtime import LATENCY_PREDICTOR, LatencyPredictor
from tests.support.builders import make_candidate, make_handle, make_request


def record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = {
        "request_id": "r",
        "model": "m",
        "endpoint": "a",
        "stream": True,
        "outcome": Outcome.SUCCESS,
        "status": 200,
        "prompt_tokens": 10,
        "dispatched_at": 0.0,
        "first_token_at": 1.0,
        "ended_at": 2.0,
        "completion_tokens": 11,
    }
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("completion_tokens", "sequences", "tpot"),
    [(11, 1, 0.1), (22, 2, 0.1), (44, 4, 0.1), (1, 1, None), (3, 2, None), (4, 2, 1.0)],
)
def test_tpot_is_per_token_of_one_sequence(
    completion_tokens: int, sequences: int, tpot: float | None
) -> None:
    measured = record(completion_tokens=completion_tokens, sequences=sequences).tpot_s
    assert measured == (None if tpot is None else pytest.approx(tpot))


def test_a_request_counts_its_own_extra_sequences_as_in_flight_work() -> None:
    cs = [make_candidate("a", inflight_requests=2), make_candidate("b")]
    one = feature_rows(make_request(), cs)
    four = feature_rows(replace(make_request(), n=2, batch_size=2), cs)
    assert one[:, INFLIGHT].tolist() == [2.0, 0.0]
    assert four[:, INFLIGHT].tolist() == [5.0, 3.0]
    assert (estimate.work(four, 100.0) - estimate.work(one, 100.0)).tolist() == [3.0, 3.0]


def producer_and_predictor() -> tuple[PredictedLatencyProducer, LatencyPredictor]:
    handle = make_handle()
    producer = PredictedLatencyProducer.create("p", Params({}), handle)
    predictor = handle.services.get(LATENCY_PREDICTOR)
    assert isinstance(predictor, LatencyPredictor)
    return producer, predictor


@pytest.mark.parametrize("api", [a for a in Api if not a.generates])
def test_pooling_requests_get_the_estimate_and_never_train(api: Api) -> None:
    producer, predictor = producer_and_predictor()
    request = replace(make_request(prompt_tokens=range(200), api=api, stream=False), batch_size=4)
    cs = [make_candidate("busy", inflight_requests=6), make_candidate("idle")]
    state = CycleState()
    producer.produce(state, request, cs)
    predictions = [c.attributes.get(PREDICTION) for c in cs]
    assert all(p is not None and p.estimated and p.tpot_s is None for p in predictions)
    busy, idle = predictions
    assert busy is not None
    assert idle is not None
    assert busy.ttft_s is not None
    assert idle.ttft_s is not None
    assert idle.ttft_s < busy.ttft_s
    assert state.get(FEATURE_ROWS) is None
    producer.pre_request(
        request,
        SchedulingResult(
            primary=ProfileResult(profile="d", targets=[cs[1]]), candidates=cs, state=state
        ),
    )
    producer.on_end(request, record(stream=False, first_token_at=None, completion_tokens=0))
    assert predictor.window_sizes() == {"ttft": 0, "tpot": 0, "e2e": 0}
    assert predictor.in_flight == 0
    assert predictor.typical_prompt == 0.0  # pooling prompts do not set the work unit


def test_generation_requests_still_train() -> None:
    producer, predictor = producer_and_predictor()
    request = make_request(prompt_tokens=range(50), api=Api.RESPONSES, stream=False)
    cs = [make_candidate("a")]
    state = CycleState()
    producer.produce(state, request, cs)
    producer.pre_request(
        request,
        SchedulingResult(
            primary=ProfileResult(profile="d", targets=cs), candidates=cs, state=state
        ),
    )
    producer.on_end(request, record(stream=False, first_token_at=None, completion_tokens=3))
    assert predictor.window_sizes()["e2e"] == 1
