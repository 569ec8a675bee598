"""Built-in plugins and the one explicit list that registers them."""

from __future__ import annotations

from scheduler.framework.registry import PluginRegistry
from scheduler.plugins.admitters.latency_slo import LatencySloAdmitter
from scheduler.plugins.filters.prefix_affinity import PrefixCacheAffinityFilter
from scheduler.plugins.filters.slo_tier import SloHeadroomTierFilter
from scheduler.plugins.pickers.max_score import MaxScorePicker
from scheduler.plugins.pickers.random_pick import RandomPicker
from scheduler.plugins.pickers.round_robin import RoundRobinPicker
from scheduler.plugins.pickers.weighted_random import WeightedRandomPicker
from scheduler.plugins.producers.approx_prefix import ApproxPrefixCacheProducer
from scheduler.plugins.producers.predicted_latency import PredictedLatencyProducer
from scheduler.plugins.producers.slo_headroom import SloHeadroomProducer
from scheduler.plugins.scorers.inflight_load import InflightLoadScorer
from scheduler.plugins.scorers.kv_cache_utilization import KvCacheUtilizationScorer
from scheduler.plugins.scorers.latency import LatencyScorer
from scheduler.plugins.scorers.lora_affinity import LoraAffinityScorer
from scheduler.plugins.scorers.prefix_cache import PrefixCacheScorer
from scheduler.plugins.scorers.queue import QueueScorer
from scheduler.plugins.scorers.running_requests import RunningRequestsScorer


def builtin_registry() -> PluginRegistry:
    return PluginRegistry(
        [
            # producers
            ApproxPrefixCacheProducer,
            PredictedLatencyProducer,
            SloHeadroomProducer,
            # admitters
            LatencySloAdmitter,
            # filters
            PrefixCacheAffinityFilter,
            SloHeadroomTierFilter,
            # scorers
            QueueScorer,
            KvCacheUtilizationScorer,
            RunningRequestsScorer,
            InflightLoadScorer,
            PrefixCacheScorer,
            LatencyScorer,
            LoraAffinityScorer,
            # pickers
            MaxScorePicker,
            WeightedRandomPicker,
            RandomPicker,
            RoundRobinPicker,
        ]
    )
