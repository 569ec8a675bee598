"""The trainer retrains every interval start to start: a run's duration does not stretch it."""

from __future__ import annotations

import pytest

from gateway.trainer import next_slot


@pytest.mark.parametrize(
    ("slot", "now", "expected"),
    [
        (10.0, 11.2, 20.0),  # a 1.2 s run: the next starts 10 s after this one started
        (10.0, 20.0, 20.0),  # ended right at the next slot: run at once
        (10.0, 25.0, 30.0),  # overran one slot: that one is skipped
        (10.0, 40.5, 50.0),  # overran three
        (10.0, 40.0, 40.0),
    ],
)
def test_next_slot(slot: float, now: float, expected: float) -> None:
    assert next_slot(slot, now, 10.0) == pytest.approx(expected)
