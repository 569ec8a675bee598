"""``lora-affinity-scorer``: send a LoRA adapter's requests where the adapter is already active.

llm-d's tiered score, per candidate, for a request whose ``model`` is a LoRA adapter
(``request.base_model`` set):

==========================================================  =====
the adapter has a running request there                      1.0
fewer adapters active (running or waiting) than ``max_lora``  0.8
the adapter has a waiting request there (no room for more)   0.6
otherwise (every adapter slot taken by other adapters)        0.0
==========================================================  =====

A model server loads an adapter into one of its ``max_lora`` batch slots before it can serve
it: where it is active no load is needed, where a slot is free it is a short one, and where
every slot is taken the request waits for one to empty. Only endpoints that list the adapter
in ``/v1/models`` are candidates at all (the endpoint store filters them), so this scorer only
orders the endpoints that can serve it.

An endpoint that reports no LoRA state yet (vLLM exposes ``vllm:lora_requests_info`` only from
its first request on) has nothing active, so it scores as having room (0.8); one whose metrics
are unknown scores ``UNKNOWN_LOAD_SCORE`` (0.5), as the other scorers of scraped load do.

Requests for a base model: every candidate scores 0, so adding this scorer to a profile changes
nothing for them, whatever the picker (a constant other than 0 would flatten a weighted-random
picker's odds).

Inputs: ``request.base_model``, ``metrics.lora_running``, ``metrics.lora_waiting``,
``metrics.max_lora`` (``vllm:lora_requests_info``: the series with the newest value).

Parameters: none.

Extension point: scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Candidate, CycleState, EndpointMetrics, InferenceRequest
from scheduler.plugins.scorers import UNKNOWN_LOAD_SCORE

ACTIVE = 1.0
ROOM = 0.8
WAITING = 0.6
FULL = 0.0


class LoraAffinityScorer:
    TYPE: ClassVar[str] = "lora-affinity-scorer"

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        return cls(name)

    def score(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> Sequence[float]:
        if request.base_model is None:
            return [0.0] * len(candidates)
        adapter = request.model
        return [
            UNKNOWN_LOAD_SCORE if c.metrics is None else adapter_score(c.metrics, adapter)
            for c in candidates
        ]


def adapter_score(metrics: EndpointMetrics, adapter: str) -> float:
    """llm-d's tiers (module docstring) for one endpoint's reported LoRA state."""
    running = metrics.lora_running or frozenset()
    waiting = metrics.lora_waiting or frozenset()
    if adapter in running:
        return ACTIVE
    max_lora = metrics.max_lora
    # Running and waiting may name the same adapter: count each once (llm-d takes the union).
    if max_lora is None or len(running | waiting) < max_lora:
        return ROOM
    if adapter in waiting:
        return WAITING
    return FULL
