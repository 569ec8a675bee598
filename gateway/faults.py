"""What can go wrong talking to an endpoint, and what the gateway does about each: one table.

=========  ==================================================  =======  ======  ============
fault      when                                                retried  counts  client gets
=========  ==================================================  =======  ======  ============
connect    connection refused, unreachable, connect timeout    yes      yes     502
reset      connection closed or reset before the answer        yes      yes     502
protocol   an answer that is not valid HTTP                    yes      yes     502
timeout    silent for ``upstream.read_idle_timeout_s``         no       yes     504
5xx        a 5xx answer other than 503                         yes      yes     the answer
busy       429 or 503: the endpoint is alive but full          yes      no      the answer
=========  ==================================================  =======  ======  ============

*Retried*: on the next endpoint the scheduler ranked, only while no byte has reached the
client, within the bounds of :mod:`gateway.retries`; the last attempt's failure is what the
client gets. A timeout is not retried: the endpoint may be working on a long prompt, and the
client has waited that long already. *Counts*: toward the endpoint's ejection
(:mod:`gateway.backends.outliers`); a connection refused also marks it down until its next
good scrape. Any other answer (2xx, 3xx, another 4xx: the request's own fault) shows the
endpoint works. Once bytes reached the client, a reset or a silence cuts the stream (an SSE
error event, then the end) and counts against the endpoint; it is never retried.

Every fault is counted in ``slogate_upstream_errors_total{endpoint,reason}`` and logged
(``upstream.failed``, WARNING; INFO for busy) with what was done about it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

import aiohttp

from gateway.backends.outliers import OutlierDetector
from gateway.errors import UpstreamError, UpstreamTimeoutError
from gateway.retries import RequestRetries
from gateway.telemetry import GatewayMetrics
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.plugins import Outcome

logger = logging.getLogger(__name__)


class Fault(enum.Enum):
    CONNECT = "connect"
    RESET = "reset"
    PROTOCOL = "protocol"
    TIMEOUT = "timeout"
    SERVER_ERROR = "5xx"
    BUSY = "busy"

    @property
    def retried(self) -> bool:
        return self is not Fault.TIMEOUT

    @property
    def counts(self) -> bool:
        """Counts toward the endpoint's ejection."""
        return self is not Fault.BUSY

    @property
    def outcome(self) -> Outcome:
        """The outcome of an attempt that ended in this fault."""
        if self is Fault.CONNECT:
            return Outcome.CONNECT_ERROR
        if self is Fault.TIMEOUT:
            return Outcome.UPSTREAM_TIMEOUT
        return Outcome.UPSTREAM_ERROR

    def error(self, endpoint: str, detail: str) -> UpstreamError:
        """What the client gets when this fault (of a connection, not an answer) ends the
        request before any byte was relayed."""
        if self is Fault.CONNECT:
            return UpstreamError(f"could not connect to endpoint {endpoint}")
        if self is Fault.TIMEOUT:
            return UpstreamTimeoutError(f"endpoint {endpoint} did not answer in time")
        if self is Fault.RESET:
            return UpstreamError(f"endpoint {endpoint} closed the connection: {detail}")
        return UpstreamError(f"endpoint {endpoint} failed: {detail}")


BUSY_STATUSES = frozenset({429, 503})


def status_fault(status: int) -> Fault | None:
    """The fault an answer's status shows; ``None`` for an endpoint that works."""
    if status in BUSY_STATUSES:
        return Fault.BUSY
    if status >= 500:
        return Fault.SERVER_ERROR
    return None


def exception_fault(exc: BaseException) -> Fault | None:
    """The fault an exception of the upstream client shows; ``None`` for anything else (a bug:
    let it propagate)."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Fault.CONNECT
    if isinstance(exc, TimeoutError):
        return Fault.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return Fault.RESET
    if isinstance(exc, aiohttp.ClientError):
        return Fault.PROTOCOL
    return None


def describe(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


RETRY = "retry"
ANSWER = "answer"
CUT = "cut"
"""What was done about a fault (the ``action`` of its log line): tried on another endpoint,
answered to the client (an error, or the endpoint's own answer), or the stream cut."""


class FaultReporter:
    """The one place an endpoint's failures and signs of life are counted, logged and acted on,
    and where a failure before the first relayed byte becomes a retry or the answer; shared by
    the director and the pass-through routes."""

    def __init__(
        self,
        *,
        store: EndpointStore,
        outliers: OutlierDetector,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._outliers = outliers
        self._metrics = metrics
        self._clock = clock

    def before_relay(
        self,
        endpoint: str,
        fault: Fault,
        *,
        request_id: str,
        detail: str,
        retries: RequestRetries,
        last: bool,
    ) -> float | None:
        """A fault before any byte reached the client: the seconds to wait before trying the
        next target, or ``None`` when this failure is the answer (not retryable, no target
        left, or the retry denied: counted by why)."""
        delay_s: float | None = None
        if fault.retried and not last:
            decision = retries.decide()
            if decision.denied is None:
                delay_s = decision.delay_s
                self._metrics.retries.labels(fault.value).inc()
            else:
                self._metrics.retries_denied.labels(decision.denied).inc()
        action = ANSWER if delay_s is None else RETRY
        self.failed(endpoint, fault, request_id=request_id, detail=detail, action=action)
        return delay_s

    def failed(
        self, endpoint: str, fault: Fault, *, request_id: str, detail: str, action: str
    ) -> None:
        if endpoint in self._store:
            # An endpoint that already left the pool (a deleted pod's streams breaking) is
            # only logged: counting it would bring back the series its departure removed.
            if fault is Fault.CONNECT:
                self._store.mark_down(endpoint, self._clock())
            self._metrics.upstream_errors.labels(endpoint, fault.value).inc()
            if fault.counts:
                self._outliers.failed(endpoint, fault.value)
        log = logger.info if fault is Fault.BUSY else logger.warning
        log(
            "upstream.failed",
            extra={
                "request_id": request_id,
                "endpoint": endpoint,
                "reason": fault.value,
                "error": detail,
                "action": action,
            },
        )

    def answered(self, endpoint: str) -> None:
        """The endpoint answered and the answer was relayed whole."""
        self._outliers.succeeded(endpoint)
