"""Routes relayed untouched to one endpoint: the configured utility paths of the model
servers' API, and the Responses API's stored responses (to the pod that holds each)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.errors import NotFoundError
from gateway.keys import gateway_key
from gateway.response_pods import pod_gone


async def passthrough_get(request: web.Request) -> web.Response:
    passthrough = request.app[gateway_key].passthrough
    return await passthrough.relay(request, None, passthrough.targets(None))


async def passthrough_post(request: web.Request) -> web.Response:
    passthrough = request.app[gateway_key].passthrough
    body = await passthrough.read_body(request)
    return await passthrough.relay(request, body, passthrough.targets(_model_of(body)))


async def stored_response(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel``: to the endpoint that
    produced the response; 404 when this gateway does not know it, or its endpoint is gone."""
    gw = request.app[gateway_key]
    response_id = request.match_info["response_id"]
    endpoint = gw.response_pods.endpoint_of(response_id)
    if endpoint is None:
        raise NotFoundError(
            f"Response with id '{response_id}' not found.", code="response_not_found"
        )
    only = gw.store.candidate(endpoint, gw.clock())
    if only is None:
        raise pod_gone(response_id, endpoint, param=None)
    body = await gw.passthrough.read_body(request) if request.method == "POST" else None
    return await gw.passthrough.relay(request, body, [only.endpoint])


def _model_of(body: bytes) -> str | None:
    """The body's ``model``, when it is a JSON object naming one (else any endpoint will do;
    a body that is not JSON is the model server's to refuse)."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None
