"""The whole route table, on one screen."""

from __future__ import annotations

from aiohttp import web

from config import ConfigError
from gateway.auth import INFLIGHT_PATH
from gateway.handlers import inference, info, utility
from gateway.keys import gateway_key


def setup_routes(app: web.Application) -> None:
    # Generation: routed, streamed or not, TTFT/TPOT measured.
    app.router.add_post("/v1/completions", inference.completions)
    app.router.add_post("/v1/chat/completions", inference.chat_completions)
    app.router.add_post("/v1/responses", inference.responses)
    app.router.add_get("/v1/responses/{response_id}", utility.stored_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", utility.stored_response)
    # Pooling: routed on load and prompt work, one answer each.
    app.router.add_post("/v1/embeddings", inference.embeddings)
    app.router.add_post("/pooling", inference.pooling)
    app.router.add_post("/classify", inference.classify)
    app.router.add_post("/score", inference.score)
    app.router.add_post("/v1/score", inference.score)
    app.router.add_post("/rerank", inference.rerank)
    app.router.add_post("/v1/rerank", inference.rerank)
    app.router.add_post("/v2/rerank", inference.rerank)
    # The gateway's own.
    app.router.add_get("/v1/models", info.models)
    app.router.add_get("/health", info.health)
    app.router.add_get("/ready", info.ready)
    app.router.add_get("/metrics", info.metrics)
    app.router.add_get(INFLIGHT_PATH, info.inflight)  # for the other replicas
    # The model servers' utility routes the configuration lets through.
    server = app[gateway_key].cfg.server
    for field, method, handler in (
        ("passthrough_get", "GET", utility.passthrough_get),
        ("passthrough_post", "POST", utility.passthrough_post),
    ):
        for i, path in enumerate(getattr(server, field)):
            if _routed(app, method, path):
                raise ConfigError(f"server.{field}[{i}]", path, "is a route of the gateway itself")
            app.router.add_route(method, path, handler)


def _routed(app: web.Application, method: str, path: str) -> bool:
    for resource in app.router.resources():
        if resource.canonical == path and any(route.method in (method, "*") for route in resource):
            return True
    return False
