"""Liveness, readiness, the model list and the Prometheus exposition."""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.keys import gateway_key


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    gw = request.app[gateway_key]
    if gw.draining:
        return _json({"status": "draining"}, status=503)
    usable = gw.store.usable(gw.clock())
    if not usable:
        return _json({"status": "no usable endpoint"}, status=503)
    return _json({"status": "ready", "endpoints": [e.name for e in usable]})


async def models(request: web.Request) -> web.Response:
    gw = request.app[gateway_key]
    return _json(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": gw.started_at, "owned_by": "slogate"}
                for name in gw.store.models()
            ],
        }
    )


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[gateway_key]
    return web.Response(
        body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
