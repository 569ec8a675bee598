"""Builders for scheduler test data: candidates, requests, handles, and a fake clock.

Defaults describe an idle, freshly scraped endpoint and a small chat request, so a test states
only what it is about::

    make_candidate("a", waiting=3, kv=0.5)
    make_candidate("b", metrics=False)        # unknown load (stale or never scraped)
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from scheduler.framework.plugins import Plugin, PluginHandle
from scheduler.framework.types import (
    NO_SLO,
    Api,
    Candidate,
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    InflightLoad,
    ScoredCandidate,
    Slo,
)
from scheduler.predictor.gbdt import GbdtParams
from scheduler.predictor.training import TrainingJob
from scheduler.predictor.window import WindowArrays


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingTimer:
    """A ``PluginTimer`` that remembers every observation."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def observe(self, extension_point: str, plugin: Plugin, seconds: float) -> None:
        self.calls.append((extension_point, plugin.name, seconds))


def make_handle(seed: int = 0, clock: FakeClock | None = None) -> PluginHandle:
    return PluginHandle(clock=clock or FakeClock(), rng=random.Random(seed))


def make_endpoint(name: str, *, labels: Mapping[str, str] | None = None) -> Endpoint:
    return Endpoint(name=name, url=f"http://{name}:8000", labels=dict(labels or {}))


def make_metrics(
    *,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    scraped_at: float = 1000.0,
    block_size: int | None = None,
    num_gpu_blocks: int | None = None,
) -> EndpointMetrics:
    return EndpointMetrics(
        waiting=waiting,
        running=running,
        kv_usage=kv,
        scraped_at=scraped_at,
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
    )


def make_candidate(
    name: str,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    inflight_requests: int = 0,
    prefill_tokens: int = 0,
    metrics: bool = True,
    *,
    block_size: int | None = None,
    num_gpu_blocks: int | None = None,
    scraped_at: float = 1000.0,
) -> Candidate:
    """A candidate; ``metrics=False`` means its scraped load is unknown (``metrics is None``)."""
    return Candidate(
        make_endpoint(name),
        make_metrics(
            waiting=waiting,
            running=running,
            kv=kv,
            scraped_at=scraped_at,
            block_size=block_size,
            num_gpu_blocks=num_gpu_blocks,
        )
        if metrics
        else None,
        InflightLoad(requests=inflight_requests, prefill_tokens=prefill_tokens),
    )


def make_request(
    prompt_tokens: Sequence[int] = (1, 2, 3, 4),
    *,
    request_id: str = "req-1",
    model: str = "m",
    api: Api = Api.CHAT,
    stream: bool = True,
    max_tokens: int | None = None,
    slo: Slo = NO_SLO,
    priority: int = 0,
) -> InferenceRequest:
    return InferenceRequest(
        request_id=request_id,
        model=model,
        api=api,
        prompt_tokens=list(prompt_tokens),
        stream=stream,
        max_tokens=max_tokens,
        slo=slo,
        priority=priority,
    )


def scored(*pairs: tuple[str, float]) -> list[ScoredCandidate]:
    """Scored candidates from (name, total score) pairs, for picker tests."""
    return [ScoredCandidate(make_candidate(name), score) for name, score in pairs]


def training_job(
    train: WindowArrays | Mapping[str, WindowArrays],
    test: WindowArrays | Mapping[str, WindowArrays],
    *,
    params: GbdtParams,
    shapes: Mapping[str, str] | None = None,
    min_samples: int = 50,
) -> TrainingJob:
    """A first generation's training job; one ``WindowArrays`` stands for every target."""

    def per_target(arrays: WindowArrays | Mapping[str, WindowArrays]) -> dict[str, WindowArrays]:
        if isinstance(arrays, WindowArrays):
            return dict.fromkeys(("ttft", "tpot", "e2e"), arrays)
        return dict(arrays)

    return TrainingJob(
        version=1,
        train=per_target(train),
        test=per_target(test),
        params=params,
        min_samples=min_samples,
        shapes=dict(shapes or {}),
        previous=None,
        snapshot_at=0.0,
        seed=0,
    )
