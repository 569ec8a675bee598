"""Utility routes of the model servers' API, relayed untouched to one endpoint.

Not inference: nothing is scheduled, counted in flight or measured beyond the per-route HTTP
metrics. The endpoint is one serving the body's ``model`` (``/tokenize``, ``/detokenize``: the
tokenizer is the model's), else any usable one, the least loaded by this gateway's in-flight
count, ties at random (ejected endpoints last). Also the route of ``GET /v1/responses/{id}``:
to the endpoint that produced the response. Faults are handled as for inference
(``gateway.faults``, one reporter for both): a connection refused or reset, a 5xx, 429 or 503
answer is retried on the next endpoint within ``gateway.retries``' bounds; the last answer,
whatever its status, is relayed as it came. The upstream URL is the endpoint's plus the
request's path and query, never the request target as sent (an absolute-form target names
another host).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from config import GatewayConfig
from gateway.errors import NoEndpointError, NotFoundError, PayloadTooLargeError
from gateway.faults import ANSWER, Fault, FaultReporter, describe, exception_fault, status_fault
from gateway.proxy import REQUEST_ID_HEADER, downstream_headers, upstream_headers
from gateway.retries import RetryPolicy
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.types import Endpoint


class Passthrough:
    def __init__(
        self,
        *,
        cfg: GatewayConfig,
        store: EndpointStore,
        session: Callable[[], aiohttp.ClientSession],
        retries: RetryPolicy,
        faults: FaultReporter,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._session = session
        self._retries = retries
        self._faults = faults
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
        ejected = self._store.ejected
        rng = self._rng.random
        return sorted(endpoints, key=lambda e: (ejected(e.name, now), load(e.name).requests, rng()))

    async def relay(
        self, request: web.Request, body: bytes | None, targets: Sequence[Endpoint]
    ) -> web.Response:
        client_id = request.headers.get(REQUEST_ID_HEADER) or f"{self._id_prefix}{next(self._ids)}"
        headers = upstream_headers(request.headers, client_id)
        path = request.rel_url.raw_path_qs
        attempts = min(len(targets), 1 + self._retries.max_retries)
        session = self._session()
        with self._retries.begin(received_at=self._clock()) as retries:
            for i, endpoint in enumerate(targets[:attempts]):
                name = endpoint.name
                last = i + 1 == attempts
                try:
                    upstream, payload, fault = await self._send(
                        session, request.method, f"{endpoint.url}{path}", body, headers
                    )
                except Exception as exc:
                    fault = exception_fault(exc)
                    if fault is None:
                        raise
                    detail = describe(exc)
                    delay_s = self._faults.before_relay(
                        name, fault, request_id=client_id, detail=detail, retries=retries, last=last
                    )
                    if delay_s is None:
                        raise fault.error(name, detail) from exc
                    await asyncio.sleep(delay_s)
                    continue
                try:
                    if fault is None:
                        self._faults.answered(name)
                    else:
                        delay_s = self._faults.before_relay(
                            name,
                            fault,
                            request_id=client_id,
                            detail=f"HTTP {upstream.status}",
                            retries=retries,
                            last=last,
                        )
                        if delay_s is not None:
                            upstream.release()
                            await asyncio.sleep(delay_s)
                            continue
                        payload = await self._read_answer(upstream, name, client_id)
                    return web.Response(
                        status=upstream.status,
                        body=payload,
                        headers=downstream_headers(upstream.headers, name, client_id),
                    )
                finally:
                    upstream.close()
        raise AssertionError("unreachable: targets is never empty")

    @staticmethod
    async def _send(
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: bytes | None,
        headers: CIMultiDict[str],
    ) -> tuple[aiohttp.ClientResponse, bytes | None, Fault | None]:
        """The answer, its body and the fault its status shows (an answer with a fault is
        returned unread: it may be dropped for a retry). Raises what the connection raised."""
        upstream = await session.request(method, url, data=body, headers=headers)
        fault = status_fault(upstream.status)
        if fault is not None:
            return upstream, None, fault
        try:
            return upstream, await upstream.read(), None
        finally:
            upstream.close()

    async def _read_answer(
        self, upstream: aiohttp.ClientResponse, name: str, client_id: str
    ) -> bytes:
        """The body of a faulty answer that is relayed (the last attempt's)."""
        try:
            return await upstream.read()
        except Exception as exc:
            fault = exception_fault(exc)
            if fault is None:
                raise
            detail = describe(exc)
            self._faults.failed(name, fault, request_id=client_id, detail=detail, action=ANSWER)
            raise fault.error(name, detail) from exc
