"""Build a :class:`Scheduler` from a scheduling config: the one wiring point of the plugin graph.

Plugins are instantiated once, in config order, each parsing its own parameters. Profiles pick
filters, weighted scorers and exactly one picker by reference. Lifecycle plugins (producers,
admitters, pre-request hooks, response observers) are wired automatically, as llm-d does,
in config order. The first profile is the primary one.
"""

from __future__ import annotations

from config import ConfigError, SchedulingConfig, resolve_scheduling
from scheduler.framework.errors import PluginConfigError
from scheduler.framework.params import Params
from scheduler.framework.plugins import (
    Admitter,
    DataProducer,
    EndpointLifecycle,
    Filter,
    Picker,
    Plugin,
    PluginHandle,
    PreRequest,
    ResponseObserver,
    Scorer,
)
from scheduler.framework.registry import PluginRegistry
from scheduler.profile import PluginTimer, SchedulerProfile
from scheduler.scheduler import Scheduler


def build_scheduler(
    cfg: SchedulingConfig,
    *,
    registry: PluginRegistry,
    handle: PluginHandle,
    timer: PluginTimer,
    path: str = "scheduling",
) -> Scheduler:
    if not cfg.plugins:
        path = f"preset {cfg.preset}" if cfg.preset else "default preset"
    cfg = resolve_scheduling(cfg)
    plugins = instantiate_plugins(cfg, registry=registry, handle=handle, path=path)
    profiles = [
        build_profile(cfg, i, plugins, handle=handle, timer=timer, path=path)
        for i in range(len(cfg.profiles))
    ]
    instances = list(plugins.values())
    return Scheduler(
        profile=profiles[0],
        producers=[p for p in instances if isinstance(p, DataProducer)],
        admitters=[p for p in instances if isinstance(p, Admitter)],
        pre_requests=[p for p in instances if isinstance(p, PreRequest)],
        observers=[p for p in instances if isinstance(p, ResponseObserver)],
        lifecycles=[p for p in instances if isinstance(p, EndpointLifecycle)],
        clock=handle.clock,
        timer=timer,
    )


def instantiate_plugins(
    cfg: SchedulingConfig, *, registry: PluginRegistry, handle: PluginHandle, path: str
) -> dict[str, Plugin]:
    plugins: dict[str, Plugin] = {}
    for i, spec in enumerate(cfg.plugins):
        factory = registry.get(spec.type)
        if factory is None:
            raise ConfigError(
                f"{path}.plugins[{i}].type",
                spec.type,
                f"unknown plugin type; known: {', '.join(registry.types)}",
            )
        name = spec.name or spec.type
        params = Params(spec.parameters)
        try:
            plugins[name] = factory.create(name, params, handle)
            params.done()
        except PluginConfigError as exc:
            raise ConfigError(
                f"{path}.plugins[{i}].parameters.{exc.field}",
                exc.value,
                f"{exc.reason} (plugin {name!r}, type {spec.type})",
            ) from exc
    return plugins


def build_profile(
    cfg: SchedulingConfig,
    index: int,
    plugins: dict[str, Plugin],
    *,
    handle: PluginHandle,
    timer: PluginTimer,
    path: str,
) -> SchedulerProfile:
    spec = cfg.profiles[index]
    filters: list[Filter] = []
    scorers: list[tuple[Scorer, float]] = []
    pickers: list[Picker] = []
    for j, ref in enumerate(spec.plugins):
        where = f"{path}.profiles[{index}].plugins[{j}]"
        plugin = plugins[ref.plugin_ref]
        if isinstance(plugin, Scorer) and ref.weight is not None:
            scorers.append((plugin, ref.weight))
        elif isinstance(plugin, Scorer) and not isinstance(plugin, Filter | Picker):
            raise ConfigError(f"{where}.weight", None, f"scorer {ref.plugin_ref!r} needs a weight")
        elif ref.weight is not None:
            raise ConfigError(
                f"{where}.weight",
                ref.weight,
                f"{ref.plugin_ref!r} is not a scorer; drop the weight",
            )
        elif isinstance(plugin, Filter):
            filters.append(plugin)
        elif isinstance(plugin, Picker):
            if pickers:
                raise ConfigError(
                    f"{where}.plugin_ref",
                    ref.plugin_ref,
                    f"profile already has picker {pickers[0].name!r}; only one is allowed",
                )
            pickers.append(plugin)
        else:
            raise ConfigError(
                f"{where}.plugin_ref",
                ref.plugin_ref,
                f"{plugin.TYPE} is not a filter, scorer or picker; lifecycle plugins are "
                "wired automatically and need no profile entry",
            )
    if not pickers:
        raise ConfigError(f"{path}.profiles[{index}].plugins", spec.name, "profile has no picker")
    return SchedulerProfile(
        name=spec.name,
        filters=filters,
        scorers=scorers,
        picker=pickers[0],
        clock=handle.clock,
        timer=timer,
    )
