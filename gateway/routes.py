"""The whole route table, on one screen."""

from __future__ import annotations

from aiohttp import web

from gateway.handlers import inference, info


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", inference.completions)
    app.router.add_post("/v1/chat/completions", inference.chat_completions)
    app.router.add_get("/v1/models", info.models)
    app.router.add_get("/health", info.health)
    app.router.add_get("/ready", info.ready)
    app.router.add_get("/metrics", info.metrics)
