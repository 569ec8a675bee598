"""The live predictor: the current model, the training windows and the requests in flight.

Shared by the ``predicted-latency-producer`` plugin (predicts, records dispatches, turns
finished requests into samples) and the gateway's trainer loop (snapshots the windows, fits
in a worker process, installs the result). Everything here runs on the event loop and is cheap:
a prediction is one feature matrix and one vectorized tree evaluation per target.

Samples, per target:
- ``ttft``: streamed requests, at the first token (dispatch -> first token);
- ``tpot``: streamed requests with at least two tokens, at the end;
- ``e2e``: non-streamed requests, at the end (dispatch -> last byte).
Only successful requests train. Each sample reuses the feature row captured at scheduling time.

The predictor also keeps, per endpoint, the streamed requests still waiting for their first
token (in dispatch order): the age of the oldest is the ``prefill_wait`` feature, which
:meth:`LatencyPredictor.feature_rows` adds to the rows built by ``features.feature_rows``.
Non-streamed requests are left out: their first token is never seen. The age counts from when
the endpoint began working on the oldest request: the later of its dispatch and when the request
ahead of it got its first token (a model server prefills in arrival order, so the one behind
gets the engine's prompt work from then on).
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Protocol

import numpy as np

from scheduler.framework.attributes import Prediction
from scheduler.framework.plugins import Outcome, RequestRecord
from scheduler.framework.types import Attributes, AttrKey, Candidate, InferenceRequest
from scheduler.predictor import estimate
from scheduler.predictor.drift import LiveDrift, dead_band_array
from scheduler.predictor.features import PROMPT, feature_rows
from scheduler.predictor.model import PredictorModel, TargetModel, widen
from scheduler.predictor.window import StratifiedWindow

TARGETS = ("ttft", "tpot", "e2e")

CALIBRATED = frozenset({"ttft"})
"""Targets whose quantile predictions are calibrated online. TTFT is scored within a second of
the prediction; TPOT and e2e only at the end of the request, often tens of seconds later, and
a margin fed that late lags the load it corrects: on the simulated fleet it raised TPOT
coverage under rising load only from 0.43 to 0.48 and over-covered (0.99) once load fell,
while TPOT error grew from 0.32 to 0.58 (``docs/predictor.md``)."""

CALIBRATION_WINDOW = 200
"""Recent scored requests per target the quantile calibration reads (``_calibrate``)."""

CALIBRATION_MIN = 50
"""Scored requests a target needs before its quantile predictions are calibrated."""

CALIBRATION_EVERY = 10
"""The margin is recomputed every this many scored requests (a quantile of the window)."""

MAX_CALIBRATION = math.log(4.0)
"""The calibration never scales a prediction by more than 4x either way."""

DRIFT_DEAD_BAND = 0.15
"""Live drift of an endpoint from the model (log) that is left alone as the model's ordinary
error: only what exceeds it (about 16 %) adjusts that endpoint's predictions."""

MAX_LOG_UNIT = math.log(1e6)
"""Seconds per unit of cold-start work stay within a microsecond and a million seconds."""

TYPICAL_PROMPT_WEIGHT = 0.02
"""Weight of each dispatched request's prompt length in the running mean the cold-start
estimate measures prompt work in."""

logger = logging.getLogger(__name__)


class PredictorHooks(Protocol):
    """Where the predictor reports what metrics want to see (the gateway's telemetry)."""

    def prediction_timed(self, seconds: float) -> None:
        """One batched prediction for all candidates of a request took ``seconds``."""

    def outcome(self, target: str, model: str, predicted_s: float, actual_s: float) -> None:
        """A finished request's prediction (for the endpoint used) next to what happened."""


class NoHooks:
    def prediction_timed(self, seconds: float) -> None:
        return None

    def outcome(self, target: str, model: str, predicted_s: float, actual_s: float) -> None:
        return None


@dataclass(slots=True)
class _Pending:
    row: np.ndarray
    endpoint: str
    model: str
    stream: bool
    dispatched_at: float
    prediction: Prediction | None
    margins: Mapping[str, float]
    """The calibration margins ``prediction`` was made with."""
    expected_ttft_s: float | None
    """The TTFT the endpoint was chosen on (a model's prediction or the cold-start estimate): a
    request still without a first token past it says the endpoint is slower than believed."""
    first_token_at: float | None = None


