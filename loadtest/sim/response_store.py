"""The responses one sim produced, kept for ``GET /v1/responses/{id}`` and
``previous_response_id``.

vLLM keeps them in a dict that grows forever (``VLLM_ENABLE_RESPONSES_API_STORE``); a sim in
a long benchmark must not, so this store forgets the oldest response beyond ``max_entries``
or once the stored text passes ``max_chars``. A forgotten id gets the same 404 as an unknown
one. Each pod keeps its own: a follow-up routed to another pod fails, as it does on vLLM.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.tokenizer import message_text

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_CHARS = 64 << 20


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A finished response: its body as served, and the conversation that produced it."""

    body: bytes
    messages: Sequence[Mapping[str, Any]]
    output_text: str

    @property
    def size_chars(self) -> int:
        return (
            len(self.body)
            + len(self.output_text)
            + sum(len(message_text(message.get("content"))) for message in self.messages)
        )


class ResponseStore:
    """Responses by id, oldest forgotten first (by count and by size)."""

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_chars: int = DEFAULT_MAX_CHARS
    ) -> None:
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._entries: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        return None if entry is None else entry[0]

    def put(self, response_id: str, response: StoredResponse) -> None:
        size = response.size_chars
        old = self._entries.pop(response_id, None)
        if old is not None:
            self._chars -= old[1]
        self._entries[response_id] = (response, size)
        self._chars += size
        while self._entries and (
            len(self._entries) > self._max_entries or self._chars > self._max_chars
        ):
            _, (_, evicted_size) = self._entries.popitem(last=False)
            self._chars -= evicted_size
