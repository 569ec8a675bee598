"""Metrics of the latency predictor: llm-d's prediction histograms plus model and trainer state.

Per-request observations go through loop-owned histograms (``PredictorHooks``); everything
else (model version, window sizes, live accuracy, trainer counters, per-endpoint speed) is
read from the predictor and trainer when Prometheus scrapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.loopmetrics import LoopHistogram
from gateway.telemetry import GENERAL_BUCKETS, TPOT_BUCKETS
from gateway.trainer import PredictorTrainer
from scheduler.predictor.runtime import LatencyPredictor

PREDICTION_BUCKETS = (
    0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
    0.1, 0.2, 0.5, 1.0,
)  # fmt: skip


class PredictorMetrics:
    """Implements ``PredictorHooks``; registers its families on the gateway's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model_name", "target_model_name")

        def histogram(name: str, doc: str, names: tuple[str, ...], buckets: Any) -> LoopHistogram:
            h = LoopHistogram(name, doc, names, buckets)
            registry.register(h)
            return h

        self.predicted = {
            "ttft": histogram(
                "inference_objective_request_predicted_ttft_seconds",
                "Predicted TTFT of the endpoint that served the request.",
                labels,
                GENERAL_BUCKETS,
            ),
            "tpot": histogram(
                "inference_objective_request_predicted_tpot_seconds",
                "Predicted TPOT of the endpoint that served the request.",
                labels,
                TPOT_BUCKETS,
            ),
            "e2e": histogram(
                "slogate_request_predicted_e2e_seconds",
                "Predicted end-to-end latency of the endpoint that served a non-streamed request.",
                labels,
                GENERAL_BUCKETS,
            ),
        }
        self.actual_e2e = histogram(
            "slogate_request_e2e_seconds",
            "Measured dispatch-to-end latency of non-streamed requests (next to the prediction).",
            labels,
            GENERAL_BUCKETS,
        )
        # llm-d records the one batched prediction call into both duration histograms.
        self.ttft_duration = histogram(
            "inference_objective_request_ttft_prediction_duration_seconds",
            "Duration of the batched latency prediction for all candidates of a request.",
            (),
            PREDICTION_BUCKETS,
        ).labels()
        self.tpot_duration = histogram(
            "inference_objective_request_tpot_prediction_duration_seconds",
            "Duration of the batched latency prediction for all candidates of a request.",
            (),
            PREDICTION_BUCKETS,
        ).labels()

    def prediction_timed(self, seconds: float) -> None:
        self.ttft_duration.observe(seconds)
        self.tpot_duration.observe(seconds)

    def outcome(self, target: str, model: str, predicted_s: float, actual_s: float) -> None:
        self.predicted[target].labels(model, model).observe(predicted_s)
        if target == "e2e":
            self.actual_e2e.labels(model, model).observe(actual_s)


class PredictorStateCollector(Collector):
    def __init__(self, predictor: LatencyPredictor, trainer: PredictorTrainer) -> None:
        self._predictor = predictor
        self._trainer = trainer

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        p, stats = self._predictor, self._trainer.stats
        model = p.model
        yield GaugeMetricFamily(
            "slogate_predictor_ready",
            "1 when routing uses predictions, 0 when it falls back to the heuristic.",
            value=1 if p.ready else 0,
        )
        yield GaugeMetricFamily(
            "slogate_predictor_model_version",
            "Generation of the installed model (0: none yet).",
            value=0 if model is None else model.version,
        )
        objective = GaugeMetricFamily(
            "slogate_predictor_objective_info",
            "What the models predict: a quantile of latency or its typical (mean) value.",
            labels=("objective", "quantile"),
        )
        cfg = self._trainer.cfg
        objective.add_metric(
            (cfg.objective, str(cfg.quantile) if cfg.objective == "quantile" else ""), 1
        )
        yield objective
        samples = GaugeMetricFamily(
            "slogate_predictor_window_samples",
            "Training samples held per target (plus held-out samples in held_out).",
            labels=("target", "set"),
        )
        for target, window in p.windows.items():
            samples.add_metric((target, "train"), len(window))
            samples.add_metric((target, "held_out"), window.test_size)
        yield samples
        runs = CounterMetricFamily(
            "slogate_predictor_training_runs",
            "Training runs by result (accepted/rejected count targets; failed counts runs).",
            labels=("result",),
        )
        for result, value in (
            ("accepted", stats.accepted),
            ("rejected", stats.rejected),
            ("failed", stats.failed),
        ):
            runs.add_metric((result,), value)
        yield runs
        yield GaugeMetricFamily(
            "slogate_predictor_last_training_duration_seconds",
            "Wall time of the last successful training run, worker process included.",
            value=stats.last_duration_s,
        )
        yield GaugeMetricFamily(
            "slogate_predictor_last_training_cpu_seconds",
            "CPU time the last successful training run spent fitting.",
            value=stats.last_cpu_s,
        )
        decisions = CounterMetricFamily(
            "slogate_predictor_decisions",
            "Scheduling decisions made with predictions or with the heuristic fallback.",
            labels=("mode",),
        )
        decisions.add_metric(("predicted",), p.predicted_decisions)
        decisions.add_metric(("fallback",), p.fallback_decisions)
        yield decisions
        accuracy = p.accuracy()
        mape = GaugeMetricFamily(
            "slogate_predictor_live_mape",
            "Mean absolute percentage error of predictions for recent finished requests.",
            labels=("target",),
        )
        coverage = GaugeMetricFamily(
            "slogate_predictor_live_quantile_coverage",
            "Share of recent requests whose latency stayed under the predicted quantile.",
            labels=("target",),
        )
        for target, m, c in (
            ("ttft", accuracy.ttft_mape, accuracy.ttft_coverage),
            ("tpot", accuracy.tpot_mape, accuracy.tpot_coverage),
        ):
            if not math.isnan(m):
                mape.add_metric((target,), m)
                coverage.add_metric((target,), c)
        yield mape
        yield coverage
        calibration = GaugeMetricFamily(
            "slogate_predictor_quantile_calibration",
            "Factor a quantile model's predictions are scaled by so that recent requests are "
            "covered at the trained quantile (1 = the model is calibrated).",
            labels=("target",),
        )
        if model is not None and model.objective == "quantile":
            for target, margin in p.calibration.items():
                calibration.add_metric((target,), math.exp(margin))
        yield calibration
        factor = GaugeMetricFamily(
            "slogate_predictor_endpoint_latency_factor",
            "Learned latency multiplier of each endpoint relative to the pool (2 = twice as slow).",
            labels=("endpoint", "target"),
        )
        if model is not None:
            for target_model in (model.ttft, model.tpot, model.e2e):
                if target_model is not None:
                    for endpoint, offset in target_model.offsets.items():
                        factor.add_metric((endpoint, target_model.target), math.exp(offset))
        yield factor
