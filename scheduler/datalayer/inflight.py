"""Gateway-side in-flight accounting per endpoint.

Counts what the gateway dispatched and has not seen finish, which is fresher than any scrape:
it changes the instant a request is dispatched. ``prefill_tokens`` holds the uncached prompt
tokens of requests that have not produced a first token yet (they are still in prefill);
they are released at the first token, or at the end for requests that never stream one.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.framework.types import NO_INFLIGHT, InflightLoad


@dataclass(slots=True)
class _Entry:
    endpoint: str
    prefill_tokens: int


class InflightTracker:
    __slots__ = ("_by_request", "_loads")

    def __init__(self) -> None:
        self._by_request: dict[str, _Entry] = {}
        self._loads: dict[str, InflightLoad] = {}

    def load(self, endpoint: str) -> InflightLoad:
        return self._loads.get(endpoint, NO_INFLIGHT)

    def dispatched(self, request_id: str, endpoint: str, prefill_tokens: int) -> None:
        if request_id in self._by_request:
            raise ValueError(f"request {request_id!r} is already in flight")
        self._by_request[request_id] = _Entry(endpoint, prefill_tokens)
        cur = self.load(endpoint)
        self._loads[endpoint] = InflightLoad(cur.requests + 1, cur.prefill_tokens + prefill_tokens)

    def first_token(self, request_id: str) -> None:
        entry = self._by_request.get(request_id)
        if entry is None or entry.prefill_tokens == 0:
            return
        cur = self.load(entry.endpoint)
        self._loads[entry.endpoint] = InflightLoad(
            cur.requests, cur.prefill_tokens - entry.prefill_tokens
        )
        entry.prefill_tokens = 0

    def finished(self, request_id: str) -> None:
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return
        cur = self.load(entry.endpoint)
        self._loads[entry.endpoint] = InflightLoad(
            cur.requests - 1, cur.prefill_tokens - entry.prefill_tokens
        )

    def __len__(self) -> int:
        return len(self._by_request)
