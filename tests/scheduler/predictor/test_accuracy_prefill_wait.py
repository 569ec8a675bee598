"""The ``prefill_wait`` feature: how long an endpoint's oldest request has awaited its first token.

It tells the model how far an endpoint has got with the prompt work queued ahead (which
``inflight_prefill`` counts but cannot date), in seconds at pool-average speed.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from scheduler.framework.plugins import Outcome, RequestRecord
from scheduler.predictor.boosting import fit_gbdt
from scheduler.predictor.features import N_FEATURES, PREFILL_WAIT, feature_rows
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.model import PredictorModel, TargetModel
from scheduler.predictor.runtime import LatencyPredictor
from scheduler.predictor.training import TARGET_COLUMNS
from tests.support.builders import FakeClock, make_candidate, make_request


def record(request_id: str, endpoint: str, *, stream: bool = True) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        model="m",
        endpoint=endpoint,
        stream=stream,
        outcome=Outcome.SUCCESS,
        status=200,
        prompt_tokens=4,
        dispatched_at=0.0,
        first_token_at=1.0,
        ended_at=2.0,
        completion_tokens=3,
    )


def dispatch(
    predictor: LatencyPredictor, request_id: str, endpoint: str, stream: bool = True
) -> None:
    predictor.dispatched(
        request_id, np.zeros(N_FEATURES), endpoint, model="m", stream=stream, prediction=None
    )


def waits(predictor: LatencyPredictor, *names: str) -> list[float]:
    return predictor.prefill_wait([make_candidate(n) for n in names])


def test_age_of_the_oldest_request_without_a_first_token() -> None:
    clock = FakeClock(100.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    assert waits(predictor, "a", "b") == [0.0, 0.0]
    dispatch(predictor, "r1", "a")
    clock.advance(1.0)
    dispatch(predictor, "r2", "a")
    dispatch(predictor, "n1", "b", stream=False)  # never has a first token: not counted
    clock.advance(2.0)
    assert waits(predictor, "a", "b") == [3.0, 0.0]
    predictor.first_token("r1", clock())
    # r2 waited behind r1 until now: the endpoint's prompt work is r2's from here on.
    assert waits(predictor, "a", "b") == [0.0, 0.0]
    clock.advance(0.5)
    assert waits(predictor, "a", "b") == [0.5, 0.0]
    predictor.finished("r2", record("r2", "a"))  # ended without a first token (e.g. an error)
    assert waits(predictor, "a") == [0.0]
    predictor.finished("r1", record("r1", "a"))
    predictor.finished("n1", record("n1", "b", stream=False))
    assert predictor.in_flight == 0


def test_a_request_that_overtakes_the_oldest_does_not_restart_its_wait() -> None:
    clock = FakeClock(0.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    dispatch(predictor, "long", "a")
    clock.advance(0.1)
    dispatch(predictor, "short", "a")
    clock.advance(0.2)
    predictor.first_token("short", clock())  # finished in a step shared with the long prompt
    assert waits(predictor, "a") == [pytest.approx(0.3)]
    predictor.finished("long", record("long", "a"))  # its end without a first token counts
    clock.advance(0.1)
    assert waits(predictor, "a") == [0.0]  # nothing awaits a first token any more
    dispatch(predictor, "next", "a")
    clock.advance(0.25)
    assert waits(predictor, "a") == [pytest.approx(0.25)]


def test_abandoned_requests_stop_counting_when_they_expire() -> None:
    clock = FakeClock(0.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0), pending_ttl_s=10.0)
    for i in range(1023):
        dispatch(predictor, f"old{i}", "a")
    clock.advance(60)
    dispatch(predictor, "new", "a")  # the 1024th dispatch sweeps expired requests
    assert waits(predictor, "a") == [0.0]
    clock.advance(0.5)
    assert waits(predictor, "a") == [0.5]


def model_with_offsets(offsets: dict[str, float]) -> PredictorModel:
    columns = TARGET_COLUMNS["ttft"]
    X = np.random.default_rng(0).uniform(0, 1, (50, len(columns)))
    gbdt = fit_gbdt(X, X[:, 0], GbdtParams(n_trees=2, depth=2), rng=np.random.default_rng(0))
    target = TargetModel(target="ttft", gbdt=gbdt, columns=columns, offsets=offsets)
    return PredictorModel(version=1, ttft=target, objective="mean", beats_heuristic=True)


def test_the_age_is_measured_at_pool_average_speed() -> None:
    clock = FakeClock(0.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    # "slow" serves everything twice as slowly as the average endpoint, "fast" twice as fast.
    predictor.install(model_with_offsets({"slow": math.log(2), "fast": -math.log(2)}))
    for name in ("slow", "fast", "new"):
        dispatch(predictor, f"r-{name}", name)
    clock.advance(1.0)
    assert waits(predictor, "slow", "fast", "new") == pytest.approx([0.5, 2.0, 1.0])


def test_rows_carry_the_wait_and_samples_keep_it() -> None:
    clock = FakeClock(0.0)
    predictor = LatencyPredictor(clock=clock, rng=random.Random(0))
    dispatch(predictor, "ahead", "a")
    clock.advance(0.25)
    candidates = [make_candidate("a", prefill_tokens=500), make_candidate("b")]
    request = make_request(request_id="mine")
    rows = predictor.feature_rows(request, candidates)
    assert rows.shape == (2, N_FEATURES)
    assert list(rows[:, PREFILL_WAIT]) == [0.25, 0.0]
    plain = feature_rows(request, candidates)
    assert list(plain[:, PREFILL_WAIT]) == [0.0, 0.0]
    np.testing.assert_array_equal(
        np.delete(rows, PREFILL_WAIT, 1), np.delete(plain, PREFILL_WAIT, 1)
    )
    predictor.dispatched("mine", rows[0], "a", model="m", stream=True, prediction=None)
    predictor.first_token("mine", 0.5)
    sample = np.concatenate(
        [predictor.windows["ttft"].snapshot().X, predictor.windows["ttft"].test_snapshot().X]
    )
    assert list(sample[:, PREFILL_WAIT]) == [0.25]


def test_rows_of_an_older_width_are_padded_in_the_window() -> None:
    predictor = LatencyPredictor(clock=FakeClock(0.0), rng=random.Random(0))
    predictor.dispatched("r", np.ones(PREFILL_WAIT), "a", model="m", stream=True, prediction=None)
    predictor.first_token("r", 1.0)
    window = predictor.windows["ttft"]
    X = np.concatenate([window.snapshot().X, window.test_snapshot().X])
    assert X.shape == (1, N_FEATURES)
    assert X[0, PREFILL_WAIT] == 0.0
    with pytest.raises(ValueError, match="at most"):
        window.add(np.ones(N_FEATURES + 1), 1.0, "a")
