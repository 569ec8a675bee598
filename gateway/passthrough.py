"""Utility routes of the model servers' API, relayed untouched to one endpoint.

Not inference: nothing is scheduled, counted in flight or measured beyond the per-route HTTP
metrics. The endpoint is one serving the body's ``model`` (``/tokenize``, ``/detokenize``: the
tokenizer is the model's), else any usable one, the least loaded by this gateway's in-flight
count, ties at random. Also the route of ``GET /v1/responses/{id}``: to the endpoint that
produced the response. A connection refused is retried on the next endpoint (as for
inference, ``upstream.retries``); the answer, whatever its status, is relayed as it came.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import web

from config import GatewayConfig
from gateway.errors import (
    NoEndpointError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.proxy import REQUEST_ID_HEADER, downstream_headers, upstream_headers
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.types import Endpoint

logger = logging.getLogger(__name__)


class Passthrough:
    def __init__(
        self,
        *,
        cfg: GatewayConfig,
        store: EndpointStore,
        session: Callable[[], aiohttp.ClientSession],
        metrics: GatewayMetrics,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._session = session
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._id_prefix = f"{rng.getrandbits(32):08x}-u"
        self._ids = itertools.count(1)

    async def read_body(self, request: web.Request) -> bytes:
        limit = self._cfg.server.max_body_bytes
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes") from exc

    def targets(self, model: str | None) -> list[Endpoint]:
        """Endpoints to try, best first: serving ``model`` (any usable one without a model),
        fewest requests in flight from this gateway first, ties in random order."""
        now = self._clock()
        if model is None:
            endpoints = self._store.usable(now)
        else:
            endpoints = [c.endpoint for c in self._store.candidates(model, now)]
            if not endpoints:
                known = self._store.models()
                if known and model not in known:
                    raise NotFoundError(
                        f"The model `{model}` does not exist.",
                        code="model_not_found",
                        param="model",
                    )
        if not endpoints:
            raise NoEndpointError(
                "no usable endpoint" + (f" serves model {model!r}" if model else "")
            )
        load = self._store.inflight.load
        rng = self._rng.random
        return sorted(endpoints, key=lambda e: (load(e.name).requests, rng()))

    async def relay(
        self, request: web.Request, body: bytes | None, targets: Sequence[Endpoint]
    ) -> web.Response:
        client_id = request.headers.get(REQUEST_ID_HEADER) or f"{self._id_prefix}{next(self._ids)}"
        headers = upstream_headers(request.headers, client_id)
        attempts = min(len(targets), 1 + self._cfg.upstream.retries)
        session = self._session()
        for i, endpoint in enumerate(targets[:attempts]):
            try:
                async with session.request(
                    request.method,
                    f"{endpoint.url}{request.raw_path}",
                    data=body,
                    headers=headers,
                ) as upstream:
                    payload = await upstream.read()
                    return web.Response(
                        status=upstream.status,
                        body=payload,
                        headers=downstream_headers(upstream.headers, endpoint.name, client_id),
                    )
            except aiohttp.ClientConnectorError as exc:
                self._store.mark_down(endpoint.name, self._clock())
                self._metrics.upstream_errors.labels(endpoint.name, "connect").inc()
                logger.warning(
                    "upstream.connect_failed",
                    extra={"request_id": client_id, "endpoint": endpoint.name, "error": str(exc)},
                )
                if i + 1 < attempts:
                    continue
                raise UpstreamError(f"could not connect to endpoint {endpoint.name}") from exc
            except TimeoutError as exc:
                self._metrics.upstream_errors.labels(endpoint.name, "timeout").inc()
                raise UpstreamTimeoutError(
                    f"endpoint {endpoint.name} did not answer in time"
                ) from exc
            except aiohttp.ClientError as exc:
                self._metrics.upstream_errors.labels(endpoint.name, "protocol").inc()
                raise UpstreamError(f"endpoint {endpoint.name} failed: {exc}") from exc
        raise AssertionError("unreachable: targets is never empty")
