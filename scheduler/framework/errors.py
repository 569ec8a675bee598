"""Scheduler errors.

SchedulerError
├── NoCandidatesError     no endpoint can take the request (none usable, or a filter left none)
├── AdmissionDenied       an admitter shed the request (``reason`` is a short tag)
└── PluginConfigError     a plugin's parameters are invalid (names the field)
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of the scheduler's errors."""


class NoCandidatesError(SchedulerError):
    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


class AdmissionDenied(SchedulerError):
    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PluginConfigError(SchedulerError):
    """A bad plugin parameter; ``field`` is the parameter's path inside ``parameters``."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}: {reason} (got {value!r})")
        self.field = field
        self.value = value
        self.reason = reason
