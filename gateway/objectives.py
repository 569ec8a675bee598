"""A request's latency objectives and priority, from llm-d's headers and the configured objectives.

Headers (case-insensitive; the canonical name wins over its alias):

- ``x-llm-d-slo-ttft-ms`` (alias ``x-slo-ttft-ms``), ``x-llm-d-slo-tpot-ms`` (alias
  ``x-slo-tpot-ms``): objectives in milliseconds, a positive finite number. Anything else is
  a 400 that names the header (llm-d silently treats it as "no SLO").
- ``x-llm-d-inference-objective`` (alias ``x-gateway-inference-objective``): the name of a
  configured objective, which gives the priority (negative: sheddable) and default SLOs for
  the dimensions the request does not state. Absent: ``slo.default_objective``. Unknown: 400.

A dimension stated neither by the request nor by its objective is unconstrained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from config import ObjectiveConfig, SloConfig
from gateway.errors import BadRequestError
from scheduler.framework.types import NO_SLO, Slo

TTFT_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")
TPOT_HEADERS = ("x-llm-d-slo-tpot-ms", "x-slo-tpot-ms")
OBJECTIVE_HEADERS = ("x-llm-d-inference-objective", "x-gateway-inference-objective")
MAX_SLO_MS = 24 * 3600 * 1000.0
"""A day: beyond it an objective is a typo, not a latency target."""


@dataclass(frozen=True, slots=True)
class RequestObjective:
    name: str
    priority: int
    slo: Slo


class Objectives:
    """Resolves each request's objective; built once from the ``slo`` config section."""

    __slots__ = ("_by_name", "_default", "_default_objective")

    def __init__(self, cfg: SloConfig) -> None:
        self._by_name: dict[str, ObjectiveConfig] = cfg.resolved_objectives()
        default = self._by_name[cfg.default_objective]
        self._default = _resolved(default, None, None)
        self._default_objective = default

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def resolve(self, headers: Mapping[str, str]) -> RequestObjective:
        ttft = _slo_header(headers, TTFT_HEADERS)
        tpot = _slo_header(headers, TPOT_HEADERS)
        name = _first(headers, OBJECTIVE_HEADERS)
        if name is None:
            if ttft is None and tpot is None:
                return self._default
            return _resolved(self._default_objective, ttft, tpot)
        objective = self._by_name.get(name.strip())
        if objective is None:
            raise BadRequestError(
                f"unknown inference objective {name!r} in header {OBJECTIVE_HEADERS[0]}; "
                f"known: {', '.join(self.names)}",
                code="unknown_objective",
                param=OBJECTIVE_HEADERS[0],
            )
        return _resolved(objective, ttft, tpot)


def _resolved(
    objective: ObjectiveConfig, ttft: float | None, tpot: float | None
) -> RequestObjective:
    ttft = objective.ttft_ms if ttft is None else ttft
    tpot = objective.tpot_ms if tpot is None else tpot
    slo = NO_SLO if ttft is None and tpot is None else Slo(ttft_ms=ttft, tpot_ms=tpot)
    return RequestObjective(objective.name, objective.priority, slo)


def _first(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value is not None:
            return value
    return None


def _slo_header(headers: Mapping[str, str], names: tuple[str, ...]) -> float | None:
    for name in names:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            value = math.nan
        if not 0 < value <= MAX_SLO_MS:
            raise BadRequestError(
                f"header {name} must be a positive number of milliseconds "
                f"(at most {MAX_SLO_MS:.0f}), got {raw!r}",
                code="invalid_slo_header",
                param=name,
            )
        return value
    return None
