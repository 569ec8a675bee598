"""An endpoint whose metrics stay unknown is visible: /ready detail, a gauge, one WARNING."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from config import EndpointConfig, GatewayConfig, PoolConfig
from gateway.app import create_app
from gateway.deps import Dependencies
from tests.gateway.conftest import server_url
from tests.gateway.scrape_support import eventually, gateway_sample, log_field, ready_detail


def pool_config(*urls: str) -> GatewayConfig:
    return GatewayConfig(
        pool=PoolConfig(
            endpoints=tuple(EndpointConfig(url=u) for u in urls),
            models=("sim-llm",),
            scrape_interval_ms=50,
            staleness_ms=100,  # the WARNING comes after max(5 scrapes, staleness): 250 ms
        )
    )


async def test_ready_lists_each_endpoint_state(
    aiohttp_client: AiohttpClient,
    aiohttp_server: AiohttpServer,
    instant_backend: TestServer,
    unused_tcp_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def no_metrics(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no metrics here")

    app = web.Application()
    app.router.add_get("/metrics", no_metrics)
    blind = await aiohttp_server(app)
    gone = f"http://127.0.0.1:{unused_tcp_port}"
    cfg = pool_config(server_url(instant_backend), server_url(blind), gone)
    gw = await aiohttp_client(create_app(cfg, Dependencies()))
    up_name = instant_backend.make_url("").authority
    blind_name = blind.make_url("").authority
    gone_name = f"127.0.0.1:{unused_tcp_port}"

    async def settled() -> bool:
        detail = (await ready_detail(gw)).get("detail", {})
        return {name: d["state"] for name, d in detail.items()} == {
            up_name: "up",
            blind_name: "metrics_unknown",
            gone_name: "down",
        }

    await eventually(settled, what="each endpoint in its state")
    resp = await gw.get("/ready")
    assert resp.status == 200  # an endpoint with unknown metrics still takes traffic
    body = await resp.json()
    assert body["endpoints"] == [up_name, blind_name]
    assert body["detail"][up_name] == {"state": "up"}
    assert body["detail"][blind_name] == {
        "state": "metrics_unknown",
        "error": "/metrics answered HTTP 404",
    }
    assert "Cannot connect" in body["detail"][gone_name]["error"]

    for name, known in ((up_name, 1.0), (blind_name, 0.0), (gone_name, 0.0)):
        assert await gateway_sample(gw, "slogate_endpoint_metrics_known", endpoint=name) == known

    def missing_warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "endpoint.metrics_missing"]

    async def warned() -> bool:
        return {log_field(r, "endpoint") for r in missing_warnings()} == {blind_name, gone_name}

    await eventually(warned, what="a WARNING for each endpoint without metrics")
    blind_warning = next(r for r in missing_warnings() if log_field(r, "endpoint") == blind_name)
    assert blind_warning.levelno == logging.WARNING
    assert log_field(blind_warning, "state") == "metrics_unknown"
    assert log_field(blind_warning, "error") == "/metrics answered HTTP 404"
    # Once per episode, not once per scrape.
    scrapes = await gateway_sample(gw, "slogate_endpoint_scrape_errors_total", endpoint=blind_name)
    assert scrapes is not None
    assert scrapes > 5
    assert sum(log_field(r, "endpoint") == blind_name for r in missing_warnings()) == 1


async def test_ready_is_503_with_the_detail_when_no_endpoint_is_usable(
    aiohttp_client: AiohttpClient, unused_tcp_port: int
) -> None:
    gw = await aiohttp_client(
        create_app(pool_config(f"http://127.0.0.1:{unused_tcp_port}"), Dependencies())
    )
    name = f"127.0.0.1:{unused_tcp_port}"

    async def down() -> bool:
        resp = await gw.get("/ready")
        body = await resp.json()
        return resp.status == 503 and body.get("detail", {}).get(name, {}).get("state") == "down"

    await eventually(down, what="503 with the endpoint down")
    body = await ready_detail(gw)
    assert body["status"] == "no usable endpoint"
    assert "endpoints" not in body
