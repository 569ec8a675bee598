"""One inference request's story: parse -> tokenize -> schedule -> dispatch -> relay -> observe.

The director owns the per-request sequence and nothing else: parsing, scheduling policy,
header hygiene and SSE scanning live in their own modules. Every dispatched attempt ends with
exactly one :class:`RequestRecord` published to the observers (metrics, scheduler plugins,
the predictor's trainer), whatever happened: success, upstream failure, timeout or the client
going away. Bookkeeping runs in ``finally`` blocks that never await.

Every kind of inference request (``Api``: completions, chat, responses, and the pooling kinds)
takes this one path. A Responses request naming a ``previous_response_id`` whose pod this
gateway knows goes to that pod only (``gateway.response_pods``): scheduled with it as the only
candidate, so producers, admission and the bookkeeping of the pick still run; if that pod has
left the pool or is down, a 404 says its state is gone.

Dispatch tries the scheduler's targets in order. Whatever can fail before a byte reaches the
client (the connection, the answer's status, a stream's first chunk, a whole non-streamed
body) is an attempt's *fault* (``gateway.faults``): a retryable one moves on to the next target
when ``gateway.retries`` allows (attempts left, the retry budget, the TTFT objective), after a
jittered backoff; otherwise the client gets the last attempt's error, or its answer as the
endpoint gave it. Once bytes were relayed nothing is retried: a stream the endpoint breaks or
leaves silent for ``upstream.read_idle_timeout_s`` ends with an SSE error event. Every fault
and every whole answer is reported to ``gateway.faults.FaultReporter`` (metrics, logs, outlier
detection).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from config import GatewayConfig, SloConfig
from gateway.errors import (
    NoEndpointError,
    NotFoundError,
    PayloadTooLargeError,
    SheddedError,
    UpstreamError,
    UpstreamTimeoutError,
    error_body,
)
from gateway.explain import EXPLAIN_HEADER, describe, header_value
from gateway.faults import (
    ANSWER,
    CUT,
    Fault,
    FaultReporter,
    describe as describe_error,
    exception_fault,
    status_fault,
)
from gateway.parsing import ParsedRequest, parse_request
from gateway.policy import RoutingPolicy, routing_policy
from gateway.proxy import REQUEST_ID_HEADER, downstream_headers, upstream_headers
from gateway.response_pods import ResponsePods, pod_gone
from gateway.retries import RequestRetries, RetryPolicy
from gateway.streaming import ResponsesScanner, SseScanner, scan_json_body, scan_usage_only
from gateway.telemetry import GatewayMetrics
from gateway.tokenizer import PromptEncoder
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.attributes import PREDICTION, PREFIX_MATCH
from scheduler.framework.errors import AdmissionDenied, NoCandidatesError
from scheduler.framework.plugins import Outcome, RequestObserver, RequestRecord
from scheduler.framework.types import (
    Api,
    Candidate,
    InferenceRequest,
    SchedulingResult,
)
from scheduler.scheduler import Scheduler

logger = logging.getLogger(__name__)

_SSE_CONTENT_TYPE = "text/event-stream"


@dataclass(slots=True)
class _Attempt:
    """Mutable measurements of one dispatch to one endpoint."""

    candidate: Candidate
    policy: RoutingPolicy
    dispatched_at: float
    scanner: SseScanner
    status: int = 0
    outcome: Outcome = Outcome.UPSTREAM_ERROR
    ended: bool = False
    response_learned: bool = False
    faulted: bool = False
    """A fault of this attempt was reported (so its answer does not count as a good one)."""
    first_chunk_at: float = 0.0
    """When a stream's first chunk arrived (read before the client's response is started)."""


class Director:
    def __init__(
        self,
        *,
        cfg: GatewayConfig,
        store: EndpointStore,
        scheduler: Scheduler,
        encoder: PromptEncoder,
        session: Callable[[], aiohttp.ClientSession],
        metrics: GatewayMetrics,
        observers: Sequence[RequestObserver],
        clock: Callable[[], float],
        rng: random.Random,
        retries: RetryPolicy,
        faults: FaultReporter,
        response_pods: ResponsePods | None = None,
    ) -> None:
        self._cfg = cfg
        self._retries = retries
        self._faults = faults
        self._store = store
        self._encoder = encoder
        self._session = session
        self._metrics = metrics
        self._extra_observers = tuple(observers)
        self._clock = clock
        self._response_pods = (
            ResponsePods(cfg.server.max_response_ids) if response_pods is None else response_pods
        )
        self.policy = routing_policy(
            scheduler, cfg.slo, metrics=metrics, observers=observers, clock=clock
        )
        """The scheduler, objectives and admission queue new requests get (a reload swaps
        it: :meth:`reconfigure`); each request keeps the one it arrived under."""
        self._id_prefix = f"{rng.getrandbits(32):08x}-"
        self._ids = itertools.count(1)

    def reconfigure(self, scheduler: Scheduler, slo: SloConfig) -> None:
        """New requests get ``scheduler`` and ``slo`` (a configuration reload); requests
        already admitted finish under the policy they arrived with."""
        self.policy = routing_policy(
            scheduler,
            slo,
            metrics=self._metrics,
            observers=self._extra_observers,
            clock=self._clock,
            previous=self.policy,
        )

    # -- the story ------------------------------------------------------------------------
    async def handle(self, request: web.Request, api: Api) -> web.StreamResponse:
        received_at = self._clock()
        policy = self.policy
        body = await self._read_body(request)
        parsed = parse_request(body, api)
        objective = policy.objectives.resolve(request.headers)
        internal_id = f"{self._id_prefix}{next(self._ids)}"
        client_id = request.headers.get(REQUEST_ID_HEADER) or internal_id
        explain = policy.slo.explain and request.headers.get(EXPLAIN_HEADER, "") in (
            "1",
            "true",
        )
        tokens = await self._tokenize(parsed)
        ireq = InferenceRequest(
            request_id=internal_id,
            model=parsed.model,
            api=api,
            prompt_tokens=tokens,
            stream=parsed.stream,
            max_tokens=parsed.max_tokens,
            slo=objective.slo,
            priority=objective.priority,
            objective=objective.name,
            explain=explain or logger.isEnabledFor(logging.DEBUG),
            received_at=received_at,
            headers=request.headers,
            n=parsed.n,
            batch_size=parsed.batch_size,
            base_model=self._store.adapter_parent(parsed.model),
        )
        result = await self._admit(ireq, policy, self._pinned(parsed.previous_response_id))
        self._metrics.dispatch.observe(self._clock() - received_at)
        if ireq.explain and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "schedule.decision",
                extra={"request_id": client_id, "candidates": describe(result)},
            )
        extra = {EXPLAIN_HEADER: header_value(result)} if explain else None
        return await self._dispatch(
            request, body, ireq, policy, result, client_id, parsed.include_usage, extra
        )

    def _pinned(self, previous_response_id: str | None) -> tuple[str, str] | None:
        """(response id, endpoint) when the request continues a response this gateway saw
        produced: that endpoint holds the state. Unknown ids are routed as usual (the endpoint
        chosen answers the 404 itself)."""
        if previous_response_id is None:
            return None
        endpoint = self._response_pods.endpoint_of(previous_response_id)
        return None if endpoint is None else (previous_response_id, endpoint)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._cfg.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLargeError(
                f"request body of {request.content_length} bytes exceeds the limit of {limit}"
            )
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes") from exc

    async def _tokenize(self, parsed: ParsedRequest) -> array[int]:
        if parsed.prompt_ids is not None:
            return array("I", parsed.prompt_ids)
        if parsed.prompt_chars > self._cfg.tokenizer.thread_offload_chars:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self._encoder.encode, parsed.segments)
        return self._encoder.encode(parsed.segments)

    async def _admit(
        self,
        ireq: InferenceRequest,
        policy: RoutingPolicy,
        pinned: tuple[str, str] | None = None,
    ) -> SchedulingResult:
        """Schedule the request, through the admission queue when flow control is on; a
        refusal becomes a 429 with llm-d's reason header. ``pinned``: (response id, endpoint)
        when the request must go to the endpoint holding that response."""
        queue = policy.queue
        try:
            if queue is None:
                return self._schedule(ireq, policy.scheduler, pinned)
            started = self._clock()
            try:
                result, waited = await queue.admit(
                    ireq.priority, lambda: self._schedule(ireq, policy.scheduler, pinned)
                )
            except AdmissionDenied as exc:
                self._metrics.queue_waited(ireq.priority, exc.reason, self._clock() - started)
                raise
            if waited:
                self._metrics.queue_waited(ireq.priority, "admitted", waited)
            return result
        except AdmissionDenied as exc:
            self._metrics.shed(ireq.objective, exc.reason)
            logger.info(
                "request.shed",
                extra={
                    "request_id": ireq.request_id,
                    "objective": ireq.objective,
                    "reason": exc.reason,
                },
            )
            raise SheddedError(
                str(exc),
                code=exc.reason.replace("-", "_"),
                headers={
                    "x-llm-d-request-dropped-reason": exc.reason,
                    "retry-after": str(policy.slo.retry_after_s),
                },
            ) from exc

    def _schedule(
        self,
        ireq: InferenceRequest,
        scheduler: Scheduler,
        pinned: tuple[str, str] | None = None,
    ) -> SchedulingResult:
        now = self._clock()
        if pinned is not None:
            response_id, endpoint = pinned
            if not self._store.serves(endpoint, ireq.model) and ireq.model not in (
                self._store.models()
            ):
                # A model no pod serves is a 404 here too (and no label of a made-up name).
                raise _model_not_found(ireq.model)
            only = self._store.candidate(endpoint, now)
            if only is None:
                raise pod_gone(response_id, endpoint, param="previous_response_id")
            candidates: Sequence[Candidate] = [only]
        else:
            candidates = self._store.candidates(ireq.model, now)
        if not candidates:
            known = self._store.models()
            if known and ireq.model not in known:
                raise _model_not_found(ireq.model)
            raise NoEndpointError(f"no usable endpoint serves model {ireq.model!r}")
        try:
            result = scheduler.schedule(ireq, candidates)
        except NoCandidatesError as exc:
            raise NoEndpointError(str(exc)) from exc
        finally:
            self._metrics.scheduler_e2e.observe(self._clock() - now)
        return result

    async def _dispatch(
        self,
        request: web.Request,
        body: bytes,
        ireq: InferenceRequest,
        policy: RoutingPolicy,
        result: SchedulingResult,
        client_id: str,
        include_usage: bool,
        extra_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        targets = result.primary.targets
        attempts = min(len(targets), 1 + self._retries.max_retries)
        fwd_headers = upstream_headers(request.headers, client_id)
        session = self._session()
        with self._retries.begin(received_at=ireq.received_at, ttft_ms=ireq.slo.ttft_ms) as retries:
            for i in range(attempts):
                if i:
                    result = replace(result, primary=replace(result.primary, targets=targets[i:]))
                attempt = self._begin(ireq, policy, result, include_usage)
                endpoint = attempt.candidate.endpoint
                last = i + 1 == attempts
                try:
                    upstream, head, fault = await self._open(
                        session, f"{endpoint.url}{request.path}", body, fwd_headers, attempt
                    )
                except asyncio.CancelledError:
                    attempt.outcome = Outcome.CLIENT_DISCONNECTED
                    self._end(ireq, attempt)
                    raise
                except Exception as exc:
                    fault = exception_fault(exc)
                    if fault is None:
                        self._end(ireq, attempt)
                        raise
                    detail = describe_error(exc)
                    delay_s = self._failed(attempt, fault, detail, client_id, retries, last)
                    self._end(ireq, attempt)
                    if delay_s is None:
                        raise fault.error(endpoint.name, detail) from exc
                    await asyncio.sleep(delay_s)
                    continue
                if fault is not None:
                    detail = f"HTTP {upstream.status}"
                    delay_s = self._failed(attempt, fault, detail, client_id, retries, last)
                    if delay_s is not None:
                        upstream.release()  # the answer is dropped: the next endpoint's counts
                        self._end(ireq, attempt)
                        await asyncio.sleep(delay_s)
                        continue
                return await self._relay(
                    request, ireq, attempt, upstream, head, client_id, extra_headers
                )
        raise AssertionError("unreachable: the loop returns or raises")

    async def _open(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        headers: CIMultiDict[str],
        attempt: _Attempt,
    ) -> tuple[aiohttp.ClientResponse, bytes | None, Fault | None]:
        """Send the request and wait for what must arrive before any byte goes to the client:
        the answer's head, then a stream's first chunk or a whole body. Returns the answer,
        those bytes and the fault its status shows; an answer with a fault is returned unread
        (it may be dropped for a retry). Raises what the connection raised."""
        upstream = await session.post(url, data=body, headers=headers)
        attempt.status = upstream.status
        fault = status_fault(upstream.status)
        if fault is not None:
            return upstream, None, fault
        try:
            if upstream.content_type == _SSE_CONTENT_TYPE:
                head = await upstream.content.readany()
                attempt.first_chunk_at = self._clock()
            else:
                head = await upstream.read()
        except BaseException:
            upstream.close()
            raise
        return upstream, head, None

    def _failed(
        self,
        attempt: _Attempt,
        fault: Fault,
        detail: str,
        client_id: str,
        retries: RequestRetries,
        last: bool,
    ) -> float | None:
        """An attempt's fault before any byte was relayed: the seconds to wait before trying
        the next target, or ``None`` when this attempt's failure is the answer."""
        attempt.outcome = fault.outcome
        attempt.faulted = True
        return self._faults.before_relay(
            attempt.candidate.name,
            fault,
            request_id=client_id,
            detail=detail,
            retries=retries,
            last=last,
        )

    # -- bookkeeping ----------------------------------------------------------------------
    def _begin(
        self,
        ireq: InferenceRequest,
        policy: RoutingPolicy,
        result: SchedulingResult,
        expect_usage: bool,
    ) -> _Attempt:
        target = result.target
        match = target.attributes.get(PREFIX_MATCH)
        uncached = match.uncached_tokens(ireq.prompt_len) if match else ireq.prompt_len
        self._store.inflight.dispatched(
            ireq.request_id,
            target.name,
            uncached,
            ireq.sequences,
            stream=ireq.stream,
            now=self._clock(),
        )
        policy.scheduler.pre_request(ireq, result)
        return _Attempt(
            candidate=target,
            policy=policy,
            dispatched_at=self._clock(),
            scanner=(
                ResponsesScanner()
                if ireq.api is Api.RESPONSES
                else SseScanner(expect_usage=expect_usage)
            ),
        )

    def _first_token(self, ireq: InferenceRequest, attempt: _Attempt, now: float) -> None:
        self._store.inflight.first_token(ireq.request_id)
        self._learn_response(attempt)
        for observer in attempt.policy.observers:
            observer.on_first_token(ireq, attempt.candidate.name, now)

    def _learn_response(self, attempt: _Attempt) -> None:
        """Remember which endpoint produced a Responses API response, once its id is known
        (a stream's ``response.created`` precedes its first token)."""
        response_id = attempt.scanner.response_id
        if response_id is not None and not attempt.response_learned and attempt.status < 400:
            attempt.response_learned = True
            self._response_pods.remember(response_id, attempt.candidate.name)

    def _end(self, ireq: InferenceRequest, attempt: _Attempt) -> None:
        if attempt.ended:
            return
        attempt.ended = True
        self._learn_response(attempt)
        self._store.inflight.finished(ireq.request_id)
        if attempt.policy.queue is not None:
            attempt.policy.queue.room_freed()
        scanner = attempt.scanner
        prediction = attempt.candidate.attributes.get(PREDICTION)
        record = RequestRecord(
            request_id=ireq.request_id,
            model=ireq.model,
            endpoint=attempt.candidate.name,
            stream=ireq.stream,
            outcome=attempt.outcome,
            status=attempt.status,
            prompt_tokens=ireq.prompt_len,
            dispatched_at=attempt.dispatched_at,
            ended_at=self._clock(),
            first_token_at=scanner.first_token_at,
            completion_tokens=scanner.completion_tokens,
            cached_tokens=scanner.cached_tokens,
            predicted_ttft_s=None if prediction is None else prediction.ttft_s,
            predicted_tpot_s=None if prediction is None else prediction.tpot_s,
            sequences=ireq.sequences,
        )
        for observer in attempt.policy.observers:
            observer.on_end(ireq, record)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request.done",
                extra={
                    "request_id": ireq.request_id,
                    "endpoint": record.endpoint,
                    "outcome": record.outcome.value,
                    "status": record.status,
                    "ttft_s": record.ttft_s,
                    "tpot_s": record.tpot_s,
                    "e2e_s": record.e2e_s,
                    "prompt_tokens": record.prompt_tokens,
                    "completion_tokens": record.completion_tokens,
                },
            )

    # -- relaying ---------------------------------------------------------------------------
    async def _relay(
        self,
        request: web.Request,
        ireq: InferenceRequest,
        attempt: _Attempt,
        upstream: aiohttp.ClientResponse,
        head: bytes | None,
        client_id: str,
        extra_headers: dict[str, str] | None,
    ) -> web.StreamResponse:
        """Relay the answer; ``head``: its first chunk (a stream) or whole body, already read
        (``None``: an error answer, read here)."""
        headers = downstream_headers(upstream.headers, attempt.candidate.name, client_id)
        if extra_headers:
            headers.update(extra_headers)
        try:
            if upstream.content_type == _SSE_CONTENT_TYPE:
                return await self._relay_stream(
                    request, ireq, attempt, upstream, headers, head, client_id
                )
            return await self._relay_body(ireq, attempt, upstream, headers, head, client_id)
        finally:
            upstream.close()
            self._end(ireq, attempt)
            if not attempt.faulted and attempt.outcome is not Outcome.CLIENT_DISCONNECTED:
                self._faults.answered(attempt.candidate.name)

    async def _relay_body(
        self,
        ireq: InferenceRequest,
        attempt: _Attempt,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        body: bytes | None,
        client_id: str,
    ) -> web.Response:
        if body is None:
            try:
                body = await upstream.read()
            except asyncio.CancelledError:
                attempt.outcome = Outcome.CLIENT_DISCONNECTED
                raise
            except Exception as exc:
                fault = exception_fault(exc)
                if fault is None:
                    raise
                detail = describe_error(exc)
                self._fault(attempt, fault, detail, client_id, ANSWER)
                raise fault.error(attempt.candidate.name, detail) from exc
        if upstream.status < 400:
            if ireq.api.generates:
                scan_json_body(body, attempt.scanner)
                self._learn_response(attempt)
            else:
                scan_usage_only(body, attempt.scanner)
            attempt.outcome = Outcome.SUCCESS
        return web.Response(status=upstream.status, body=body, headers=headers)

    async def _relay_stream(
        self,
        request: web.Request,
        ireq: InferenceRequest,
        attempt: _Attempt,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        first: bytes | None,
        client_id: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=headers)
        scanner, clock, content = attempt.scanner, self._clock, upstream.content
        relayed = self._store.inflight.chunk  # times the endpoint's engine steps
        pending = first
        try:
            await response.prepare(request)
            while True:
                if pending is not None:
                    chunk, now, pending = pending, attempt.first_chunk_at, None
                else:
                    try:
                        chunk = await content.readany()
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        # Bytes may have reached the client: no retry, a well-formed end.
                        fault = exception_fault(exc) or Fault.PROTOCOL
                        self._fault(attempt, fault, describe_error(exc), client_id, CUT)
                        await _end_with_error(response, fault, exc, mid_event=scanner.mid_event)
                        return response
                    now = clock()
                if not chunk:
                    await response.write_eof()
                    break
                tokens = scanner.token_events
                if scanner.feed(chunk, now):
                    self._first_token(ireq, attempt, now)
                if scanner.token_events != tokens:
                    # Only chunks that complete a token event mark an engine step: not half an
                    # event, not the usage event or [DONE] that follow the last token.
                    relayed(ireq.request_id, now)
                if content.at_eof():
                    # The last bytes and the end of the stream leave in one write.
                    await response.write_eof(chunk)
                    break
                await response.write(chunk)
        except ConnectionResetError:
            attempt.outcome = Outcome.CLIENT_DISCONNECTED
            return response
        except asyncio.CancelledError:
            attempt.outcome = Outcome.CLIENT_DISCONNECTED
            raise
        attempt.outcome = Outcome.SUCCESS if upstream.status < 400 else Outcome.UPSTREAM_ERROR
        return response

    def _fault(
        self, attempt: _Attempt, fault: Fault, detail: str, client_id: str, action: str
    ) -> None:
        attempt.outcome = fault.outcome
        attempt.faulted = True
        self._faults.failed(
            attempt.candidate.name, fault, request_id=client_id, detail=detail, action=action
        )


async def _end_with_error(
    response: web.StreamResponse, fault: Fault, exc: BaseException, *, mid_event: bool
) -> None:
    """Tell a streaming client why its stream ends early, as vLLM does: an SSE error event.
    After a partial event, a blank line first, so that the error is an event of its own."""
    if fault is Fault.TIMEOUT:
        message, code = "the model server stopped sending tokens", UpstreamTimeoutError.default_code
    else:
        message = f"the model server broke the stream: {describe_error(exc)}"
        code = "upstream_stream_error"
    event = b"data: " + error_body(message, UpstreamError.type, code) + b"\n\n"
    try:
        await response.write((b"\n\n" + event) if mid_event else event)
        await response.write_eof()
    except ConnectionResetError:
        pass


def _model_not_found(model: str) -> NotFoundError:
    return NotFoundError(
        f"The model `{model}` does not exist.", code="model_not_found", param="model"
    )
