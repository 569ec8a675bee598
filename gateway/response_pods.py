"""Which endpoint produced each recent Responses API response: ``previous_response_id`` stickiness.

vLLM keeps the responses it produced in its own memory: a follow-up naming one
(``previous_response_id``), and ``GET /v1/responses/{id}``, only work on that same pod. The
gateway learns each response's pod as the response passes through it (the id of a
non-streamed body, of a stream's ``response.created`` event) and keeps the most recent ones in
a bounded LRU (``server.max_response_ids``; 0 turns it off). One gateway's memory: several
gateway replicas each know only the responses they relayed.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.errors import NotFoundError


class ResponsePods:
    __slots__ = ("_pods", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._pods: OrderedDict[str, str] = OrderedDict()

    def remember(self, response_id: str, endpoint: str) -> None:
        if self.max_entries <= 0:
            return
        pods = self._pods
        pods[response_id] = endpoint
        pods.move_to_end(response_id)
        if len(pods) > self.max_entries:
            pods.popitem(last=False)

    def endpoint_of(self, response_id: str) -> str | None:
        """The endpoint that produced the response, if this gateway relayed it recently."""
        endpoint = self._pods.get(response_id)
        if endpoint is not None:
            self._pods.move_to_end(response_id)
        return endpoint

    def __len__(self) -> int:
        return len(self._pods)


def pod_gone(response_id: str, endpoint: str, *, param: str | None) -> NotFoundError:
    """The 404 for a response whose pod has left the pool or is down: its state is gone."""
    return NotFoundError(
        f"Response with id '{response_id}' was produced by endpoint {endpoint}, which is no "
        "longer available; the response and its conversation state are gone with it.",
        code="previous_response_not_found" if param else "response_not_found",
        param=param,
    )