@dataclass(frozen=True, slots=True)
class LiveAccuracy:
    """Errors of predictions for the endpoint actually used, over recent finished requests."""

    ttft_mape: float
    tpot_mape: float
    ttft_coverage: float
    tpot_coverage: float
    samples: int


class LatencyPredictor:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        per_bucket: int = 500,
        shape_label: str | None = None,
        accuracy_window: int = 500,
        pending_ttl_s: float = 600.0,
    ) -> None:
        self._clock = clock
        self.hooks: PredictorHooks = NoHooks()
        self.shape_label = shape_label
        self.model: PredictorModel | None = None
        self.windows = {
            t: StratifiedWindow(per_bucket=per_bucket, rng=random.Random(rng.getrandbits(64)))
            for t in TARGETS
        }
        self.trainer_healthy = True
        """Cleared by the trainer loop after repeated failures: routing then falls back."""
        self.enabled = False
        """Set by the plugin that uses the predictor: the gateway trains only when it is."""
        self.pending_ttl_s = pending_ttl_s
        self._pending: dict[str, _Pending] = {}
        self._awaiting_first: dict[str, dict[str, float]] = {}
        """Per endpoint: streamed request id -> dispatch time, until its first token or end."""
        self._head_since: dict[str, float] = {}
        """Per endpoint with requests awaiting a first token: when the last request ahead of
        them left prefill (first token, or an end without one)."""
        self._model_cache: _ModelCache | None = None
        self._dispatches = 0
        self._fallback_active: bool | None = None
        self.fallback_decisions = 0
        """Scheduling decisions made without predictions (heuristic fallback)."""
        self.predicted_decisions = 0
        self._errors: dict[str, deque[float]] = {
            t: deque(maxlen=accuracy_window) for t in ("ttft", "tpot")
        }
        self._covered: dict[str, deque[bool]] = {
            t: deque(maxlen=accuracy_window) for t in ("ttft", "tpot")
        }
        self.calibration: Mapping[str, float] = dict.fromkeys(CALIBRATED, 0.0)
        """Per calibrated target, the log margin a quantile model's predictions are raised (or
        lowered) by so that recent requests are covered at the trained quantile (``_calibrate``).
        Replaced, never changed in place: a dispatched request keeps the one it was predicted
        with."""
        self._residuals: dict[str, deque[float]] = {
            t: deque(maxlen=CALIBRATION_WINDOW) for t in CALIBRATED
        }
        self._scored = dict.fromkeys(CALIBRATED, 0)
        self.drift = {t: LiveDrift() for t in TARGETS}
        """Per target, each endpoint's live drift from the model's predictions (``drift.py``)."""
        self.units = LiveDrift(bound=MAX_LOG_UNIT)
        """Each endpoint's log seconds per unit of cold-start work (``estimate.py``): an
        absolute value (a millisecond per unit is -6.9), so bounded far wider than a drift."""
        self.typical_prompt = 0.0
        """Running mean prompt length of dispatched requests (0 before the first)."""

    # -- model --------------------------------------------------------------------------
    def install(self, model: PredictorModel) -> None:
        """Swap in a new generation atomically (one reference assignment on the loop)."""
        self.model = model

    @property
    def ready(self) -> bool:
        """A model exists, beat the heuristic on held-out samples, and training is healthy."""
        model = self.model
        return (
            model is not None
            and model.ttft is not None
            and model.beats_heuristic
            and self.trainer_healthy
        )

    def shapes(self, endpoints: Sequence[Candidate]) -> list[str | None]:
        label = self.shape_label
        if label is None:
            return [None] * len(endpoints)
        return [c.endpoint.labels.get(label) for c in endpoints]

    def feature_rows(
        self, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> np.ndarray:
        """``features.feature_rows`` with this predictor's ``prefill_wait`` column filled in,
        and the step columns at pool-average speed."""
        now = self._clock()
        return feature_rows(
            request,
            candidates,
            self.prefill_wait(candidates, now=now),
            now=now,
            speed=self._cached(self.model).speed,
        )

    def prefill_wait(
        self, candidates: Sequence[Candidate], *, now: float | None = None
    ) -> list[float]:
        """Per candidate: how long it has been working on its oldest request awaiting a first
        token (:meth:`_start_of`), in seconds at pool-average speed (times the endpoint's learned
        TTFT speed, ``exp(-offset)``; 1 for an endpoint without an offset of its own)."""
        awaiting = self._awaiting_first
        if not awaiting:
            return [0.0] * len(candidates)
        if now is None:
            now = self._clock()
        speed = self._cached(self.model).speed
        start = self._start_of
        if len(awaiting) > len(candidates):
            return [
                (now - start(name, queue)) * speed.get(name, 1.0)
                if (queue := awaiting.get(name := c.endpoint.name))
                else 0.0
                for c in candidates
            ]
        waits = {
            endpoint: (now - start(endpoint, queue)) * speed.get(endpoint, 1.0)
            for endpoint, queue in awaiting.items()
        }
        get = waits.get
        return [get(c.endpoint.name, 0.0) for c in candidates]

    def _start_of(self, endpoint: str, queue: dict[str, float]) -> float:
        """When the endpoint began working on the oldest request of ``queue``: the later of its
        dispatch and when the request ahead of it left prefill."""
        dispatched_at = next(iter(queue.values()))
        since = self._head_since.get(endpoint)
        return dispatched_at if since is None or since < dispatched_at else since

    def predict(
        self,
        rows: np.ndarray,
        candidates: Sequence[Candidate],
        *,
        stream: bool | None = None,
        source: str = "auto",
        model_tpot: bool = False,
        tpot_floor: float = 0.0,
    ) -> list[Prediction] | None:
        """Predictions for every candidate; while no model is trusted (or it fails), the
        cold-start estimates (``estimate``, flagged ``estimated``); ``None`` only when even
        those cannot be made.

        ``stream`` says what the request needs: streamed, TTFT and TPOT (no e2e); not streamed,
        TTFT and e2e (TPOT too when there is no e2e model, to estimate e2e from); ``None``,
        every target. ``source``: ``auto`` as above; ``estimate``, always the estimates;
        ``model``, the model once one exists even if it has not beaten the estimate.
        ``model_tpot``: while TTFT comes from the estimate, TPOT and e2e still come from the
        model when it has them (latency objectives need them; the estimate has none).
        ``tpot_floor``: each TPOT prediction is at least this many times its endpoint's live
        engine-step interval (0: no floor; :meth:`_step_floor`).
        Never raises: a failing model is a fallback, logged once per transition.
        """
        model = self.model
        if source == "estimate":
            return self._with_model_tpot(model, rows, candidates, stream, model_tpot, tpot_floor)
        usable = self.ready or (
            source == "model"
            and model is not None
            and model.ttft is not None
            and self.trainer_healthy
        )
        if model is None or not usable:
            self._route_by_fallback(True, "no model" if model is None else "not ready")
            return self._with_model_tpot(model, rows, candidates, stream, model_tpot, tpot_floor)
        started = self._clock()
        try:
            predictions = self._predict_all(
                model, rows, candidates, stream, now=started, tpot_floor=tpot_floor
            )
        except Exception:
            logger.exception("predictor.failed", extra={"version": model.version})
            self._route_by_fallback(True, "prediction failed")
            return self._estimated(rows, candidates)
        self.hooks.prediction_timed(self._clock() - started)
        self._route_by_fallback(False, "")
        return predictions

    def _with_model_tpot(
        self,
        model: PredictorModel | None,
        rows: np.ndarray,
        candidates: Sequence[Candidate],
        stream: bool | None,
        model_tpot: bool,
        tpot_floor: float,
    ) -> list[Prediction] | None:
        """The estimates; with ``model_tpot``, TPOT and e2e from the model beside them."""
        estimated = self._estimated(rows, candidates)
        if (
            not model_tpot
            or estimated is None
            or model is None
            or model.tpot is None
            or not self.trainer_healthy
        ):
            return estimated
        try:
            modelled = self._predict_all(model, rows, candidates, stream, tpot_floor=tpot_floor)
        except Exception:
            logger.exception("predictor.failed", extra={"version": model.version})
            return estimated
        return [
            Prediction(e.ttft_s, m.tpot_s, m.e2e_s, True, m.adjust)
            for e, m in zip(estimated, modelled, strict=True)
        ]

    def _estimated(
        self, rows: np.ndarray, candidates: Sequence[Candidate]
    ) -> list[Prediction] | None:
        try:
            return self.estimate(rows, candidates)
        except Exception:
            logger.exception("predictor.estimate_failed")
            return None

    def estimate(self, rows: np.ndarray, candidates: Sequence[Candidate]) -> list[Prediction]:
        """Cold-start TTFT estimates (``estimate.py``), flagged ``estimated``: what routing uses
        while no model is trusted. Never raises for a well-formed row matrix."""
        names = [c.endpoint.name for c in candidates]
        units = self.units
        default = units.median()
        if default is None:
            default = math.log(estimate.DEFAULT_SECONDS_PER_UNIT)
        get = units.get
        log_unit = np.array([u if (u := get(n)) is not None else default for n in names])
        log_unit += self._lateness(names, self._clock())
        seconds = estimate.work(rows, self.typical_prompt) * np.exp(log_unit)
        return [Prediction(s, None, None, True) for s in seconds.tolist()]

    def _lateness(self, names: Sequence[str], now: float) -> np.ndarray:
        """Per endpoint, ``log(age / expected TTFT)`` of its oldest streamed request still
        without a first token, when it is overdue (0 otherwise): a pod that stalls or slows
        down shows it before any first token comes back from it."""
        out = np.zeros(len(names))
        awaiting = self._awaiting_first
        if not awaiting:
            return out
        pending = self._pending
        for i, name in enumerate(names):
            queue = awaiting.get(name)
            if not queue:
                continue
            oldest = pending.get(next(iter(queue)))
            if oldest is None or not oldest.expected_ttft_s:
                continue
            age = now - oldest.dispatched_at
            if age > oldest.expected_ttft_s:
                out[i] = math.log(age / oldest.expected_ttft_s)
        return out

    def _adjustments(
        self, target: str, names: Sequence[str], lateness: np.ndarray | None
    ) -> np.ndarray | None:
        """Per candidate, the log factor its ``target`` prediction is corrected by: its live
        drift beyond the dead band, and for TTFT at least its lateness."""
        drift = self.drift[target]
        if not len(drift):
            return lateness if lateness is not None and lateness.any() else None
        out = dead_band_array(drift.array(names), DRIFT_DEAD_BAND)
        if lateness is not None:
            np.maximum(out, lateness, out=out)
        return out if out.any() else None

    def _predict_all(
        self,
        model: PredictorModel,
        rows: np.ndarray,
        candidates: Sequence[Candidate],
        stream: bool | None = None,
        *,
        now: float | None = None,
        tpot_floor: float = 0.0,
    ) -> list[Prediction]:
        names = tuple([c.endpoint.name for c in candidates])
        key = names if self.shape_label is None else (*names, *self.shapes(candidates))
        cached = self._cached(model)
        offsets = cached.offsets.get(key)
        if offsets is None:
            offsets = cached.add_offsets(key, model, names, self.shapes(candidates))
        wide = widen(rows)
        margin = self.calibration.get if model.objective == "quantile" else _NO_MARGIN.get
        lateness = (
            self._lateness(names, self._clock() if now is None else now)
            if self._awaiting_first
            else None
        )
        need_tpot = stream is not False or model.e2e is None
        need_e2e = stream is not True
        adjust = [
            self._adjustments("ttft", names, lateness),
            self._adjustments("tpot", names, None) if need_tpot else None,
            self._adjustments("e2e", names, lateness) if need_e2e else None,
        ]
        ttft = _predict(model.ttft, wide, offsets[0], margin("ttft", 0.0), adjust[0])
        tpot = (
            _predict(model.tpot, wide, offsets[1], margin("tpot", 0.0), adjust[1])
            if need_tpot
            else None
        )
        if tpot is not None and tpot_floor > 0:
            adjust[1] = _step_floor(tpot_floor, tpot, candidates, adjust[1])
        e2e = (
            _predict(model.e2e, wide, offsets[2], margin("e2e", 0.0), adjust[2])
            if need_e2e
            else None
        )
        n = len(candidates)
        if all(a is None for a in adjust):
            factors: Iterable[tuple[float, float, float]] = repeat(_NO_ADJUST, n)
        else:
            zero = [0.0] * n
            factors = zip(*(zero if a is None else a.tolist() for a in adjust), strict=True)
        return [
            Prediction(a, b, c, False, f)
            for a, b, c, f in zip(
                repeat(None, n) if ttft is None else ttft,
                repeat(None, n) if tpot is None else tpot,
                repeat(None, n) if e2e is None else e2e,
                factors,
                strict=False,  # a repeat() has no length; the lists have n items each
            )
        ]

    def _cached(self, model: PredictorModel | None) -> _ModelCache:
        """Per-model lookups, rebuilt when another generation is installed."""
        cache = self._model_cache
        if cache is None or cache.model is not model:
            cache = self._model_cache = _ModelCache(model)
        return cache

    def _route_by_fallback(self, active: bool, reason: str) -> None:
        if active:
            self.fallback_decisions += 1
        else:
            self.predicted_decisions += 1
        if active != self._fallback_active:
            self._fallback_active = active
            if active:
                logger.warning("predictor.fallback_on", extra={"reason": reason})
            else:
                logger.info("predictor.fallback_off")

    # -- samples ------------------------------------------------------------------------
    def dispatched(
        self,
        request_id: str,
        row: np.ndarray,
        endpoint: str,
        *,
        model: str,
        stream: bool,
        prediction: Prediction | None,
    ) -> None:
        now = self._clock()
        current = self.model
        margins = (
            self.calibration
            if current is not None and current.objective == "quantile"
            else _NO_MARGIN
        )
        prompt = float(row[PROMPT])
        typical = self.typical_prompt
        self.typical_prompt = (
            prompt if typical <= 0 else typical + TYPICAL_PROMPT_WEIGHT * (prompt - typical)
        )
        self._pending[request_id] = _Pending(
            row,
            endpoint,
            model,
            stream,
            now,
            prediction,
            margins,
            None if prediction is None else prediction.ttft_s,
        )
        if stream:
            self._awaiting_first.setdefault(endpoint, {})[request_id] = now
        self._dispatches += 1
        if self._dispatches % 1024 == 0:
            self._expire(now)

    def first_token(self, request_id: str, now: float) -> None:
        pending = self._pending.get(request_id)
        if pending is None or not pending.stream or pending.first_token_at is not None:
            return
        pending.first_token_at = now
        self._left_prefill(request_id, pending.endpoint, now)
        ttft = now - pending.dispatched_at
        self.windows["ttft"].add(pending.row, ttft, pending.endpoint)
        if ttft > 0:
            work = estimate.work_of(pending.row, self.typical_prompt)
            self.units.observe(pending.endpoint, math.log(ttft / work))
        if pending.prediction is not None and pending.prediction.estimated:
            return  # an estimated TTFT is not the model's: nothing to score or drift
        self._drifted("ttft", pending, ttft)
        if pending.prediction is not None and pending.prediction.ttft_s is not None:
            self._score("ttft", pending.prediction.ttft_s, ttft, pending.margins)
            self.hooks.outcome("ttft", pending.model, pending.prediction.ttft_s, ttft)

    def finished(self, request_id: str, record: RequestRecord) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        if pending.stream and pending.first_token_at is None:
            self._left_prefill(request_id, pending.endpoint, record.ended_at)
        if record.outcome is not Outcome.SUCCESS or record.status >= 400:
            return
        if pending.stream:
            tpot = record.tpot_s
            if tpot is not None and tpot > 0:
                self.windows["tpot"].add(pending.row, tpot, pending.endpoint)
                self._drifted("tpot", pending, tpot)
                if pending.prediction is not None and pending.prediction.tpot_s is not None:
                    self._score("tpot", pending.prediction.tpot_s, tpot, pending.margins)
                    self.hooks.outcome("tpot", pending.model, pending.prediction.tpot_s, tpot)
        else:
            self.windows["e2e"].add(pending.row, record.e2e_s, pending.endpoint)
            self._drifted("e2e", pending, record.e2e_s)
            if pending.prediction is not None and pending.prediction.e2e_s is not None:
                self.hooks.outcome("e2e", pending.model, pending.prediction.e2e_s, record.e2e_s)

    def _drifted(self, target: str, pending: _Pending, actual: float) -> None:
        """Feed the endpoint's live drift from the model's own prediction (the one it was
        chosen on, without the correction and the calibration margin applied to it: the drift
        must not chase the calibration, which is computed on top of it)."""
        prediction = pending.prediction
        if prediction is None or actual <= 0:
            return
        index = _TARGET_INDEX[target]
        predicted = (prediction.ttft_s, prediction.tpot_s, prediction.e2e_s)[index]
        if predicted is None or predicted <= 0:
            return
        own = math.log(predicted) - prediction.adjust[index] - pending.margins.get(target, 0.0)
        self.drift[target].observe(pending.endpoint, math.log(actual) - own)

    def _expire(self, now: float) -> None:
        """Drop requests whose end never came (a lost observer call must not leak memory)."""
        ttl = self.pending_ttl_s
        for request_id in [r for r, p in self._pending.items() if now - p.dispatched_at > ttl]:
            pending = self._pending.pop(request_id)
            self._no_longer_awaiting(request_id, pending.endpoint)

    def _left_prefill(self, request_id: str, endpoint: str, now: float) -> None:
        """The request got its first token (or ended without one) at ``now``: the endpoint's
        prompt work goes to the requests behind it from then on (when it was the oldest: one
        that overtook it, a short prompt finished in a step shared with it, says nothing about
        the oldest's progress)."""
        queue = self._awaiting_first.get(endpoint)
        was_head = queue is not None and next(iter(queue)) == request_id
        self._no_longer_awaiting(request_id, endpoint)
        if was_head and endpoint in self._awaiting_first:
            self._head_since[endpoint] = now

    def _no_longer_awaiting(self, request_id: str, endpoint: str) -> None:
        queue = self._awaiting_first.get(endpoint)
        if queue is not None:
            queue.pop(request_id, None)
            if not queue:
                del self._awaiting_first[endpoint]
                self._head_since.pop(endpoint, None)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def forget(self, endpoint: str) -> None:
        """The endpoint left the pool: drop its live corrections (drift, cold-start unit).
        Requests still in flight to it end as usual; its samples age out of the window."""
        for drift in self.drift.values():
            drift.forget(endpoint)
        self.units.forget(endpoint)

    # -- live accuracy ------------------------------------------------------------------
    def _score(
        self, target: str, predicted: float, actual: float, margins: Mapping[str, float]
    ) -> None:
        self._errors[target].append(abs(predicted - actual) / max(actual, 1e-9))
        self._covered[target].append(actual <= predicted)
        self._calibrate(target, predicted, actual, margins)

    def _calibrate(
        self, target: str, predicted: float, actual: float, margins: Mapping[str, float]
    ) -> None:
        """Online quantile calibration: split conformal prediction over a sliding window.

        A quantile model trained on the last window under-covers when load rises faster than
        it retrains (and over-covers when it falls). For a quantile model, each scored request
        adds ``log(actual / model's own prediction)`` to the target's window of the last
        ``CALIBRATION_WINDOW``; every ``CALIBRATION_EVERY`` the margin becomes the window's
        quantile at the trained level, so that raising the model's predictions by it would have
        covered that share of recent requests. It scales every endpoint's prediction alike:
        the routing order is unchanged, the predicted values (and SLO decisions on them) are
        calibrated. A window, not a step per request (adaptive conformal inference): at p90 a
        stepped margin rises nine times faster than it falls, and overshot after a burst.
        Only the targets in ``CALIBRATED``.
        """
        model = self.model
        if model is None or model.objective != "quantile" or target not in CALIBRATED:
            return
        residuals = self._residuals[target]
        residuals.append(
            math.log(max(actual, 1e-9)) - math.log(max(predicted, 1e-9)) + margins.get(target, 0.0)
        )
        self._scored[target] += 1
        if len(residuals) < CALIBRATION_MIN or self._scored[target] % CALIBRATION_EVERY:
            return
        margin = float(np.quantile(np.fromiter(residuals, np.float64), model.quantile))
        updated = dict(self.calibration)
        updated[target] = min(max(margin, -MAX_CALIBRATION), MAX_CALIBRATION)
        self.calibration = updated

    def accuracy(self) -> LiveAccuracy:
        def mean(values: deque[float] | deque[bool]) -> float:
            return sum(values) / len(values) if values else math.nan

        return LiveAccuracy(
            ttft_mape=mean(self._errors["ttft"]),
            tpot_mape=mean(self._errors["tpot"]),
            ttft_coverage=mean(self._covered["ttft"]),
            tpot_coverage=mean(self._covered["tpot"]),
            samples=len(self._errors["ttft"]),
        )

    def window_sizes(self) -> Mapping[str, int]:
        return {t: len(w) for t, w in self.windows.items()}


_TARGET_INDEX = {"ttft": 0, "tpot": 1, "e2e": 2}
"""Each target's position in a ``Prediction`` (and in its ``adjust``)."""


def _predict(
    target: TargetModel | None,
    wide: np.ndarray,
    offsets: np.ndarray | None,
    margin: float,
    adjust: np.ndarray | None = None,
) -> list[float] | None:
    if target is None or offsets is None:
        return None
    seconds = target.predict_wide(wide, offsets)
    if margin:
        seconds *= math.exp(margin)
    if adjust is not None:
        seconds *= np.exp(adjust)
    out: list[float] = seconds.tolist()
    return out


def _step_floor(
    factor: float, tpot: list[float], candidates: Sequence[Candidate], adjust: np.ndarray | None
) -> np.ndarray | None:
    """Raise each TPOT prediction (in place) to ``factor`` x its endpoint's live engine-step
    interval (``Candidate.steps``, timed by the gateway from the streams it relays); returns
    the log factors applied, ``adjust`` included.

    Under rising load the trees, refitted on TPOTs that are known only when a request ends,
    lag the batch growing during decodes; the step interval shows it at once (a p90 TPOT
    below the pod's current step time is already wrong for every stream running there)."""
    raised: np.ndarray | None = None
    for i, c in enumerate(candidates):
        steps = c.steps
        if steps is None or steps.interval_s <= 0:
            continue
        floor = factor * steps.interval_s
        if tpot[i] < floor:
            if raised is None:
                raised = np.zeros(len(tpot)) if adjust is None else adjust.copy()
            raised[i] += math.log(floor / tpot[i]) if tpot[i] > 0 else 0.0
            tpot[i] = floor
    return adjust if raised is None else raised


_NO_MARGIN: Mapping[str, float] = {}
_NO_ADJUST = (0.0, 0.0, 0.0)


_Offsets = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]


