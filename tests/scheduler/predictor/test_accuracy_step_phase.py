"""The step features: where an endpoint is in its engine step, and how long its steps last.

A request that arrives mid-step waits for the step in progress to end before the engine admits
it; for a short prompt that wait is a large part of its TTFT. The gateway sees each endpoint's
step boundaries in the chunks it relays (``scheduler.datalayer.inflight``); ``step_phase`` is
the time since the last one and ``step_interval`` the smoothed step duration, both in seconds
at pool-average speed.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from scheduler.framework.types import Candidate, StepTiming
from scheduler.predictor.features import (
    ABSENT,
    N_FEATURES,
    PREFILL_WAIT,
    STEP_INTERVAL,
    STEP_PHASE,
    UNKNOWN,
    feature_rows,
)
from scheduler.predictor.runtime import LatencyPredictor
from scheduler.predictor.training import TARGET_COLUMNS
from scheduler.predictor.window import WindowArrays
from tests.scheduler.predictor.test_accuracy_prefill_wait import model_with_offsets
from tests.support.builders import FakeClock, make_candidate, make_request


def timed(name: str, last_chunk_at: float, interval_s: float) -> Candidate:
    candidate = make_candidate(name)
    candidate.steps = StepTiming(last_chunk_at, interval_s)
    return candidate


def test_rows_carry_the_phase_and_interval_of_observed_endpoints() -> None:
    candidates = [make_candidate("idle"), timed("busy", 9.97, 0.04)]
    rows = feature_rows(make_request(), candidates, now=10.0)
    assert rows.shape == (2, N_FEATURES)
    assert list(rows[0, [STEP_PHASE, STEP_INTERVAL]]) == [UNKNOWN, UNKNOWN]
    assert list(rows[1, [STEP_PHASE, STEP_INTERVAL]]) == pytest.approx([0.03, 0.04])
    without_now = feature_rows(make_request(), candidates)
    assert list(without_now[1, [STEP_PHASE, STEP_INTERVAL]]) == [UNKNOWN, UNKNOWN]


def test_step_columns_are_at_pool_average_speed() -> None:
    # An endpoint twice as slow as average takes 40 ms per step where the average takes 20.
    rows = feature_rows(make_request(), [timed("slow", 9.97, 0.04)], now=10.0, speed={"slow": 0.5})
    assert list(rows[0, [STEP_PHASE, STEP_INTERVAL]]) == pytest.approx([0.015, 0.02])
    predictor = LatencyPredictor(clock=FakeClock(10.0), rng=random.Random(0))
    predictor.install(model_with_offsets({"slow": np.log(2.0)}))
    rows = predictor.feature_rows(make_request(), [timed("slow", 9.97, 0.04)])
    assert list(rows[0, [STEP_PHASE, STEP_INTERVAL]]) == pytest.approx([0.015, 0.02])


def test_older_rows_get_unknown_step_columns() -> None:
    narrow = np.ones((3, PREFILL_WAIT + 1))  # a window saved before the step columns
    arrays = WindowArrays(narrow, np.ones(3), np.zeros(3, dtype=np.int32), ("a",)).to_arrays("t")
    X = WindowArrays.from_arrays(arrays, "t").X
    assert X.shape == (3, N_FEATURES)
    assert list(X[0, [STEP_PHASE, STEP_INTERVAL]]) == [UNKNOWN, UNKNOWN]
    assert list(ABSENT[STEP_PHASE:]) == [UNKNOWN, UNKNOWN]


def test_ttft_reads_the_step_columns_and_tpot_does_not() -> None:
    assert {STEP_PHASE, STEP_INTERVAL} <= set(TARGET_COLUMNS["ttft"])
    assert not {STEP_PHASE, STEP_INTERVAL} & set(TARGET_COLUMNS["tpot"])
