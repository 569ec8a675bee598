"""Training functions that misbehave, run inside the trainer's worker process by tests."""

from __future__ import annotations

import os
import time
from typing import Any

from scheduler.predictor.training import TrainingJob, TrainingOutcome, train_generation


def hang(job: Any) -> Any:
    time.sleep(3600)
    raise AssertionError("unreachable")


def crash(job: Any) -> Any:
    os._exit(3)


def fail(job: Any) -> Any:
    raise RuntimeError("the model exploded")


def echo(job: Any) -> Any:
    return ("done", job)


def train(job: TrainingJob) -> TrainingOutcome:
    return train_generation(job)
