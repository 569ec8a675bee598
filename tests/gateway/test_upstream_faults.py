"""Upstream faults through the real gateway, against real servers on loopback: pods that refuse,
reset, answer 5xx, 429 or 503, stall or die mid-stream, and a simulated vLLM process killed
mid-stream. Asserts what the client sees, which pod served it, the metrics and the logs; time
appears only as upper bounds on waiting."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler
from pytest_aiohttp import AiohttpClient, AiohttpServer

from config import (
    EndpointConfig,
    GatewayConfig,
    PoolConfig,
    PredictorConfig,
    SchedulingConfig,
    UpstreamConfig,
)
from gateway.app import create_app
from gateway.deps import Dependencies
from gateway.keys import gateway_key
from gateway.telemetry import RETRY_REASONS
from gateway.training_worker import TrainingWorker
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from scheduler.datalayer.store import Health
from scheduler.framework.plugins import Outcome
from tests.gateway.conftest import MakeGateway, Recorder, gateway_config, server_url
from tests.gateway.fault_pods import DONE, MODEL, FaultPod
from tests.gateway.scrape_support import eventually, gateway_sample, log_field
from tests.support import training_faults

Client = TestClient[web.Request, web.Application]

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0
"""Upper bound on any wait for the gateway: a stream that takes longer has hung."""


def upstream(**overrides: Any) -> UpstreamConfig:
    """Test settings: tiny backoffs so retries do not slow the suite; the rest as given."""
    fields: dict[str, Any] = {"retry_backoff_base_ms": 1.0, "retry_backoff_max_ms": 5.0}
    fields.update(overrides)
    return UpstreamConfig(**fields)


async def serve(aiohttp_server: AiohttpServer, *pods: FaultPod) -> list[TestServer]:
    servers = []
    for pod in pods:
        servers.append(await aiohttp_server(pod.app()))
        pod.name = servers[-1].make_url("").authority
    return servers


async def gateway(
    make_gateway: MakeGateway, servers: list[TestServer], cfg: UpstreamConfig, **kw: Any
) -> Client:
    gw = await make_gateway(gateway_config(*(server_url(s) for s in servers), upstream=cfg, **kw))
    await wait_for_endpoints(gw, len(servers))
    return gw


async def wait_for_endpoints(gw: Client, count: int) -> None:
    """Until every endpoint is usable and in the same state (all up, or all unknown), so that
    round-robin alternates over all of them."""
    store = gw.app[gateway_key].store

    async def settled() -> bool:
        now = gw.app[gateway_key].clock()
        states = {store.health(e.name, now) for e in store.endpoints}
        return len(store.usable(now)) == count and len(states) == 1

    await eventually(settled, timeout_s=WAIT_S, what=f"{count} usable endpoints")


async def complete(
    gw: Client, *, stream: bool = False, headers: dict[str, str] | None = None
) -> tuple[int, bytes, str | None]:
    """One completion through the gateway: status, body, the pod that answered."""
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 3, "stream": stream}
    resp = await gw.post("/v1/completions", data=orjson.dumps(body), headers=headers)
    data = await asyncio.wait_for(resp.read(), WAIT_S)
    return resp.status, data, resp.headers.get("x-slogate-endpoint")


def sse_events(data: bytes) -> list[bytes]:
    return [e for e in data.split(b"\n\n") if e.strip()]


def error_event(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: ")
    error: dict[str, Any] = orjson.loads(event[6:])["error"]
    return error


async def metric(gw: Client, name: str, **labels: str) -> float:
    return await gateway_sample(gw, name, **labels) or 0.0


# -- before the first byte: retried on another pod ----------------------------------------------
async def test_a_5xx_before_the_first_byte_is_retried_on_another_pod(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    broken, good = FaultPod(mode=500), FaultPod()
    servers = await serve(aiohttp_server, broken, good)
    gw = await gateway(make_gateway, servers, upstream(consecutive_failures=0))
    for stream in (True, True, False, False):  # round-robin: the 1st and 3rd meet `broken`
        status, body, endpoint = await complete(gw, stream=stream)
        assert (status, endpoint) == (200, good.name)
        assert b"says 500" not in body
        if stream:
            assert body.endswith(DONE)
    assert broken.completions == 2  # round-robin sent every other request there first
    assert await metric(gw, "slogate_upstream_retries_total", reason="5xx") == 2.0
    assert await metric(gw, "slogate_upstream_errors_total", endpoint=broken.name, reason="5xx")
    failed = [r for r in recorder.records if r.outcome is not Outcome.SUCCESS]
    assert [(r.endpoint, r.status) for r in failed] == [(broken.name, 500)] * 2


async def test_when_every_attempt_fails_the_last_answer_is_relayed(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    first, last = FaultPod(mode=500), FaultPod(mode=502)
    servers = await serve(aiohttp_server, first, last)
    gw = await gateway(make_gateway, servers, upstream(consecutive_failures=0))
    status, body, endpoint = await complete(gw)
    assert (status, endpoint) == (502, last.name)
    assert orjson.loads(body)["error"]["message"] == f"{last.name} says 502"
    assert (first.completions, last.completions) == (1, 1)


async def test_connection_refused_and_reset_are_retried_on_another_pod(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    # No metrics (all routed as load-unknown, whatever the time since a scrape) and scrapes too
    # rare to notice anything: only dispatches find out.
    doomed, resetting, good = (
        FaultPod(mode=mode, serves_metrics=False) for mode in ("ok", "reset", "ok")
    )
    servers = await serve(aiohttp_server, doomed, resetting, good)
    gw = await gateway(make_gateway, servers, upstream(retries=2), scrape_interval_ms=60_000)
    await servers[0].close()  # connection refused from now on
    # Round-robin: the first request meets the refusal, then the hang-up, then the good pod.
    status, body, endpoint = await complete(gw, stream=True)
    assert (status, endpoint) == (200, good.name)
    assert body.endswith(DONE)
    assert await metric(gw, "slogate_upstream_retries_total", reason="connect") == 1.0
    assert await metric(gw, "slogate_upstream_retries_total", reason="reset") == 1.0
    assert resetting.completions == 1
    store = gw.app[gateway_key].store
    assert store.health(doomed.name, gw.app[gateway_key].clock()) is Health.DOWN
    for _ in range(3):
        status, _, endpoint = await complete(gw)
        assert (status, endpoint) == (200, good.name)


async def test_a_pod_that_dies_after_its_headers_but_before_any_byte_is_retried(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    dying, good = FaultPod(mode="headers_then_close"), FaultPod()
    servers = await serve(aiohttp_server, dying, good)
    gw = await gateway(make_gateway, servers, upstream())
    status, body, endpoint = await complete(gw, stream=True)
    assert (status, endpoint) == (200, good.name)
    assert body.endswith(DONE)
    assert dying.completions == 1
    assert await metric(gw, "slogate_upstream_retries_total", reason="reset") == 1.0


@pytest.mark.parametrize("busy_status", [429, 503])
async def test_429_and_503_are_retried_elsewhere_but_never_eject(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, busy_status: int
) -> None:
    busy, good = FaultPod(mode=busy_status), FaultPod()
    servers = await serve(aiohttp_server, busy, good)
    gw = await gateway(make_gateway, servers, upstream(consecutive_failures=2))
    for _ in range(8):
        status, _, endpoint = await complete(gw)
        assert (status, endpoint) == (200, good.name)
    assert busy.completions == 4  # still chosen every other time: busy is not dead
    assert await metric(gw, "slogate_upstream_retries_total", reason="busy") == 4.0
    assert await metric(gw, "slogate_endpoint_ejections_total", endpoint=busy.name) == 0.0
    assert await metric(gw, "slogate_endpoint_ejected", endpoint=busy.name) == 0.0


async def test_client_errors_are_relayed_never_retried_never_counted(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    refusing, other = FaultPod(mode=400), FaultPod(mode=400)
    servers = await serve(aiohttp_server, refusing, other)
    gw = await gateway(make_gateway, servers, upstream(consecutive_failures=1))
    for _ in range(4):
        status, body, _ = await complete(gw)
        assert status == 400
        assert b"says 400" in body
    assert (refusing.completions, other.completions) == (2, 2)
    assert len(recorder.records) == 4  # one attempt each
    for pod in (refusing, other):
        assert await metric(gw, "slogate_endpoint_ejections_total", endpoint=pod.name) == 0.0
    for reason in RETRY_REASONS:
        assert await metric(gw, "slogate_upstream_retries_total", reason=reason) == 0.0


async def test_pass_through_routes_share_the_fault_handling(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    broken, good = FaultPod(mode=500), FaultPod()
    servers = await serve(aiohttp_server, broken, good)
    gw = await gateway(make_gateway, servers, upstream(consecutive_failures=0))
    for _ in range(6):
        resp = await gw.get("/version")
        assert (resp.status, (await resp.json())["pod"]) == (200, good.name)
    tried_broken = await metric(
        gw, "slogate_upstream_errors_total", endpoint=broken.name, reason="5xx"
    )
    assert await metric(gw, "slogate_upstream_retries_total", reason="5xx") == tried_broken


# -- the retry bounds ----------------------------------------------------------------------------
async def test_the_retry_budget_caps_retries_in_flight(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    broken, holding = FaultPod(mode=500), FaultPod(mode="hold")
    servers = await serve(aiohttp_server, broken, holding)
    cfg = upstream(consecutive_failures=0, retry_budget_percent=0.0, retry_budget_min_concurrency=1)
    gw = await gateway(make_gateway, servers, cfg)
    body = orjson.dumps({"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True})
    # Round-robin: the 1st request fails on `broken` and is retried on `holding`, where it
    # stays in flight (holding the only retry slot); the 2nd goes straight to `holding`.
    retried = await gw.post("/v1/completions", data=body)
    assert retried.headers["x-slogate-endpoint"] == holding.name
    direct = await gw.post("/v1/completions", data=body)
    assert direct.headers["x-slogate-endpoint"] == holding.name
    # The 3rd fails on `broken` too, and finds the budget spent: the 500 is the answer.
    status, answer, endpoint = await complete(gw)
    assert (status, endpoint) == (500, broken.name)
    assert b"says 500" in answer
    assert await metric(gw, "slogate_upstream_retries_denied_total", reason="budget") == 1.0
    holding.release.set()
    for resp in (retried, direct):
        assert (await asyncio.wait_for(resp.read(), WAIT_S)).endswith(DONE)
    # The slot is free again: the next failure is retried.
    await complete(gw)  # to `holding`, in round-robin order
    status, _, endpoint = await complete(gw)
    assert (status, endpoint) == (200, holding.name)
    assert await metric(gw, "slogate_upstream_retries_total", reason="5xx") == 2.0


async def test_no_retry_past_the_requests_ttft_objective(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    broken, good = FaultPod(mode=500), FaultPod()
    servers = await serve(aiohttp_server, broken, good)
    cfg = upstream(consecutive_failures=0, retry_backoff_base_ms=50.0, retry_backoff_max_ms=50.0)
    gw = await gateway(make_gateway, servers, cfg)
    # The backoff alone (25 ms at least) is past a 1 ms objective: the failure is the answer.
    status, _, endpoint = await complete(gw, headers={"x-llm-d-slo-ttft-ms": "1"})
    assert (status, endpoint) == (500, broken.name)
    assert await metric(gw, "slogate_upstream_retries_denied_total", reason="slo") == 1.0
    await complete(gw)  # round-robin: the next request starts at `good`
    status, _, endpoint = await complete(gw, headers={"x-llm-d-slo-ttft-ms": "60000"})
    assert (status, endpoint) == (200, good.name)


# -- outlier detection ---------------------------------------------------------------------------
async def test_consecutive_failures_eject_a_pod_until_its_health_check_passes(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    # No /metrics on either pod (both routed as load-unknown), so no scrape can vouch for the
    # broken one: only its GET /health can bring it back before its (long) ejection ends.
    broken = FaultPod(mode=500, health_status=503, serves_metrics=False)
    good = FaultPod(serves_metrics=False)
    servers = await serve(aiohttp_server, broken, good)
    cfg = upstream(consecutive_failures=3, base_ejection_ms=600_000, health_check_interval_ms=50)
    gw = await gateway(make_gateway, servers, cfg)
    with caplog.at_level(logging.INFO):
        for _ in range(6):
            status, _, endpoint = await complete(gw)
            assert (status, endpoint) == (200, good.name)
        assert broken.completions == 3
        assert await metric(gw, "slogate_endpoint_ejections_total", endpoint=broken.name) == 1.0
        assert await metric(gw, "slogate_endpoint_ejected", endpoint=broken.name) == 1.0
        detail = (await (await gw.get("/ready")).json())["detail"]
        assert detail[broken.name].get("ejected") is True
        for _ in range(4):  # ejected: not chosen at all, so nothing to retry
            assert (await complete(gw))[2] == good.name
        assert broken.completions == 3
        assert await metric(gw, "slogate_upstream_retries_total", reason="5xx") == 3.0
        await asyncio.sleep(0.3)  # several failed health checks: still out
        assert await metric(gw, "slogate_endpoint_ejected", endpoint=broken.name) == 1.0

        broken.mode, broken.health_status = "ok", 200

        async def back() -> bool:
            return await metric(gw, "slogate_endpoint_ejected", endpoint=broken.name) == 0.0

        await eventually(back, timeout_s=WAIT_S, what="the pod back in the pool")
        served = {(await complete(gw))[2] for _ in range(4)}
        assert served == {broken.name, good.name}
    ejected = [r for r in caplog.records if r.getMessage() == "endpoint.ejected"]
    assert [(r.levelname, log_field(r, "endpoint")) for r in ejected] == [("WARNING", broken.name)]
    returned = [r for r in caplog.records if r.getMessage() == "endpoint.returned"]
    assert [(r.levelname, log_field(r, "reason")) for r in returned] == [("INFO", "health_check")]


async def test_a_successful_scrape_counts_as_a_passing_health_check(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    broken, good = FaultPod(mode=500, health_status=503), FaultPod()
    servers = await serve(aiohttp_server, broken, good)
    cfg = upstream(consecutive_failures=2, base_ejection_ms=600_000, health_check_interval_ms=50)
    gw = await gateway(make_gateway, servers, cfg)
    with caplog.at_level(logging.INFO, logger="gateway.backends.outliers"):
        for _ in range(4):
            await complete(gw)

        async def returned() -> bool:
            return any(r.getMessage() == "endpoint.returned" for r in caplog.records)

        await eventually(returned, timeout_s=WAIT_S, what="the pod back in the pool")
    assert await metric(gw, "slogate_endpoint_ejections_total", endpoint=broken.name) == 1.0
    (record,) = [r for r in caplog.records if r.getMessage() == "endpoint.returned"]
    assert log_field(record, "reason") == "scrape"


# -- after the first byte: never retried, always a well-formed end --------------------------------
async def test_a_stream_the_pod_drops_mid_way_ends_with_an_sse_error_event(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    dropping, good = FaultPod(mode="drop"), FaultPod()
    servers = await serve(aiohttp_server, dropping, good)
    gw = await gateway(make_gateway, servers, upstream())
    status, body, endpoint = await complete(gw, stream=True)
    assert (status, endpoint) == (200, dropping.name)
    *tokens, last = sse_events(body)
    assert len(tokens) == 2  # relayed as they came, then no retry: bytes reached the client
    assert error_event(last)["code"] == "upstream_stream_error"
    assert good.completions == 0
    await recorder.ended.wait()
    assert [r.outcome for r in recorder.records] == [Outcome.UPSTREAM_ERROR]
    errors = "inference_objective_request_error_total"
    assert await metric(gw, errors, error_code="upstream_error") == 1.0
    assert await metric(gw, "slogate_upstream_errors_total", endpoint=dropping.name, reason="reset")


async def test_a_stalled_stream_is_cut_by_the_read_idle_timeout(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    stalling = FaultPod(mode="stall")
    servers = await serve(aiohttp_server, stalling)
    gw = await gateway(make_gateway, servers, upstream(read_idle_timeout_s=0.3))
    status, body, _ = await complete(gw, stream=True)  # bounded: it never hangs
    assert status == 200
    *tokens, last = sse_events(body)
    assert len(tokens) == 2
    assert error_event(last)["code"] == "upstream_timeout"
    await recorder.ended.wait()
    assert [r.outcome for r in recorder.records] == [Outcome.UPSTREAM_TIMEOUT]
    errors = "inference_objective_request_error_total"
    assert await metric(gw, errors, error_code="upstream_timeout") == 1.0
    timeouts = await metric(
        gw, "slogate_upstream_errors_total", endpoint=stalling.name, reason="timeout"
    )
    assert timeouts == 1.0


async def test_silence_before_the_first_byte_is_a_504_and_not_retried(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    silent, good = FaultPod(mode="headers_then_stall"), FaultPod()
    servers = await serve(aiohttp_server, silent, good)
    gw = await gateway(make_gateway, servers, upstream(read_idle_timeout_s=0.3))
    status, body, _ = await complete(gw, stream=True)
    assert status == 504  # nothing was sent: a status, not a broken stream
    assert orjson.loads(body)["error"]["code"] == "upstream_timeout"
    assert good.completions == 0


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_sim_server(SimConfig(time_scale=20.0))
    yield server
    await server.close()


async def start_sim_process(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.sim", "--port", str(port), "--time-scale", "1",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:

        async def answers() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(answers, timeout_s=WAIT_S, what="the sim process listening")
    return proc


async def test_a_sim_pod_killed_mid_stream(
    make_gateway: MakeGateway, recorder: Recorder, sim: SimServer, unused_tcp_port: int
) -> None:
    victim_proc = await start_sim_process(unused_tcp_port)
    victim = f"127.0.0.1:{unused_tcp_port}"
    try:
        gw = await make_gateway(gateway_config(f"http://{victim}", sim.url))
        await wait_for_endpoints(gw, 2)
        body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 5000, "ignore_eos": True}
        resp = await gw.post("/v1/completions", json={**body, "stream": True})
        assert resp.headers["x-slogate-endpoint"] == victim  # round-robin: the first pod
        received = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT_S)
        victim_proc.kill()  # SIGKILL, mid-stream
        received += await asyncio.wait_for(resp.content.read(), WAIT_S)
    finally:
        if victim_proc.returncode is None:
            victim_proc.kill()
        await victim_proc.wait()
    assert resp.status == 200
    events = sse_events(received)
    assert len(events) >= 2
    assert error_event(events[-1])["code"] == "upstream_stream_error"
    await eventually(
        lambda: _has_record(recorder, victim), timeout_s=WAIT_S, what="the request's record"
    )
    errors = "inference_objective_request_error_total"
    assert await metric(gw, errors, error_code="upstream_error") == 1.0
    store = gw.app[gateway_key].store

    async def down() -> bool:
        return store.health(victim, gw.app[gateway_key].clock()) is Health.DOWN

    await eventually(down, timeout_s=WAIT_S, what="the killed pod marked down")
    attempts_before = len(recorder.records)
    for _ in range(4):
        status, _, endpoint = await complete(gw, stream=True)
        assert (status, endpoint) == (200, f"{sim.host}:{sim.port}")
    assert all(r.endpoint != victim for r in recorder.records[attempts_before:])


async def _has_record(recorder: Recorder, endpoint: str) -> bool:
    return any(r.endpoint == endpoint for r in recorder.records)


# -- predictor and trainer failures, under load --------------------------------------------------
async def test_a_crashing_trainer_fails_no_request_under_load(
    aiohttp_client: AiohttpClient, sim: SimServer
) -> None:
    other = await start_sim_server(SimConfig(time_scale=20.0, speed=2.0))
    try:
        cfg = GatewayConfig(
            pool=PoolConfig(endpoints=(EndpointConfig(url=sim.url), EndpointConfig(url=other.url))),
            scheduling=SchedulingConfig(preset="predicted-latency"),
            predictor=PredictorConfig(
                retrain_interval_s=0.05, min_samples=10, max_training_failures=2
            ),
        )
        worker = TrainingWorker(training_faults.crash)
        gw = await aiohttp_client(create_app(cfg, Dependencies(training_worker=worker)))
        await wait_for_endpoints(gw, 2)
        trainer = gw.app[gateway_key].trainer
        statuses: list[int] = []
        for _ in range(4):  # waves of 50 concurrent streams while the worker keeps dying
            waves = await asyncio.gather(*(complete(gw, stream=True) for _ in range(50)))
            statuses += [status for status, _, _ in waves]
        await eventually(
            _async(lambda: trainer.stats.failed >= 2), timeout_s=WAIT_S, what="failed runs"
        )
        statuses += [status for status, _, _ in [await complete(gw) for _ in range(10)]]
    finally:
        await other.close()
    assert statuses == [200] * 210
    predictor = gw.app[gateway_key].predictor
    assert not predictor.trainer_healthy
    assert predictor.fallback_decisions == 210


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


# -- the pool is the only place the gateway connects to -------------------------------------------
async def test_the_gateway_connects_only_to_pods_of_its_pool(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway
) -> None:
    pod, decoy = FaultPod(), FaultPod(name="decoy")
    (pod_server,) = await serve(aiohttp_server, pod)
    decoy_hits: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        decoy_hits.append(request.path)
        return await handler(request)

    decoy_app = decoy.app()
    decoy_app.middlewares.append(record)
    decoy_server = await aiohttp_server(decoy_app)
    decoy_url = server_url(decoy_server)
    decoy_host = decoy_server.make_url("").authority
    gw = await gateway(make_gateway, [pod_server], upstream())
    steering = {
        "host": decoy_host,
        "x-slogate-endpoint": decoy_host,
        "x-gateway-destination-endpoint": decoy_host,
        "x-forwarded-host": decoy_host,
        "forwarded": f"host={decoy_host}",
    }
    body = {
        "model": MODEL,
        "prompt": "x",
        "endpoint": decoy_url,
        "base_url": decoy_url,
        "url": f"{decoy_url}/v1/completions",
    }
    resp = await gw.post("/v1/completions", json=body, headers=steering)
    await resp.read()
    assert (resp.status, resp.headers["x-slogate-endpoint"]) == (200, pod.name)
    resp = await gw.get("/version", headers=steering)
    assert (await resp.json())["pod"] == pod.name
    # Absolute-form request targets name another host: only their path and query are used.
    status, answer = await raw_request(
        gw, f"POST {decoy_url}/v1/completions HTTP/1.1", decoy_host, orjson.dumps(body)
    )
    assert (status, orjson.loads(answer)["choices"][0]["text"]) == (200, " tok tok tok")
    status, answer = await raw_request(gw, f"GET {decoy_url}/version?x=1 HTTP/1.1", decoy_host)
    assert (status, orjson.loads(answer)["pod"]) == (200, pod.name)
    for target in (f"{decoy_url}@evil/version", f"//{decoy_host}/version", f"@{decoy_host}"):
        status, _ = await raw_request(gw, f"GET {target} HTTP/1.1", decoy_host)
        assert status < 500, target
    assert decoy_hits == []
    assert pod.completions == 2


async def raw_request(
    gw: Client, request_line: str, host: str, payload: bytes = b""
) -> tuple[int, bytes]:
    """Send one request as raw bytes (any request target), return its status and body."""
    assert gw.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        head = (
            f"{request_line}\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        answer = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]