class _ModelCache:
    """Lookups derived from one model generation, kept for the hot path: each endpoint's speed
    (for ``prefill_wait``) and the per-target offset arrays of recently seen candidate lists
    (a pool's candidate list changes rarely, so the per-candidate lookups are paid once)."""

    __slots__ = ("model", "offsets", "speed")

    MAX_LISTS = 64

    def __init__(self, model: PredictorModel | None) -> None:
        self.model = model
        ttft = None if model is None else model.ttft
        self.speed = {} if ttft is None else {e: math.exp(-o) for e, o in ttft.offsets.items()}
        self.offsets: dict[tuple[str | None, ...], _Offsets] = {}
        """Keyed by the candidates' names (and shapes, when a shape label is configured)."""

    def add_offsets(
        self,
        key: tuple[str | None, ...],
        model: PredictorModel,
        names: Sequence[str],
        shapes: Sequence[str | None],
    ) -> _Offsets:
        ttft, tpot, e2e = (
            None if t is None else model.offsets(t, names, shapes)
            for t in (model.ttft, model.tpot, model.e2e)
        )
        for array in (ttft, tpot, e2e):
            if array is not None:
                array.setflags(write=False)
        if len(self.offsets) >= self.MAX_LISTS:
            self.offsets.clear()
        out = self.offsets[key] = (ttft, tpot, e2e)
        return out


LATENCY_PREDICTOR: AttrKey[LatencyPredictor] = AttrKey("latency-predictor")


def shared_predictor(
    services: Attributes, clock: Callable[[], float], rng: random.Random
) -> LatencyPredictor:
    """The predictor the plugins of one scheduler share: the gateway's, or a default one."""
    predictor = services.get(LATENCY_PREDICTOR)
    if predictor is None:
        predictor = LatencyPredictor(clock=clock, rng=rng)
        services.put(LATENCY_PREDICTOR, predictor)
    return predictor
