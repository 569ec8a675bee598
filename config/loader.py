"""Load configuration in named steps: read -> decode -> resolve preset -> check references.

Decoding walks the dataclasses of :mod:`config.model`: unknown keys are rejected, every value is
type-checked and bounds-checked, and each error names its path. Plugin *parameters* are left
as mappings here: each plugin validates its own when the scheduler is built.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from config.errors import ConfigError
from config.model import (
    DEFAULT_PRESET,
    GatewayConfig,
    KubernetesDiscoveryConfig,
    PoolConfig,
    SchedulingConfig,
    ServerConfig,
    SloConfig,
)

T = TypeVar("T")


def load_config(path: str | Path | None = None) -> GatewayConfig:
    """Read a YAML file (or nothing: all defaults) into a validated config."""
    if path is None:
        return from_mapping({})
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("", str(path), f"cannot read config file: {exc.strerror}") from exc
    return from_yaml(text)


def from_yaml(text: str) -> GatewayConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", "<yaml>", f"invalid YAML: {exc}") from exc
    return from_mapping({} if raw is None else raw)


def from_mapping(raw: object) -> GatewayConfig:
    cfg = decode(GatewayConfig, raw, "")
    check_server(cfg.server, "server")
    check_pool(cfg.pool, "pool")
    check_scheduling(cfg.scheduling, "scheduling")
    check_slo(cfg.slo, "slo")
    return cfg


def check_server(cfg: ServerConfig, path: str) -> None:
    for field in ("passthrough_get", "passthrough_post"):
        seen: set[str] = set()
        for i, route in enumerate(getattr(cfg, field)):
            where = f"{path}.{field}[{i}]"
            if not route.startswith("/") or any(c in route for c in "{}?# \t"):
                raise ConfigError(
                    where, route, "must be a plain path starting with / (no query, no {})"
                )
            if route in seen:
                raise ConfigError(where, route, "is listed twice")
            seen.add(route)


_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def check_pool(cfg: PoolConfig, path: str) -> None:
    names: set[str] = set()
    for i, endpoint in enumerate(cfg.endpoints):
        name = endpoint.name or urlsplit(endpoint.url).netloc
        if name in names:
            raise ConfigError(
                f"{path}.endpoints[{i}]", name, "a second endpoint of that name (give each a name)"
            )
        names.add(name)
    if cfg.peers.kubernetes is not None:
        _check_kubernetes(cfg.peers.kubernetes, f"{path}.peers.kubernetes")
    for i, url in enumerate(cfg.peers.urls):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{path}.peers.urls[{i}]", url, "must be an http(s)://host:port URL")
    kube = cfg.kubernetes
    if kube is None:
        return
    if cfg.endpoints:
        raise ConfigError(
            f"{path}.endpoints", len(cfg.endpoints), "must be empty when pool.kubernetes is set"
        )
    _check_kubernetes(kube, f"{path}.kubernetes")


def _check_kubernetes(kube: KubernetesDiscoveryConfig, where: str) -> None:
    if not kube.selector:
        raise ConfigError(f"{where}.selector", {}, "must name at least one label")
    for key, value in kube.selector.items():
        if not _LABEL_KEY.match(key):
            raise ConfigError(f"{where}.selector", key, "is not a valid label key")
        if not _LABEL_VALUE.match(value):
            raise ConfigError(f"{where}.selector.{key}", value, "is not a valid label value")
    if kube.engine_label and not _LABEL_KEY.match(kube.engine_label):
        raise ConfigError(f"{where}.engine_label", kube.engine_label, "is not a valid label key")


def check_slo(cfg: SloConfig, path: str) -> None:
    names: set[str] = set()
    for i, objective in enumerate(cfg.objectives):
        if not objective.name:
            raise ConfigError(f"{path}.objectives[{i}].name", objective.name, "must not be empty")
        if objective.name in names:
            raise ConfigError(
                f"{path}.objectives[{i}].name", objective.name, "duplicate objective name"
            )
        names.add(objective.name)
    known = cfg.resolved_objectives()
    if cfg.default_objective not in known:
        raise ConfigError(
            f"{path}.default_objective",
            cfg.default_objective,
            f"no such objective; known: {', '.join(sorted(known))}",
        )


def preset_names() -> list[str]:
    root = resources.files("config") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


@cache
def load_preset(name: str) -> SchedulingConfig:
    """The scheduling graph of a named preset (``config/presets/<name>.yaml``)."""
    if name not in preset_names():
        raise ConfigError(
            "scheduling.preset", name, f"unknown preset; known: {', '.join(preset_names())}"
        )
    text = (resources.files("config") / "presets" / f"{name}.yaml").read_text()
    cfg = decode(SchedulingConfig, yaml.safe_load(text), f"preset {name}")
    check_scheduling(cfg, f"preset {name}")
    return cfg


def resolve_scheduling(cfg: SchedulingConfig) -> SchedulingConfig:
    """The explicit plugin graph to build: the config's own, or its preset's (default preset)."""
    if cfg.plugins:
        return cfg
    return load_preset(cfg.preset or DEFAULT_PRESET)


def check_scheduling(cfg: SchedulingConfig, path: str) -> None:
    if cfg.preset is not None and cfg.plugins:
        raise ConfigError(f"{path}.preset", cfg.preset, "give either a preset or plugins, not both")
    if cfg.preset is not None:
        load_preset(cfg.preset)
        return
    if bool(cfg.plugins) != bool(cfg.profiles):
        raise ConfigError(f"{path}.profiles", len(cfg.profiles), "plugins need profiles")
    names: set[str] = set()
    for i, plugin in enumerate(cfg.plugins):
        name = plugin.name or plugin.type
        if name in names:
            raise ConfigError(f"{path}.plugins[{i}].name", name, "duplicate plugin name")
        names.add(name)
    profile_names: set[str] = set()
    for i, profile in enumerate(cfg.profiles):
        if profile.name in profile_names:
            raise ConfigError(f"{path}.profiles[{i}].name", profile.name, "duplicate profile name")
        profile_names.add(profile.name)
        for j, ref in enumerate(profile.plugins):
            if ref.plugin_ref not in names:
                raise ConfigError(
                    f"{path}.profiles[{i}].plugins[{j}].plugin_ref",
                    ref.plugin_ref,
                    "no plugin with this name",
                )


def decode(cls: type[T], raw: object, path: str) -> T:
    """Decode a mapping into dataclass ``cls``, validating every field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(path, raw, "must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(sub, value, f"unknown key; allowed: {', '.join(sorted(fields))}")
        spec = fields[key]
        values[key] = _decode_value(hints[key], value, sub)
        _check_bounds(spec.metadata, values[key], sub)
    for name, spec in fields.items():
        if (
            name not in values
            and spec.default is dataclasses.MISSING
            and spec.default_factory is dataclasses.MISSING
        ):
            sub = f"{path}.{name}" if path else name
            raise ConfigError(sub, None, "required")
    return cls(**values)


def _decode_value(hint: Any, value: object, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _decode_value(inner, value, path)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return decode(hint, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(path, value, "must be a list")
        return tuple(_decode_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(path, value, "must be a mapping")
        value_hint = args[1] if args else Any
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(path, k, "keys must be strings")
            out[k] = v if value_hint is Any else _decode_value(value_hint, v, f"{path}.{k}")
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, value, "must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "must be a string")
        return value
    if hint is Any:
        return value
    raise TypeError(f"config field {path} has an unsupported type {hint!r}")


def _check_bounds(meta: Mapping[str, Any], value: Any, path: str) -> None:
    if value is None:
        return
    if "ge" in meta and value < meta["ge"]:
        raise ConfigError(path, value, f"must be >= {meta['ge']}")
    if "gt" in meta and value <= meta["gt"]:
        raise ConfigError(path, value, f"must be > {meta['gt']}")
    if "le" in meta and value > meta["le"]:
        raise ConfigError(path, value, f"must be <= {meta['le']}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(path, value, f"must be one of {', '.join(meta['choices'])}")
