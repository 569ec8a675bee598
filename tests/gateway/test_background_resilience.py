"""Background tasks never die: fed an exception nobody foresaw, they log it, count it, back off
and carry on (scraper per endpoint, model discovery, the predictor's trainer)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient

from config import EndpointConfig, GatewayConfig, PoolConfig, PredictorConfig, SchedulingConfig
from gateway.app import create_app
from gateway.backends.backoff import Backoff
from gateway.backends.control_session import ControlSessionConfig
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from gateway.training_worker import TrainingWorker
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from scheduler.predictor.training import TrainingOutcome, train_generation
from tests.gateway.conftest import gateway_config, server_url
from tests.gateway.scrape_support import (
    Client,
    background_task,
    eventually,
    gateway_sample,
    log_field,
    ready_detail,
)


# -- the backoff ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failures", "ceiling"),
    [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.4), (5, 0.5), (50, 0.5), (5000, 0.5)],
)
def test_backoff_doubles_up_to_its_cap_with_jitter(failures: int, ceiling: float) -> None:
    backoff = Backoff(base_s=0.05, cap_s=0.5, rng=random.Random(7))
    delays = [backoff.next_delay_s() for _ in range(failures)]
    assert ceiling / 2 <= delays[-1] <= ceiling
    assert backoff.failures == failures


def test_backoff_jitters_and_resets() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(1))
    firsts = set()
    for _ in range(20):
        firsts.add(backoff.next_delay_s())
        backoff.reset()
    assert len(firsts) > 1, "no jitter: tasks that failed together would retry together"
    assert all(0.5 <= d <= 1.0 for d in firsts)


# -- an exception the loops did not expect ------------------------------------------------------
class Exploder:
    """A client middleware that raises on the first ``times`` requests to ``path``."""

    def __init__(self, path: str, times: int) -> None:
        self.path = path
        self.left = times

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if request.url.path == self.path and self.left > 0:
            self.left -= 1
            raise RuntimeError(f"unexpected trouble on {self.path}")
        return await handler(request)


def exploding_control_session(exploder: Exploder) -> Any:
    def factory(cfg: ControlSessionConfig) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            middlewares=(exploder,), timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_s)
        )

    return factory


def _records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event]


async def test_the_scraper_survives_an_unexpected_exception(
    aiohttp_client: AiohttpClient, instant_backend: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    exploder = Exploder("/metrics", times=3)
    deps = Dependencies(control_session_factory=exploding_control_session(exploder))
    cfg = gateway_config(server_url(instant_backend), models=("sim-llm",))
    gw = await aiohttp_client(create_app(cfg, deps))
    name = instant_backend.make_url("").authority

    async def up() -> bool:
        return bool((await ready_detail(gw))["detail"][name] == {"state": "up"})

    await eventually(up, what="the endpoint up after the errors")
    assert not background_task(f"scrape:{name}").done()
    assert await gateway_sample(gw, "slogate_background_task_errors_total", task="scrape") == 3.0
    scrape_errors = await gateway_sample(gw, "slogate_endpoint_scrape_errors_total", endpoint=name)
    assert scrape_errors == 3.0
    logged = _records(caplog, "scrape.unexpected_error")
    assert len(logged) == 3
    assert all(log_field(r, "endpoint") == name and r.exc_info for r in logged)
    assert [log_field(r, "consecutive") for r in logged] == [1, 2, 3]


async def test_discovery_survives_an_unexpected_exception(
    aiohttp_client: AiohttpClient, instant_backend: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    exploder = Exploder("/v1/models", times=1)
    deps = Dependencies(control_session_factory=exploding_control_session(exploder))
    gw = await aiohttp_client(create_app(gateway_config(server_url(instant_backend)), deps))

    async def ready() -> bool:
        return (await gw.get("/ready")).status == 200

    await eventually(ready, what="the models discovered after the error")
    models = await (await gw.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["sim-llm"]
    assert not background_task("discovery").done()
    assert await gateway_sample(gw, "slogate_background_task_errors_total", task="discovery") == 1.0
    (logged,) = _records(caplog, "discovery.unexpected_error")
    assert log_field(logged, "endpoint") == instant_backend.make_url("").authority
    assert logged.exc_info


class FlakyWorker(TrainingWorker):
    """Raises what the trainer does not expect (not a TrainingError) on its first runs, then
    trains in a thread."""

    def __init__(self, failures: int) -> None:
        super().__init__(train_generation)
        self.failures = failures
        self.calls = 0

    async def run(self, job: Any, *, timeout_s: float) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("unexpected: the pipe to the worker is gone")
        outcome: TrainingOutcome = await asyncio.get_running_loop().run_in_executor(
            None, train_generation, job
        )
        return outcome


@pytest.fixture
async def pods() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim_server(SimConfig(speed=s, time_scale=50.0)) for s in (1.0, 2.0)]
    yield servers
    for server in servers:
        await server.close()


async def _serve(client: Client, n: int) -> None:
    body = {"model": "sim-llm", "prompt": "hello", "max_tokens": 4, "stream": True}
    for _ in range(n):
        resp = await client.post("/v1/completions", json=body)
        await resp.read()
        assert resp.status == 200


async def test_the_trainer_survives_an_unexpected_exception(
    aiohttp_client: AiohttpClient, pods: list[SimServer], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = GatewayConfig(
        pool=PoolConfig(endpoints=tuple(EndpointConfig(url=p.url) for p in pods)),
        scheduling=SchedulingConfig(preset="predicted-latency"),
        predictor=PredictorConfig(retrain_interval_s=0.05, min_samples=10),
    )
    worker = FlakyWorker(failures=2)
    gw = await aiohttp_client(create_app(cfg, Dependencies(training_worker=worker)))
    await eventually(lambda: _ok(gw), what="the gateway ready")
    await _serve(gw, 15)
    trainer = gw.app[gateway_key].trainer

    async def trained_after_the_errors() -> bool:
        return worker.calls > 2 and trainer.stats.consecutive_failures == 0

    await eventually(trained_after_the_errors, what="a run after the errors")
    assert not background_task("trainer").done()
    assert await gateway_sample(gw, "slogate_background_task_errors_total", task="trainer") == 2.0
    logged = _records(caplog, "predictor.trainer_error")
    assert len(logged) == 2
    assert all(r.exc_info for r in logged)
    assert gw.app[gateway_key].predictor.trainer_healthy


async def _ok(client: Client) -> bool:
    resp = await client.get("/ready")
    await resp.read()
    return resp.status == 200
