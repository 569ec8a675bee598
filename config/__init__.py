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
    PluginSpec,
    PoolConfig,
    PredictorConfig,
    ProfilePluginRef,
    ProfileSpec,
    SchedulingConfig,
    ServerConfig,
    TokenizerConfig,
    UpstreamConfig,
)

__all__ = [
    "DEFAULT_PRESET",
    "ConfigError",
    "EndpointConfig",
    "GatewayConfig",
    "LoggingConfig",
    "PluginSpec",
    "PoolConfig",
    "PredictorConfig",
    "ProfilePluginRef",
    "ProfileSpec",
    "SchedulingConfig",
    "ServerConfig",
    "TokenizerConfig",
    "UpstreamConfig",
    "from_mapping",
    "from_yaml",
    "load_config",
    "load_preset",
    "preset_names",
    "resolve_scheduling",
]
