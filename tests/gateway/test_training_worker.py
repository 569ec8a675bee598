"""The training worker process: results come back; failures, crashes and hangs are contained."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.training_worker import (
    TrainingCrashed,
    TrainingError,
    TrainingTimeout,
    TrainingWorker,
)
from tests.support import training_faults


@pytest.fixture
def workers() -> Iterator[list[TrainingWorker]]:
    made: list[TrainingWorker] = []
    yield made
    for worker in made:
        worker.close()


def make(workers: list[TrainingWorker], fn: object) -> TrainingWorker:
    worker = TrainingWorker(fn)  # type: ignore[arg-type]
    workers.append(worker)
    return worker


async def test_runs_jobs_in_one_long_lived_process(workers: list[TrainingWorker]) -> None:
    worker = make(workers, training_faults.echo)
    assert await worker.run({"n": 1}, timeout_s=30) == ("done", {"n": 1})
    assert await worker.run([2], timeout_s=30) == ("done", [2])
    assert worker.starts == 1


async def test_an_exception_is_reported_and_the_process_survives(
    workers: list[TrainingWorker],
) -> None:
    worker = make(workers, training_faults.fail)
    with pytest.raises(TrainingError, match="the model exploded"):
        await worker.run(None, timeout_s=30)
    with pytest.raises(TrainingError, match="the model exploded"):
        await worker.run(None, timeout_s=30)
    assert worker.starts == 1


async def test_a_crash_is_contained_and_the_next_run_restarts(
    workers: list[TrainingWorker],
) -> None:
    worker = make(workers, training_faults.crash)
    with pytest.raises(TrainingCrashed):
        await worker.run(None, timeout_s=30)
    with pytest.raises(TrainingCrashed):
        await worker.run(None, timeout_s=30)
    assert worker.starts == 2


async def test_a_hang_is_killed_at_the_deadline(workers: list[TrainingWorker]) -> None:
    worker = make(workers, training_faults.hang)
    with pytest.raises(TrainingTimeout):
        await worker.run(None, timeout_s=0.5)
    assert worker._process is None  # killed, not left running
    with pytest.raises(TrainingTimeout):
        await worker.run(None, timeout_s=0.5)
    assert worker.starts == 2
