"""Configuration errors name the offending path, value and reason."""

from __future__ import annotations


class ConfigError(ValueError):
    """``path`` looks like ``scheduling.profiles[0].plugins[1].weight``."""

    def __init__(self, path: str, value: object, reason: str) -> None:
        where = path or "<root>"
        super().__init__(f"{where}: {reason} (got {value!r})")
        self.path = path
        self.value = value
        self.reason = reason
