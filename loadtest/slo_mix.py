"""Traffic classes for the SLO benchmark: who states which latency objectives, and how often.

Each arrival of a workload gets one class, drawn from the class shares by an RNG seeded with
``(seed, arrival index)`` alone, so the draw is the same for every router arm, every load and
whatever else the workload holds. A class becomes request headers, llm-d's names:

- ``x-llm-d-inference-objective``: the named objective (its priority; ``sheddable`` may be
  refused with 429 when it cannot start in time);
- ``x-llm-d-slo-ttft-ms``, ``x-llm-d-slo-tpot-ms``: the latency objectives, in milliseconds.

Routers that do not read them (vllm-router) get them all the same and ignore them.

The default mix (:data:`DEFAULT_MIX`): ``interactive`` 50 % (TTFT <= 1 s and TPOT <= 50 ms,
``standard``), ``batch`` 30 % (no objectives, ``standard``), ``background`` 20 %
(``sheddable``, TTFT <= 3 s: best effort, dropped when it cannot start within 3 s).
:func:`parse_mix` reads another from the command line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

OBJECTIVE_HEADER = "x-llm-d-inference-objective"
TTFT_HEADER = "x-llm-d-slo-ttft-ms"
TPOT_HEADER = "x-llm-d-slo-tpot-ms"
_SALT = 0x5_10_313  # keeps these draws apart from the prompt ids drawn from the same seed


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficClass:
    name: str
    share: float
    """Fraction of the arrivals (the mix's shares are normalised to sum to 1)."""
    objective: str = "standard"
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    @property
    def has_objectives(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def headers(self) -> dict[str, str]:
        out = {OBJECTIVE_HEADER: self.objective}
        if self.ttft_ms is not None:
            out[TTFT_HEADER] = f"{self.ttft_ms:g}"
        if self.tpot_ms is not None:
            out[TPOT_HEADER] = f"{self.tpot_ms:g}"
        return out

    def describe(self) -> str:
        slo = [
            f"{label} <= {value:g} ms"
            for label, value in (("TTFT", self.ttft_ms), ("TPOT", self.tpot_ms))
            if value is not None
        ]
        return (
            f"{self.name} {self.share:.0%} ({self.objective}"
            + (f", {' and '.join(slo)}" if slo else ", no objectives")
            + ")"
        )


DEFAULT_MIX: tuple[TrafficClass, ...] = (
    TrafficClass(name="interactive", share=0.5, ttft_ms=1000.0, tpot_ms=50.0),
    TrafficClass(name="batch", share=0.3),
    TrafficClass(name="background", share=0.2, objective="sheddable", ttft_ms=3000.0),
)


def normalised(mix: Sequence[TrafficClass]) -> tuple[TrafficClass, ...]:
    """The classes with shares summing to 1; rejects an empty mix, duplicate names and
    shares that are negative, not finite or all zero."""
    if not mix:
        raise ValueError("the mix has no class")
    names = [c.name for c in mix]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names in {', '.join(names)}")
    for c in mix:
        if not (c.share >= 0 and math.isfinite(c.share)):
            raise ValueError(f"{c.name}: share must be a finite number >= 0 (got {c.share})")
        for label, value in (("ttft", c.ttft_ms), ("tpot", c.tpot_ms)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{c.name}: {label} must be a finite number > 0 (got {value})")
    total = sum(c.share for c in mix)
    if total <= 0:
        raise ValueError("every share is zero")
    return tuple(
        TrafficClass(
            name=c.name,
            share=c.share / total,
            objective=c.objective,
            ttft_ms=c.ttft_ms,
            tpot_ms=c.tpot_ms,
        )
        for c in mix
    )


def class_of(mix: Sequence[TrafficClass], seed: int, index: int) -> TrafficClass:
    """The class of arrival ``index``: one uniform draw from an RNG of ``(seed, index)``."""
    u = float(np.random.default_rng((seed, _SALT, index)).random())
    edge = 0.0
    for c in mix:
        edge += c.share
        if u < edge:
            return c
    return mix[-1]  # u just below 1 with shares summing to a hair under 1


def assign(mix: Sequence[TrafficClass], seed: int, count: int) -> list[TrafficClass]:
    """The classes of arrivals ``0 .. count - 1``."""
    return [class_of(mix, seed, i) for i in range(count)]


def header_sets(classes: Sequence[TrafficClass]) -> list[Mapping[str, str]]:
    """One header mapping per arrival (for ``loadtest.fleet.run_driver``)."""
    by_name = {c.name: c.headers() for c in classes}
    return [by_name[c.name] for c in classes]


def parse_mix(text: str) -> tuple[TrafficClass, ...]:
    """``NAME=SHARE[:OBJECTIVE][:ttft=MS][:tpot=MS]`` entries separated by commas, e.g. the
    default: ``interactive=0.5:standard:ttft=1000:tpot=50,batch=0.3:standard,
    background=0.2:sheddable:ttft=3000``. Shares are normalised; the objective defaults to
    ``standard``."""
    classes = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        head, *fields = entry.split(":")
        name, sep, share = head.partition("=")
        if not sep or not name:
            raise ValueError(f"{entry!r}: expected NAME=SHARE[:OBJECTIVE][:ttft=MS][:tpot=MS]")
        objective, slo = "standard", {}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep:
                objective = f
            elif key in ("ttft", "tpot"):
                slo[key] = _number(entry, key, value)
            else:
                raise ValueError(f"{entry!r}: unknown field {key!r} (ttft or tpot)")
        classes.append(
            TrafficClass(
                name=name.strip(),
                share=_number(entry, "share", share),
                objective=objective,
                ttft_ms=slo.get("ttft"),
                tpot_ms=slo.get("tpot"),
            )
        )
    return normalised(classes)


def format_mix(mix: Sequence[TrafficClass]) -> str:
    """The :func:`parse_mix` form of ``mix``."""
    parts = []
    for c in mix:
        text = f"{c.name}={c.share:g}:{c.objective}"
        if c.ttft_ms is not None:
            text += f":ttft={c.ttft_ms:g}"
        if c.tpot_ms is not None:
            text += f":tpot={c.tpot_ms:g}"
        parts.append(text)
    return ",".join(parts)


def _number(entry: str, name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{entry!r}: {name} must be a number (got {text!r})") from None
