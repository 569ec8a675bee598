"""The gateway's Prometheus metrics, on the app's own registry (never the global default).

Names follow llm-d where llm-d has one (``inference_objective_*``, ``inference_extension_*``,
``inference_pool_*``), so its dashboards and the guide's verification steps work unchanged;
the rest are ``slogate_*``. Labels stay low-cardinality: model, endpoint, status class, plugin.
Per-endpoint and pool gauges are computed at scrape time from the endpoint store, so they cost
nothing per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.loopmetrics import LoopCounter, LoopHistogram
from scheduler.datalayer.store import EndpointStore, Health
from scheduler.framework.plugins import Outcome, Plugin, RequestRecord
from scheduler.framework.types import InferenceRequest

GENERAL_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
    30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
TPOT_BUCKETS = (
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.6, 0.8, 1, 1.5, 2, 3, 4.5, 6, 12, 18, 24, 30, 36, 48, 60, 90, 120, 180, 270, 360,
)  # fmt: skip
PLUGIN_BUCKETS = (
    0.000001, 0.000005, 0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip
TOKEN_BUCKETS = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
)  # fmt: skip


BACKGROUND_TASKS = (
    "scrape",
    "discovery",
    "trainer",
    "health_check",
    "kubernetes",
    "reload",
    "peers",
)
"""The ``task`` label values of ``slogate_background_task_errors_total``."""
RELOAD_RESULTS = ("applied", "unchanged", "rejected")
"""The ``result`` label values of ``slogate_config_reloads_total``."""
RETRY_REASONS = ("connect", "reset", "protocol", "5xx", "busy")
"""The ``reason`` label values of ``slogate_upstream_retries_total``: the retried faults."""
RETRY_DENIALS = ("budget", "slo")
"""The ``reason`` label values of ``slogate_upstream_retries_denied_total``."""


class GatewayMetrics:
    """Owns the registry; the director and the scheduler's timer record into it."""

    def __init__(self, store: EndpointStore, clock: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        model_labels = ("model_name", "target_model_name")
        self.requests = self._counter(
            "inference_objective_request",
            "Inference requests dispatched to an endpoint, by model.",
            model_labels,
        )
        self.request_errors = self._counter(
            "inference_objective_request_error",
            "Dispatched inference requests that did not succeed, by error code.",
            (*model_labels, "error_code"),
        )
        self.request_duration = self._histogram(
            "inference_objective_request_duration_seconds",
            "Dispatched inference request duration, receipt to last byte.",
            model_labels,
            buckets=GENERAL_BUCKETS,
        )
        self.ttft = self._histogram(
            "inference_objective_request_ttft_seconds",
            "Time to first token, from dispatch to the first generated token (streaming).",
            model_labels,
            buckets=GENERAL_BUCKETS,
        )
        self.tpot = self._histogram(
            "inference_objective_request_tpot_seconds",
            "Time per output token after the first, per request (streaming).",
            model_labels,
            buckets=TPOT_BUCKETS,
        )
        self.pooling_duration = self._histogram(
            "slogate_pooling_request_duration_seconds",
            "Latency of successful pooling requests (embeddings, pooling, classify, score, "
            "rerank), from dispatch to the last byte, by model and route kind.",
            ("model_name", "route"),
            buckets=GENERAL_BUCKETS,
        )
        self.input_tokens = self._histogram(
            "inference_objective_input_tokens",
            "Prompt tokens per request (the gateway's count).",
            model_labels,
            buckets=TOKEN_BUCKETS,
        )
        self.output_tokens = self._histogram(
            "inference_objective_output_tokens",
            "Generated tokens per request (usage when reported, else counted events).",
            model_labels,
            buckets=TOKEN_BUCKETS,
        )
        self.slo_violations = self._counter(
            "inference_objective_request_slo_violation",
            "Requests with a latency objective that missed it, by type (ttft, tpot).",
            (*model_labels, "type"),
        )
        self.ttft_slo_violations = self._counter(
            "inference_objective_request_ttft_slo_violation",
            "Requests with a TTFT objective that missed it (the llm-d guide's name).",
            model_labels,
        )
        self.tpot_slo_violations = self._counter(
            "inference_objective_request_tpot_slo_violation",
            "Streamed requests with a TPOT objective that missed it (the llm-d guide's name).",
            model_labels,
        )
        slo_labels = (*model_labels, "objective")
        self.slo_requests = self._counter(
            "slogate_slo_requests",
            "Requests with a latency objective that ended, by objective and whether every "
            "objective was met (met: true, false).",
            (*slo_labels, "met"),
        )
        self.slo_ttft = self._histogram(
            "slogate_slo_request_ttft_seconds",
            "Measured TTFT of requests with a TTFT objective.",
            slo_labels,
            buckets=GENERAL_BUCKETS,
        )
        self.slo_predicted_ttft = self._histogram(
            "slogate_slo_request_predicted_ttft_seconds",
            "Predicted TTFT (of the endpoint chosen) of requests with a TTFT objective.",
            slo_labels,
            buckets=GENERAL_BUCKETS,
        )
        self.slo_tpot = self._histogram(
            "slogate_slo_request_tpot_seconds",
            "Measured TPOT of streamed requests with a TPOT objective.",
            slo_labels,
            buckets=TPOT_BUCKETS,
        )
        self.slo_predicted_tpot = self._histogram(
            "slogate_slo_request_predicted_tpot_seconds",
            "Predicted TPOT (of the endpoint chosen) of streamed requests with a TPOT objective.",
            slo_labels,
            buckets=TPOT_BUCKETS,
        )
        self.shed_requests = self._counter(
            "slogate_requests_shed",
            "Requests refused at admission (HTTP 429), by objective and reason "
            "(x-llm-d-request-dropped-reason).",
            ("objective", "reason"),
        )
        self.queue_duration = self._histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Time sheddable requests waited in the admission queue, by outcome "
            "(admitted, or the reason they were refused).",
            ("priority", "outcome"),
            buckets=GENERAL_BUCKETS,
        )
        self.queued: dict[int, int] = {}
        """Requests waiting in the admission queue, by priority."""
        self.registry.register(_QueueCollector(self.queued))
        self.http_requests = self._counter(
            "slogate_http_requests",
            "HTTP requests answered by the gateway, by route and status code.",
            ("route", "code"),
        )
        self.http_duration = self._histogram(
            "slogate_http_request_duration_seconds",
            "HTTP request duration at the gateway, receipt to last byte, by route and status.",
            ("route", "code"),
            buckets=GENERAL_BUCKETS,
        )
        self.dispatch = self._histogram(
            "slogate_request_dispatch_duration_seconds",
            "Gateway time from receipt to dispatch: parse, tokenize, schedule.",
            buckets=OVERHEAD_BUCKETS,
        )
        self.scheduler_e2e = self._histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Scheduling cycle duration: producers, admitters, filters, scorers, picker.",
            buckets=PLUGIN_BUCKETS,
        )
        self.plugin_duration = self._histogram(
            "inference_extension_plugin_duration_seconds",
            "Duration of each plugin call.",
            ("extension_point", "plugin_type", "plugin_name"),
            buckets=PLUGIN_BUCKETS,
        )
        self.upstream_errors = self._counter(
            "slogate_upstream_errors",
            "Failures talking to an endpoint, by reason (connect, reset, protocol, timeout, "
            "5xx, busy: 429 or 503), whether retried, answered or cutting a stream.",
            ("endpoint", "reason"),
        )
        self.retries = self._counter(
            "slogate_upstream_retries",
            "Attempts that failed before any byte reached the client and were tried again on "
            "another endpoint, by fault (connect, reset, protocol, 5xx, busy: 429 or 503).",
            ("reason",),
        )
        self.retries_denied = self._counter(
            "slogate_upstream_retries_denied",
            "Retryable failures not retried: the retry budget was spent (budget), or the wait "
            "would pass the request's TTFT objective (slo).",
            ("reason",),
        )
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for reason in RETRY_DENIALS:
            self.retries_denied.labels(reason)
        self.ejections = self._counter(
            "slogate_endpoint_ejections",
            "Times an endpoint was ejected from routing by outlier detection.",
            ("endpoint",),
        )
        self.scrape_errors = self._counter(
            "slogate_endpoint_scrape_errors",
            "Metrics scrapes that gave no usable metrics (unreachable, error status, "
            "undecodable or unparsable answer, unexpected error), by endpoint.",
            ("endpoint",),
        )
        self.background_task_errors = self._counter(
            "slogate_background_task_errors",
            "Unexpected exceptions caught in a background task, which carried on after a "
            "backoff; by task.",
            ("task",),
        )
        for task in BACKGROUND_TASKS:
            self.background_task_errors.labels(task)
        self.config_reloads = self._counter(
            "slogate_config_reloads",
            "Configuration reloads (SIGHUP or a changed file), by result: applied, unchanged, "
            "rejected (the new configuration was invalid; the running one stays).",
            ("result",),
        )
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self.config_last_reload_successful = 1.0
        """1 when the last reload was applied (or none was tried), 0 when it was rejected."""
        self.registry.register(
            _ValueGauge(
                "slogate_config_last_reload_successful",
                "1 when the last configuration reload succeeded (or none was tried), 0 when "
                "it was rejected and an older configuration still runs.",
                lambda: self.config_last_reload_successful,
            )
        )
        self.registry.register(PoolCollector(store, clock))
        self._plugin_children: dict[tuple[str, str, str], Any] = {}
        self._model_children: dict[str, _ModelChildren] = {}
        self._http_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._pooling_children: dict[tuple[str, str], Any] = {}

    def forget_endpoint(self, endpoint: str) -> None:
        """The endpoint left the pool: its labelled series go (label sets stay bounded when
        pods come and go)."""
        for counter in (self.upstream_errors, self.ejections, self.scrape_errors):
            counter.remove_where("endpoint", endpoint)

    def _counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> LoopCounter:
        counter = LoopCounter(name, doc, labelnames)
        self.registry.register(counter)
        return counter

    def _histogram(
        self, name: str, doc: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> LoopHistogram:
        histogram = LoopHistogram(name, doc, labelnames, buckets)
        self.registry.register(histogram)
        return histogram

    # PluginTimer
    def observe(self, extension_point: str, plugin: Plugin, seconds: float) -> None:
        key = (extension_point, plugin.TYPE, plugin.name)
        child = self._plugin_children.get(key)
        if child is None:
            child = self._plugin_children[key] = self.plugin_duration.labels(*key)
        child.observe(seconds)

    # RequestObserver
    def on_first_token(self, request: InferenceRequest, endpoint: str, now: float) -> None:
        return None

    def on_end(self, request: InferenceRequest, record: RequestRecord) -> None:
        m = self._model_children.get(record.model)
        if m is None:
            m = self._model_children[record.model] = _ModelChildren(self, record.model)
        m.requests.inc()
        if record.outcome is not Outcome.SUCCESS:
            self.request_errors.labels(record.model, record.model, record.outcome.value).inc()
        m.duration.observe(record.ended_at - request.received_at)
        if not request.api.generates and record.outcome is Outcome.SUCCESS:
            key = (record.model, request.api.value)
            pooling = self._pooling_children.get(key)
            if pooling is None:
                pooling = self._pooling_children[key] = self.pooling_duration.labels(*key)
            pooling.observe(record.e2e_s)
        m.input_tokens.observe(record.prompt_tokens)
        if record.completion_tokens:
            m.output_tokens.observe(record.completion_tokens)
        ttft = record.ttft_s
        if ttft is not None:
            m.ttft.observe(ttft)
        tpot = record.tpot_s
        if tpot is not None:
            m.tpot.observe(tpot)
        if request.slo.any and record.outcome is Outcome.SUCCESS:
            self._slo_outcome(request, record, ttft, tpot)

    def _slo_outcome(
        self,
        request: InferenceRequest,
        record: RequestRecord,
        ttft: float | None,
        tpot: float | None,
    ) -> None:
        """Violations of a successful request's objectives. TTFT is judged when a first token
        was seen; TPOT only for streamed requests with two tokens or more."""
        slo, model = request.slo, record.model
        labels = (model, model, request.objective)
        met = True
        if slo.ttft_ms is not None and ttft is not None:
            self.slo_ttft.labels(*labels).observe(ttft)
            if record.predicted_ttft_s is not None:
                self.slo_predicted_ttft.labels(*labels).observe(record.predicted_ttft_s)
            if ttft * 1000 > slo.ttft_ms:
                met = False
                self.slo_violations.labels(model, model, "ttft").inc()
                self.ttft_slo_violations.labels(model, model).inc()
        if slo.tpot_ms is not None and request.stream and tpot is not None:
            self.slo_tpot.labels(*labels).observe(tpot)
            if record.predicted_tpot_s is not None:
                self.slo_predicted_tpot.labels(*labels).observe(record.predicted_tpot_s)
            if tpot * 1000 > slo.tpot_ms:
                met = False
                self.slo_violations.labels(model, model, "tpot").inc()
                self.tpot_slo_violations.labels(model, model).inc()
        self.slo_requests.labels(*labels, "true" if met else "false").inc()

    def shed(self, objective: str, reason: str) -> None:
        self.shed_requests.labels(objective, reason).inc()

    def queue_changed(self, priority: int, delta: int) -> None:
        self.queued[priority] = self.queued.get(priority, 0) + delta

    def queue_waited(self, priority: int, outcome: str, seconds: float) -> None:
        self.queue_duration.labels(str(priority), outcome).observe(seconds)

    def http(self, route: str, code: int, seconds: float) -> None:
        key = (route, code)
        children = self._http_children.get(key)
        if children is None:
            labels = (route, str(code))
            children = self._http_children[key] = (
                self.http_requests.labels(*labels),
                self.http_duration.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)


class _ModelChildren:
    """Label children of one model, resolved once: ``labels()`` is costly on the hot path."""

    __slots__ = ("duration", "input_tokens", "output_tokens", "requests", "tpot", "ttft")

    def __init__(self, metrics: GatewayMetrics, model: str) -> None:
        labels = (model, model)
        self.requests = metrics.requests.labels(*labels)
        self.duration = metrics.request_duration.labels(*labels)
        self.input_tokens = metrics.input_tokens.labels(*labels)
        self.output_tokens = metrics.output_tokens.labels(*labels)
        self.ttft = metrics.ttft.labels(*labels)
        self.tpot = metrics.tpot.labels(*labels)


class _QueueCollector(Collector):
    def __init__(self, queued: dict[int, int]) -> None:
        self._queued = queued

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "inference_extension_flow_control_queue_size",
            "Requests waiting in the admission queue, by priority.",
            labels=("priority",),
        )
        for priority, count in sorted(self._queued.items()):
            family.add_metric((str(priority),), count)
        yield family


