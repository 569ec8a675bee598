"""The predictor inside the gateway: trains, persists, and never costs a request when broken."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from config import (
    EndpointConfig,
    GatewayConfig,
    PoolConfig,
    PredictorConfig,
    SchedulingConfig,
)
from gateway.app import create_app
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from gateway.trainer import PredictorTrainer
from gateway.training_worker import TrainingWorker
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from scheduler.predictor.model import PredictorModel, TargetModel
from scheduler.predictor.runtime import LatencyPredictor
from tests.gateway.conftest import wait_for_status
from tests.scheduler.predictor.synthetic import dataset
from tests.support import training_faults

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def pods() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(SimConfig(speed=s, time_scale=50.0)) for s in (1.0, 2.0)]
    yield servers
    for server in servers:
        await server.close()


def predicted_config(pods: list[SimServer], **predictor: Any) -> GatewayConfig:
    return GatewayConfig(
        pool=PoolConfig(endpoints=tuple(EndpointConfig(url=p.url) for p in pods)),
        scheduling=SchedulingConfig(preset="predicted-latency"),
        predictor=PredictorConfig(**{"retrain_interval_s": 0.05, "min_samples": 10, **predictor}),
    )


async def start(
    aiohttp_client: AiohttpClient, cfg: GatewayConfig, fn: Callable[[Any], Any]
) -> Client:
    worker = TrainingWorker(fn)
    client = await aiohttp_client(create_app(cfg, Dependencies(training_worker=worker)))
    await wait_for_status(client, "/ready", 200)
    return client


async def serve_some(client: Client, n: int) -> list[int]:
    body = {
        "model": "sim-llm",
        "prompt": "tell me something",
        "max_tokens": 4,
        "stream": True,
        "ignore_eos": True,
    }

    async def one() -> int:
        resp = await client.post("/v1/completions", json=body)
        await resp.read()
        return resp.status

    # Concurrent, so that the gateway's in-flight counts spread them over both pods: one at a
    # time, the cold-start estimate rightly sends nearly all to the faster pod, and the model
    # would learn nothing of the other.
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never became true")


@pytest.mark.parametrize(
    ("fault", "timeout_s"),
    [(training_faults.crash, 60.0), (training_faults.hang, 0.3), (training_faults.fail, 60.0)],
    ids=["crashing-trainer", "hanging-trainer", "raising-trainer"],
)
async def test_a_broken_trainer_leaves_every_request_served(
    aiohttp_client: AiohttpClient,
    pods: list[SimServer],
    fault: Callable[[Any], Any],
    timeout_s: float,
) -> None:
    cfg = predicted_config(pods, training_timeout_s=timeout_s, max_training_failures=2)
    client = await start(aiohttp_client, cfg, fault)
    gw = client.app[gateway_key]
    assert await serve_some(client, 30) == [200] * 30
    await wait_for(lambda: gw.trainer.stats.failed >= 2)
    assert not gw.predictor.trainer_healthy
    assert await serve_some(client, 10) == [200] * 10
    assert gw.predictor.model is None
    assert gw.predictor.fallback_decisions == 40
    metrics = await (await client.get("/metrics")).text()
    assert "slogate_predictor_ready 0.0" in metrics
    assert 'slogate_predictor_decisions_total{mode="fallback"} 40.0' in metrics
    assert 'slogate_predictor_training_runs_total{result="failed"}' in metrics


class _Exploding:
    n_features = 8

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise FloatingPointError("corrupt model")


async def test_a_predictor_that_raises_falls_back(
    aiohttp_client: AiohttpClient, pods: list[SimServer]
) -> None:
    client = await start(aiohttp_client, predicted_config(pods), training_faults.fail)
    gw = client.app[gateway_key]
    broken = TargetModel(
        target="ttft",
        gbdt=_Exploding(),  # type: ignore[arg-type]
        columns=tuple(range(8)),
        offsets={},
    )
    gw.predictor.install(PredictorModel(version=1, ttft=broken, beats_heuristic=True))
    assert gw.predictor.ready
    assert await serve_some(client, 10) == [200] * 10
    assert gw.predictor.fallback_decisions == 10
    assert gw.predictor.predicted_decisions == 0


async def test_the_gateway_trains_and_routes_with_predictions(
    aiohttp_client: AiohttpClient, pods: list[SimServer]
) -> None:
    client = await start(aiohttp_client, predicted_config(pods, n_trees=30), training_faults.train)
    gw = client.app[gateway_key]

    def has_ttft_model() -> bool:
        model = gw.predictor.model
        return model is not None and model.ttft is not None and model.tpot is not None

    for _ in range(10):
        await serve_some(client, 10)
        if has_ttft_model():
            break
    await wait_for(has_ttft_model)
    model = gw.predictor.model
    assert model is not None
    assert model.ttft is not None
    assert set(model.ttft.offsets) == {f"{p.host}:{p.port}" for p in pods}
    # Whether this small sample already beats the heuristic is the training tests' business;
    # here training stops and the gate is opened to see predictions drive routing and metrics.
    gw.predictor.enabled = False
    await wait_for(lambda: not gw.trainer.in_run)  # a run in flight may still install one
    model = gw.predictor.model
    assert model is not None
    gw.predictor.install(dataclasses.replace(model, beats_heuristic=True))
    before = gw.predictor.predicted_decisions
    assert await serve_some(client, 5) == [200] * 5
    assert gw.predictor.predicted_decisions == before + 5
    metrics = await (await client.get("/metrics")).text()
    for name in (
        "slogate_predictor_ready 1.0",
        "inference_objective_request_predicted_ttft_seconds_bucket",
        "inference_objective_request_predicted_tpot_seconds_bucket",
        "inference_objective_request_ttft_prediction_duration_seconds_bucket",
        "inference_objective_request_tpot_prediction_duration_seconds_bucket",
        "slogate_predictor_model_version",
        'slogate_predictor_window_samples{set="train",target="ttft"}',
        "slogate_predictor_last_training_duration_seconds",
        'slogate_predictor_objective_info{objective="quantile",quantile="0.9"} 1.0',
        'slogate_predictor_endpoint_latency_factor{endpoint="',
        'slogate_predictor_live_mape{target="ttft"}',
        'slogate_predictor_quantile_calibration{target="ttft"}',
    ):
        assert name in metrics, name


def fill(predictor: LatencyPredictor, n: int, seed: int) -> None:
    data = dataset(n, seed)
    for target in ("ttft", "tpot"):
        for x, y, code in zip(data.X, data.y, data.endpoint, strict=True):
            predictor.windows[target].add(x, float(y), data.endpoints[int(code)])


async def test_a_restart_is_warm(tmp_path: Path) -> None:
    cfg = PredictorConfig(min_samples=50, n_trees=30, state_dir=str(tmp_path / "state"))
    first = LatencyPredictor(clock=lambda: 0.0, rng=random.Random(0))
    fill(first, 600, seed=1)
    trainer = PredictorTrainer(
        first, cfg, shapes=dict, clock=lambda: 0.0, worker=TrainingWorker(training_faults.train)
    )
    try:
        outcome = await trainer.train_once()
    finally:
        trainer.close()
    assert outcome is not None
    assert first.model is not None
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["model.npz", "window.npz"]

    second = LatencyPredictor(clock=lambda: 0.0, rng=random.Random(1))
    restarted = PredictorTrainer(second, cfg, shapes=dict, clock=lambda: 0.0)
    assert await restarted.restore()
    restarted.close()
    assert second.model is not None
    assert second.model.version == first.model.version
    assert second.window_sizes() == first.window_sizes()
    X = dataset(20, seed=2).X
    offsets = np.zeros(20)
    assert first.model.ttft is not None
    assert second.model.ttft is not None
    np.testing.assert_allclose(
        second.model.ttft.predict(X, offsets), first.model.ttft.predict(X, offsets)
    )


async def test_a_damaged_state_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "window.npz").write_bytes(b"not a zip file")
    predictor = LatencyPredictor(clock=lambda: 0.0, rng=random.Random(0))
    trainer = PredictorTrainer(
        predictor, PredictorConfig(state_dir=str(tmp_path)), shapes=dict, clock=lambda: 0.0
    )
    assert not await trainer.restore()
    assert predictor.model is None
