"""Built-in plugins and the one explicit list that registers them."""

from __future__ import annotations

from scheduler.framework.registry import PluginRegistry
from scheduler.plugins.pickers.round_robin import RoundRobinPicker


def builtin_registry() -> PluginRegistry:
    return PluginRegistry([RoundRobinPicker])
