"""Utility routes relayed untouched (an allow-list), and the pooling routes that are routed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpServer

from config import ConfigError, ServerConfig
from gateway.app import create_app
from gateway.keys import gateway_key
from loadtest import instant_backend
from loadtest.sim.config import SimConfig
from loadtest.sim.server import SimServer, start_sim_server
from scheduler.framework.plugins import Outcome
from scheduler.framework.types import InflightLoad
from tests.gateway.conftest import MakeGateway, Recorder, gateway_config, server_url

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def two_models() -> AsyncIterator[list[SimServer]]:
    """Two pods serving different models."""
    servers = [
        await start_sim_server(SimConfig(time_scale=50.0)),
        await start_sim_server(SimConfig(time_scale=50.0, model="other-llm")),
    ]
    yield servers
    for server in servers:
        await server.close()


async def models_known(client: Client, count: int) -> None:
    for _ in range(200):
        if len(client.app[gateway_key].store.models()) == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("models never discovered")


async def test_tokenize_and_detokenize_go_to_a_pod_serving_the_model(
    two_models: list[SimServer], make_gateway: MakeGateway, recorder: Recorder
) -> None:
    gw = await make_gateway(gateway_config(*(s.url for s in two_models)))
    await models_known(gw, 2)
    for model, pod in (("sim-llm", two_models[0]), ("other-llm", two_models[1])):
        for _ in range(3):
            resp = await gw.post("/tokenize", json={"model": model, "prompt": "hello"})
            assert resp.status == 200
            assert await resp.json() == {
                "count": 1,
                "max_model_len": 32768,
                "tokens": [15339],
                "token_strs": None,
            }
            assert resp.headers["x-slogate-endpoint"] == pod.url.removeprefix("http://")
    resp = await gw.post("/detokenize", json={"model": "other-llm", "tokens": [15339]})
    assert (resp.status, await resp.json()) == (200, {"prompt": "hello"})
    # The pod's own errors come back as they are.
    resp = await gw.post("/detokenize", json={"model": "sim-llm", "tokens": [1 << 30]})
    assert resp.status == 400
    assert "out of vocabulary" in (await resp.json())["error"]["message"]
    # An unknown model is the gateway's 404, as for inference.
    resp = await gw.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"
    assert recorder.records == []  # not inference: nothing measured
    assert len(gw.app[gateway_key].store.inflight) == 0


async def test_several_models_in_one_pool_each_request_to_its_models_pods(
    two_models: list[SimServer], make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(gateway_config(*(s.url for s in two_models), preset="load-prefix"))
    await models_known(gw, 2)
    for model, pod in (("sim-llm", two_models[0]), ("other-llm", two_models[1])):
        for path, body in (
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/responses", {"input": "hi"}),
            ("/v1/embeddings", {"input": ["a", "b"]}),
        ):
            resp = await gw.post(path, json={"model": model, "max_tokens": 2, **body})
            assert resp.status == 200, await resp.text()
            assert resp.headers["x-slogate-endpoint"] == pod.url.removeprefix("http://")
    resp = await gw.post("/v1/embeddings", json={"model": "nope", "input": "a"})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_get_passthrough_and_everything_else_stays_404(
    two_models: list[SimServer], make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(gateway_config(two_models[0].url))
    resp = await gw.get("/version")
    assert (resp.status, await resp.json()) == (200, {"version": "0.10.2"})
    assert resp.headers["x-slogate-endpoint"]
    for method, path in (("GET", "/sim/stats"), ("POST", "/sim/speed"), ("GET", "/tokenize")):
        resp = await gw.request(method, path)
        assert resp.status in (404, 405)
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_the_allow_lists_are_configurable(
    two_models: list[SimServer], make_gateway: MakeGateway
) -> None:
    cfg = gateway_config(two_models[0].url)
    cfg = replace(
        cfg,
        server=ServerConfig(passthrough_get=("/sim/stats", "/version"), passthrough_post=()),
    )
    gw = await make_gateway(cfg)
    resp = await gw.get("/sim/stats?verbose=1")
    assert resp.status == 200
    assert (await resp.json())["model"] == "sim-llm"
    resp = await gw.post("/tokenize", json={"model": "sim-llm", "prompt": "x"})
    assert resp.status == 404


def test_a_passthrough_path_cannot_shadow_a_gateway_route() -> None:
    cfg = replace(
        gateway_config("http://127.0.0.1:1"),
        server=ServerConfig(passthrough_get=("/version", "/metrics")),
    )
    with pytest.raises(ConfigError, match=r"server\.passthrough_get\[1\]"):
        create_app(cfg)


async def test_a_pod_that_does_not_serve_a_pooling_route_answers_for_itself(
    instant_backend: TestServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    gw = await make_gateway(gateway_config(server_url(instant_backend)))
    await models_known(gw, 1)
    model = orjson.loads(await (await gw.get("/v1/models")).read())["data"][0]["id"]
    resp = await gw.post("/v1/rerank", json={"model": model, "query": "q", "documents": ["a"]})
    assert resp.status == 404  # the backend has no reranker: its own 404, relayed
    assert resp.headers["x-slogate-endpoint"] == server_url(instant_backend).removeprefix("http://")
    await asyncio.wait_for(recorder.ended.wait(), 5)
    assert recorder.records[0].outcome is Outcome.UPSTREAM_ERROR


# -- pooling routes against a model server that serves them --------------------------------------
def pooling_backend(release: asyncio.Event) -> web.Application:
    """The instant backend's models and metrics, vLLM's pooling routes and completions; every
    request waits for ``release``."""
    app = web.Application()
    app.router.add_get("/v1/models", instant_backend.models)
    app.router.add_get("/metrics", instant_backend.metrics)

    async def pooled(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        await release.wait()
        usage = {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0}
        return web.json_response({"id": "x", "object": "list", "data": [], "usage": usage, **body})

    for path in (
        "/pooling",
        "/classify",
        "/score",
        "/v1/score",
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
    ):
        app.router.add_post(path, pooled)
    app.router.add_post("/v1/completions", pooled)
    return app


POOLING = [
    ("/pooling", {"input": ["a", "b"]}, "pooling", 2),
    ("/classify", {"input": "a"}, "classify", 1),
    ("/v1/score", {"text_1": "q", "text_2": ["a", "b", "c"]}, "score", 3),
    ("/score", {"text_1": ["x", "y"], "text_2": ["a", "b"]}, "score", 2),
    ("/v1/rerank", {"query": "q", "documents": ["a", "b"]}, "rerank", 2),
    ("/v2/rerank", {"query": "q", "documents": [{"text": "a"}]}, "rerank", 1),
]


@pytest.mark.parametrize(
    ("path", "body", "route", "sequences"), POOLING, ids=[p[0] for p in POOLING]
)
async def test_pooling_routes_are_routed_counted_and_measured(
    aiohttp_server: AiohttpServer,
    make_gateway: MakeGateway,
    recorder: Recorder,
    path: str,
    body: dict[str, object],
    route: str,
    sequences: int,
) -> None:
    release = asyncio.Event()
    backend = await aiohttp_server(pooling_backend(release))
    gw = await make_gateway(gateway_config(server_url(backend), preset="load-prefix"))
    pod = server_url(backend).removeprefix("http://")
    pending = asyncio.ensure_future(gw.post(path, json={"model": "sim-llm", **body}))
    store = gw.app[gateway_key].store
    for _ in range(200):
        if store.inflight.load(pod).requests:
            break
        await asyncio.sleep(0.01)
    assert store.inflight.load(pod).requests == sequences  # each input is a sequence
    release.set()
    resp = await pending
    assert resp.status == 200
    assert (await resp.json())["usage"]["prompt_tokens"] == 3
    await asyncio.wait_for(recorder.ended.wait(), 5)
    assert store.inflight.load(pod) == InflightLoad(0, 0)
    record = recorder.records[0]
    assert (record.outcome, record.sequences, record.stream) == (Outcome.SUCCESS, sequences, False)
    text = await (await gw.get("/metrics")).text()
    histogram = (
        f'slogate_pooling_request_duration_seconds_count{{model_name="sim-llm",route="{route}"}}'
    )
    assert f"{histogram} 1.0" in text


async def test_n_sequences_of_a_batch_count_in_the_load(
    aiohttp_server: AiohttpServer, make_gateway: MakeGateway, recorder: Recorder
) -> None:
    release = asyncio.Event()
    backend = await aiohttp_server(pooling_backend(release))
    gw = await make_gateway(gateway_config(server_url(backend), preset="least-request"))
    pod = server_url(backend).removeprefix("http://")
    body = {"model": "sim-llm", "prompt": ["a", "b"], "n": 3, "max_tokens": 2}
    pending = asyncio.ensure_future(gw.post("/v1/completions", json=body))
    store = gw.app[gateway_key].store
    for _ in range(200):
        if store.inflight.load(pod).requests:
            break
        await asyncio.sleep(0.01)
    assert store.inflight.load(pod).requests == 6
    metrics = await (await gw.get("/metrics")).text()
    assert f'slogate_endpoint_inflight_requests{{endpoint="{pod}"}} 6.0' in metrics
    release.set()
    assert (await pending).status == 200
    await asyncio.wait_for(recorder.ended.wait(), 5)
    assert store.inflight.load(pod).requests == 0
