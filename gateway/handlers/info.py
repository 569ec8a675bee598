"""Liveness, readiness, the model list and the Prometheus exposition."""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.backends.peers import inflight_report
from gateway.backends.pool_state import describe_pool
from gateway.keys import gateway_key


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 while some endpoint is usable, 503 when none is or while draining. ``detail`` gives
    every endpoint's state (``up``, ``metrics_unknown``, ``down``) and, when not up, why."""
    gw = request.app[gateway_key]
    if gw.draining:
        return _json({"status": "draining"}, status=503)
    now = gw.clock()
    usable = gw.store.usable(now)
    detail = describe_pool(gw.store, gw.scrape_status, now)
    if gw.pod_watcher is not None and not gw.pod_watcher.synced:
        return _json({"status": "pods not listed yet", "detail": detail}, status=503)
    if not usable:
        return _json({"status": "no usable endpoint", "detail": detail}, status=503)
    return _json({"status": "ready", "endpoints": [e.name for e in usable], "detail": detail})


async def models(request: web.Request) -> web.Response:
    """The pool's models, as vLLM lists them: a LoRA adapter with its base model as
    ``parent`` (and the ``root`` its pod reported)."""
    gw = request.app[gateway_key]
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "id": card.id,
                    "object": "model",
                    "created": gw.started_at,
                    "owned_by": "slogate",
                    "root": card.root or card.id,
                    "parent": card.parent,
                }
                for card in gw.store.model_cards()
            ],
        }
    )


async def inflight(request: web.Request) -> web.Response:
    """This gateway's own in-flight load per pod, for its peer replicas."""
    gw = request.app[gateway_key]
    return web.Response(body=inflight_report(gw.store.inflight), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[gateway_key]
    return web.Response(
        body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
