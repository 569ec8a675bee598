"""Typed reading of a plugin's ``parameters`` mapping, with errors that name the field.

Each plugin parses its own parameters at construction::

    threshold = params.float("threshold", 0.8, ge=0.0, le=1.0)
    params.done()   # rejects keys the plugin did not read

A bad value raises :class:`PluginConfigError`; the builder prefixes the plugin's config path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.framework.errors import PluginConfigError


class Params:
    __slots__ = ("_raw", "_read")

    def __init__(self, raw: Mapping[str, Any] | None = None) -> None:
        self._raw: Mapping[str, Any] = raw or {}
        self._read: set[str] = set()

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self._raw.get(key)

    def float(
        self,
        key: str,
        default: float,
        *,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
    ) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PluginConfigError(key, value, "must be a number")
        result = float(value)
        if ge is not None and result < ge:
            raise PluginConfigError(key, value, f"must be >= {ge}")
        if gt is not None and result <= gt:
            raise PluginConfigError(key, value, f"must be > {gt}")
        if le is not None and result > le:
            raise PluginConfigError(key, value, f"must be <= {le}")
        return result

    def int(self, key: str, default: int, *, ge: int | None = None) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise PluginConfigError(key, value, "must be an integer")
        if ge is not None and value < ge:
            raise PluginConfigError(key, value, f"must be >= {ge}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PluginConfigError(key, value, "must be true or false")
        return value

    def str(self, key: str, default: str, *, choices: Sequence[str] | None = None) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise PluginConfigError(key, value, "must be a string")
        if choices is not None and value not in choices:
            raise PluginConfigError(key, value, f"must be one of {', '.join(choices)}")
        return value

    def done(self) -> None:
        """Reject parameters the plugin did not read: a typo must not pass silently."""
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            raise PluginConfigError(unknown[0], self._raw[unknown[0]], "unknown parameter")
