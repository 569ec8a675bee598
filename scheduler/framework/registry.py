"""Plugin registry: configuration type names -> factories.

Every plugin class carries ``TYPE`` and a ``create(name, params, handle)`` classmethod that
parses its own parameters. The registry is built explicitly (no import-time side effects,
no global registry): ``scheduler.plugins.builtin_registry()`` lists the built-in plugins.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from scheduler.framework.params import Params
from scheduler.framework.plugins import Plugin, PluginHandle


class PluginFactory(Protocol):
    TYPE: str

    def create(self, name: str, params: Params, handle: PluginHandle) -> Plugin: ...


class PluginRegistry:
    __slots__ = ("_factories",)

    def __init__(self, factories: Iterable[PluginFactory] = ()) -> None:
        self._factories: dict[str, PluginFactory] = {}
        for factory in factories:
            self.register(factory)

    def register(self, factory: PluginFactory) -> None:
        if factory.TYPE in self._factories:
            raise ValueError(f"plugin type {factory.TYPE!r} registered twice")
        self._factories[factory.TYPE] = factory

    def get(self, type_name: str) -> PluginFactory | None:
        return self._factories.get(type_name)

    @property
    def types(self) -> list[str]:
        return sorted(self._factories)