class PoolCollector(Collector):
    """Per-endpoint and pool-wide gauges, read from the store when Prometheus scrapes."""

    def __init__(self, store: EndpointStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store, now = self._store, self._clock()
        inflight = GaugeMetricFamily(
            "slogate_endpoint_inflight_requests",
            "Requests this gateway dispatched to the endpoint and not finished (other "
            "replicas' are not counted: sum over replicas).",
            labels=("endpoint",),
        )
        prefill = GaugeMetricFamily(
            "slogate_endpoint_inflight_prefill_tokens",
            "Uncached prompt tokens dispatched to the endpoint that have not produced a token.",
            labels=("endpoint",),
        )
        up = GaugeMetricFamily(
            "slogate_endpoint_up",
            "1 when the endpoint's metrics are fresh, 0 when stale or unknown, -1 when down.",
            labels=("endpoint",),
        )
        ejected = GaugeMetricFamily(
            "slogate_endpoint_ejected",
            "1 while outlier detection keeps the endpoint out of routing, else 0.",
            labels=("endpoint",),
        )
        silent = GaugeMetricFamily(
            "slogate_endpoint_silent_seconds",
            "How long the endpoint has sent no chunk while streams are in flight on it (0 when "
            "none is); past upstream.silent_after_s it is passed over as stalled.",
            labels=("endpoint",),
        )
        known = GaugeMetricFamily(
            "slogate_endpoint_metrics_known",
            "1 when the endpoint's load metrics are fresh and usable, else 0 (never scraped, "
            "undecodable or missing metrics, stale, down).",
            labels=("endpoint",),
        )
        ready = 0
        kv: list[float] = []
        queue: list[float] = []
        running: list[float] = []
        for endpoint in store.endpoints:
            load = store.inflight.local(endpoint.name)
            inflight.add_metric((endpoint.name,), load.requests)
            prefill.add_metric((endpoint.name,), load.prefill_tokens)
            health = store.health(endpoint.name, now)
            up.add_metric((endpoint.name,), {Health.UP: 1, Health.UNKNOWN: 0}.get(health, -1))
            known.add_metric((endpoint.name,), 1 if health is Health.UP else 0)
            ejected.add_metric((endpoint.name,), 1 if store.ejected(endpoint.name, now) else 0)
            silent.add_metric((endpoint.name,), store.inflight.silent_s(endpoint.name, now))
            if health is Health.DOWN:
                continue
            ready += 1
            metrics = store.metrics(endpoint.name)
            if health is Health.UP and metrics is not None:
                kv.append(metrics.kv_usage)
                queue.append(metrics.waiting)
                running.append(metrics.running)
        yield inflight
        yield prefill
        yield up
        yield known
        yield ejected
        yield silent
        yield GaugeMetricFamily(
            "inference_pool_ready_pods", "Endpoints not marked down.", value=ready
        )
        for name, values, doc in (
            ("inference_pool_average_kv_cache_utilization", kv, "Mean KV-cache usage (0-1)."),
            ("inference_pool_average_queue_size", queue, "Mean waiting requests per endpoint."),
            ("inference_pool_average_running_requests", running, "Mean running requests."),
        ):
            yield GaugeMetricFamily(name, doc, value=sum(values) / len(values) if values else 0.0)


class _ValueGauge(Collector):
    """One unlabelled gauge read from ``value()`` when Prometheus scrapes."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self._name = name
        self._doc = documentation
        self._value = value

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self._name, self._doc)]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc, value=self._value())
