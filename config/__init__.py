"""Typed, validated configuration. Imports neither ``gateway`` nor ``scheduler``."""

from config.errors import ConfigError
from config.loader import (
    from_mapping,
    from_yaml,
    load_config,
    load_preset,
    preset_names,
    resolve_scheduling,
)
from config.model import (
    DEFAULT_PRESET,
    EndpointConfig,
    GatewayConfig,
    LoggingConfig,
    ObjectiveConfig,
    PluginSpec,
    PoolConfig,
    PredictorConfig,
    ProfilePluginRef,
    ProfileSpec,
    SchedulingConfig,
    ServerConfig,
    SloConfig,
    TokenizerConfig,
    UpstreamConfig,
)

__all__ = [
    "DEFAULT_PRESET",
    "ConfigError",
    "EndpointConfig",
    "GatewayConfig",
    "LoggingConfig",
    "ObjectiveConfig",
    "PluginSpec",
    "PoolConfig",
    "PredictorConfig",
    "ProfilePluginRef",
    "ProfileSpec",
    "SchedulingConfig",
    "ServerConfig",
    "SloConfig",
    "TokenizerConfig",
    "UpstreamConfig",
    "from_mapping",
    "from_yaml",
    "load_config",
    "load_preset",
    "preset_names",
    "resolve_scheduling",
]
