"""Keeps the latency predictor trained: periodic fitting off the loop, atomic swap, persistence.

Every ``retrain_interval_s``, when some target's window holds ``min_samples``, the windows are
snapshotted (numpy concatenations, cheap) and sent to the training worker process; the result
is installed with one reference assignment. A run that fails, crashes or hangs leaves the
current model in place; after ``max_training_failures`` in a row the predictor is marked
unhealthy and routing falls back to the heuristic until a run succeeds again.

With ``state_dir`` set, every installed generation and the training window are written there
(in a thread, atomically via rename) and read back at start, so a restart is warm.

The loop never dies: an exception nobody foresaw (a full disk while saving, a bug) is logged
with its traceback, counted as a failed run and through ``on_loop_error``, and the next run
waits for a capped, jittered backoff (at least one interval).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config import PredictorConfig
from gateway.backends.backoff import Backoff
from gateway.training_worker import TrainingError, TrainingWorker
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.model import PredictorModel, model_from_arrays, model_to_arrays
from scheduler.predictor.runtime import TARGETS, LatencyPredictor
from scheduler.predictor.training import TrainingJob, TrainingOutcome, train_generation
from scheduler.predictor.window import WindowArrays

logger = logging.getLogger(__name__)

MAX_BACKOFF_INTERVALS = 30
"""After repeated unexpected errors, retry at most this many intervals apart."""
MODEL_FILE = "model.npz"
WINDOW_FILE = "window.npz"


@dataclass(slots=True)
class TrainerStats:
    """What the last runs did, for metrics."""

    runs: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    last_duration_s: float = 0.0
    last_cpu_s: float = 0.0


def gbdt_params(cfg: PredictorConfig) -> GbdtParams:
    return GbdtParams(
        n_trees=cfg.n_trees,
        depth=cfg.depth,
        learning_rate=cfg.learning_rate,
        objective="quantile" if cfg.objective == "quantile" else "l2",
        alpha=cfg.quantile,
        n_bins=128,  # measured in docs/predictor-model.md: finer bins, lower error, same cost
    )


def next_slot(slot: float, now: float, interval: float) -> float:
    """The start after the run that started at ``slot`` and ended at ``now``: one interval
    later, or, when the run overran it, the first slot not yet past."""
    slot += interval
    if slot < now:
        slot += math.ceil((now - slot) / interval) * interval
    return slot


class PredictorTrainer:
    def __init__(
        self,
        predictor: LatencyPredictor,
        cfg: PredictorConfig,
        *,
        shapes: Callable[[], Mapping[str, str]],
        clock: Callable[[], float],
        worker: TrainingWorker | None = None,
        rng: random.Random | None = None,
        on_loop_error: Callable[[], object] = lambda: None,
    ) -> None:
        self.predictor = predictor
        self.cfg = cfg
        self._shapes = shapes
        self._clock = clock
        self.worker = worker or TrainingWorker(train_generation)
        self.stats = TrainerStats()
        self._params = gbdt_params(cfg)
        self._version = 0
        self._state_dir = Path(cfg.state_dir) if cfg.state_dir else None
        self._rng = rng or random.Random()
        self._on_loop_error = on_loop_error
        self.in_run = False
        """A training run is in the worker (its model, if any, is installed when it ends)."""

    # -- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Train every ``retrain_interval_s``, start to start: the time a run takes does not
        stretch the cadence (at 10 s and ~1.2 s per run, sleeping between runs retrained every
        11.2 s); a run that overruns its slot skips the slots it covered."""
        interval = self.cfg.retrain_interval_s
        loop = asyncio.get_running_loop()
        backoff = Backoff(base_s=interval, cap_s=MAX_BACKOFF_INTERVALS * interval, rng=self._rng)
        slot = loop.time() + interval
        while True:
            await asyncio.sleep(max(slot - loop.time(), 0.0))
            try:
                if self.predictor.enabled:
                    await self.train_once()
            except Exception as exc:  # the loop outlives whatever went wrong
                delay_s = backoff.next_delay_s()
                self._loop_error(exc, backoff.failures, delay_s)
                now = loop.time()
                slot = max(next_slot(slot, now, interval), now + delay_s)
                continue
            backoff.reset()
            slot = next_slot(slot, loop.time(), interval)

    def _loop_error(self, exc: Exception, consecutive: int, retry_in_s: float) -> None:
        self._on_loop_error()
        logger.warning(
            "predictor.trainer_error",
            exc_info=exc,
            extra={
                "task": "trainer",
                "error": str(exc) or type(exc).__name__,
                "consecutive": consecutive,
                "retry_in_s": round(retry_in_s, 3),
            },
        )
        # A run that died this way produced no model: it counts towards the fallback.
        self._count_failure()

    def due(self) -> bool:
        return any(len(w) >= self.cfg.min_samples for w in self.predictor.windows.values())

    async def train_once(self) -> TrainingOutcome | None:
        """One training run if enough samples exist; never raises a training failure."""
        if not self.due():
            return None
        predictor = self.predictor
        job = TrainingJob(
            version=self._version + 1,
            train={t: w.snapshot() for t, w in predictor.windows.items()},
            test={t: w.test_snapshot() for t, w in predictor.windows.items()},
            params=self._params,
            min_samples=self.cfg.min_samples,
            shapes=dict(self._shapes()),
            previous=predictor.model,
            snapshot_at=self._clock(),
            seed=self._version,
        )
        started = time.monotonic()
        self.stats.runs += 1
        self.in_run = True
        try:
            outcome: TrainingOutcome = await self.worker.run(
                job, timeout_s=self.cfg.training_timeout_s
            )
        except TrainingError as exc:
            self._failed(exc)
            return None
        finally:
            self.in_run = False
        self.stats.last_duration_s = time.monotonic() - started
        self.stats.last_cpu_s = sum(r.duration_s for r in outcome.reports)
        self.stats.consecutive_failures = 0
        if not predictor.trainer_healthy:
            logger.info("predictor.training_recovered")
        predictor.trainer_healthy = True
        for report in outcome.reports:
            if report.accepted:
                self.stats.accepted += 1
            else:
                self.stats.rejected += 1
            logger.info(
                "predictor.trained",
                extra={
                    "target": report.target,
                    "accepted": report.accepted,
                    "samples": report.train_samples,
                    "test_samples": report.test_samples,
                    "mape": None if report.new is None else round(report.new.mape, 4),
                    "previous_mape": None
                    if report.previous is None
                    else round(report.previous.mape, 4),
                    "spearman": None if report.new is None else round(report.new.spearman, 3),
                    "heuristic_spearman": report.heuristic_spearman,
                    "cpu_s": round(report.duration_s, 3),
                },
            )
        if outcome.model is not None:
            self._version = outcome.model.version
            predictor.install(outcome.model)
            if self._state_dir is not None:
                await asyncio.get_running_loop().run_in_executor(
                    None, save_state, self._state_dir, outcome.model, job.train, job.test
                )
        return outcome

    def _failed(self, exc: TrainingError) -> None:
        logger.warning(
            "predictor.training_failed",
            extra={"error": str(exc).strip().splitlines()[-1:], "kind": type(exc).__name__},
        )
        self._count_failure()

    def _count_failure(self) -> None:
        self.stats.failed += 1
        self.stats.consecutive_failures += 1
        if (
            self.stats.consecutive_failures >= self.cfg.max_training_failures
            and self.predictor.trainer_healthy
        ):
            self.predictor.trainer_healthy = False
            logger.warning(
                "predictor.training_unhealthy",
                extra={"consecutive_failures": self.stats.consecutive_failures},
            )

    # -- persistence --------------------------------------------------------------------
    async def restore(self) -> bool:
        """Load the saved model and window, if any. A damaged state is logged and ignored."""
        if self._state_dir is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(None, load_state, self._state_dir)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("predictor.state_unreadable", extra={"error": str(exc)})
            return False
        if state is None:
            return False
        model, train, test = state
        for target in TARGETS:
            if target in train:
                self.predictor.windows[target].load(train[target], test[target])
        if model is not None:
            self._version = model.version
            self.predictor.install(model)
        logger.info(
            "predictor.restored",
            extra={
                "version": self._version,
                "samples": dict(self.predictor.window_sizes()),
            },
        )
        return True

    def close(self) -> None:
        self.worker.close()


