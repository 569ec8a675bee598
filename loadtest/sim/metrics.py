"""``/metrics`` in vLLM's names, read straight from the engine when scraped.

The gateway scrapes every pod every 50 ms, so nothing here runs per token: a custom collector
on the sim's own ``CollectorRegistry`` reads the engine's queue lengths, KV usage and the plain
counters of :class:`~loadtest.sim.stats.EngineStats` only at scrape time. Custom metric
families also mean no ``*_created`` series, and counters are named without ``_total`` so
prometheus_client's own suffix gives exactly vLLM's exposed names
(``vllm:prompt_tokens_total``). Every series carries ``model_name`` and ``engine="0"``,
as vLLM V1 labels them. A sim serving LoRA adapters also exposes
``vllm:lora_requests_info`` (see :mod:`loadtest.sim.lora`), which has only vLLM's three
LoRA labels.

The exposition is gzip-compressed when the scraper's ``Accept-Encoding`` lists ``gzip``, and
plain otherwise, as vLLM's ``/metrics`` (prometheus_client's ASGI app) serves it.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, gzip_accepted

from loadtest.sim.engines import SimEngine
from loadtest.sim.lora import LoraTracker
from loadtest.sim.stats import FINISH_REASONS, Histogram

METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# prometheus_client uses gzip's default level 9; level 1 is the same format, several times
# cheaper, and a scrape every 50 ms should cost the sim next to nothing.
GZIP_LEVEL = 1

_LABELS = ("model_name", "engine")


class SimCollector:
    """Collects one engine's vLLM metrics (registered on the sim's own registry)."""

    def __init__(self, engine: SimEngine, model_name: str, lora: LoraTracker | None = None) -> None:
        self._engine = engine
        self._lora = lora if lora is not None and lora.enabled else None
        self._label_values = (model_name, "0")
        config = engine.config
        self._cache_info_labels = {
            "model_name": model_name,
            "engine": "0",
            "block_size": str(config.block_size),
            "num_gpu_blocks": str(config.kv_blocks),
            "num_cpu_blocks": "0",
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            "gpu_memory_utilization": "0.9",
        }

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        stats = engine.stats
        values = self._label_values
        yield self._gauge(
            "vllm:num_requests_running", "Requests in model execution batches.", engine.num_running
        )
        yield self._gauge(
            "vllm:num_requests_waiting", "Requests waiting to be processed.", engine.num_waiting
        )
        yield self._gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            engine.kv.usage,
        )
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=list(self._cache_info_labels),
        )
        info.add_metric(list(self._cache_info_labels.values()), 1.0)
        yield info
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            stats.prefix_cache_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            stats.prefix_cache_hits,
        )
        yield self._counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            stats.preemptions,
        )
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens
        )
        yield self._counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*_LABELS, "finished_reason"],
        )
        for reason in FINISH_REASONS:
            success.add_metric([*values, reason], stats.finished[reason])
        yield success
        yield self._histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            stats.ttft_s,
        )
        yield self._histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            stats.inter_token_s,
        )
        yield self._histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            stats.e2e_s,
        )
        if self._lora is not None:
            yield self._lora.collect(engine_busy=engine.num_running + engine.num_waiting > 0)

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=_LABELS)
        family.add_metric(self._label_values, value)
        return family

    def _counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=_LABELS)
        family.add_metric(self._label_values, value)
        return family

    def _histogram(
        self, name: str, documentation: str, histogram: Histogram
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=_LABELS)
        family.add_metric(self._label_values, histogram.cumulative(), histogram.sum)
        return family


def create_registry(
    engine: SimEngine, model_name: str, lora: LoraTracker | None = None
) -> CollectorRegistry:
    """A fresh registry holding only this engine's metrics (never the default registry)."""
    registry = CollectorRegistry()
    registry.register(SimCollector(engine, model_name, lora))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """Prometheus text exposition (format 0.0.4) of ``registry``."""
    return generate_latest(registry)


def metrics_exposition(
    registry: CollectorRegistry, accept_encoding: str
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a ``/metrics`` response: gzip when ``accept_encoding`` accepts it
    (prometheus_client's own test of the header), plain text otherwise."""
    body = render_metrics(registry)
    headers = {"Content-Type": METRICS_CONTENT_TYPE, "Vary": "Accept-Encoding"}
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        headers["Content-Encoding"] = "gzip"
    return body, headers