def save_state(
    directory: Path,
    model: PredictorModel,
    train: Mapping[str, WindowArrays],
    test: Mapping[str, WindowArrays],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    window: dict[str, np.ndarray] = {}
    for target in train:
        window |= train[target].to_arrays(f"{target}.train")
        window |= test[target].to_arrays(f"{target}.test")
    _write_npz(directory / WINDOW_FILE, window)
    _write_npz(directory / MODEL_FILE, model_to_arrays(model))


def load_state(
    directory: Path,
) -> tuple[PredictorModel | None, dict[str, WindowArrays], dict[str, WindowArrays]] | None:
    model_path, window_path = directory / MODEL_FILE, directory / WINDOW_FILE
    if not window_path.exists():
        return None
    train: dict[str, WindowArrays] = {}
    test: dict[str, WindowArrays] = {}
    with np.load(window_path, allow_pickle=False) as arrays:
        for target in TARGETS:
            if f"{target}.train.y" in arrays:
                train[target] = WindowArrays.from_arrays(arrays, f"{target}.train")
                test[target] = WindowArrays.from_arrays(arrays, f"{target}.test")
    model = None
    if model_path.exists():
        with np.load(model_path, allow_pickle=False) as arrays:
            model = model_from_arrays(dict(arrays))
    return model, train, test


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write then rename, so a crash mid-write never leaves a torn file behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dict(arrays))  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
