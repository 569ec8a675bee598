"""Prompts of pooling requests and of batched completions, as the gateway counts them.

A pooling request (embeddings, pooling, classify, score, rerank) is prompt work only: the
model server prefills every input and answers once. Its prompt, for counting and for the prefix
index, is all of its inputs one after the other, and its batch size is how many sequences the
server runs for it:

- ``/v1/embeddings``, ``/pooling``, ``/classify``: ``input`` as a string, strings, token ids or
  token-id lists (one sequence each); or, as vLLM also takes, chat ``messages`` (one sequence).
  A ``/pooling`` request with only ``data`` (vLLM's IO-processor plugins) has no prompt the
  gateway can count.
- ``/v1/score`` (``/score``): ``text_1`` and ``text_2`` (or ``data_1``/``data_2``,
  ``queries``/``documents``, or SGLang's ``query``/``items``), each a string, strings, or a
  multimodal ``{"content": [parts]}`` (token-id items are accepted and count as no text):
  one side of one item pairs with every item of the other, else item by item; each pair is a
  sequence (a cross-encoder reads both texts).
- ``/v1/rerank`` (``/rerank``, ``/v2/rerank``): ``query`` and ``documents`` (strings,
  ``{"text": ...}`` objects, or a multimodal ``{"content": [parts]}``): each (query, document)
  pair is a sequence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import BadRequestError
from gateway.request_fields import chat_messages, is_token_id, required, type_error
from gateway.tokenizer import chat_segments, message_text
from scheduler.framework.types import Api

Prompt = tuple[list[str], list[int] | None, int]
"""Text segments to tokenize, or token ids; and the number of sequences (the batch size)."""

_PROMPT_FORMS = (
    "a string, an array of strings, an array of token ids or an array of token-id arrays"
)
_SCORE_SIDES = (
    ("text_1", "text_2"),
    ("data_1", "data_2"),
    ("queries", "documents"),
    ("query", "items"),  # SGLang
)


def prompt_batch(prompt: Any, field: str) -> Prompt:
    """A completion ``prompt`` or an embedding ``input``, in OpenAI's four forms.

    A list of several strings (or id lists) is a batch: one request, prompt work the sum. Each
    string stays a segment of its own, so it is tokenized (and cached) alone.
    """
    if isinstance(prompt, str):
        return [prompt], None, 1
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt), None, len(prompt)
        if all(is_token_id(t) for t in prompt):
            return [], prompt, 1
        if all(isinstance(p, list) and p for p in prompt) and all(
            is_token_id(t) for p in prompt for t in p
        ):
            return [], [t for p in prompt for t in p], len(prompt)
    raise type_error(field, _PROMPT_FORMS)


def pooling_prompt(data: Mapping[str, Any], api: Api) -> Prompt:
    if api is Api.SCORE:
        return _score(data)
    if api is Api.RERANK:
        return _rerank(data)
    if data.get("input") is None and data.get("messages") is not None:
        tools = data.get("tools")
        return (
            chat_segments(chat_messages(data), tools if isinstance(tools, list) else None),
            None,
            1,
        )
    if api is Api.POOLING and data.get("input") is None and data.get("data") is not None:
        return [], None, 1
    return prompt_batch(required(data, "input"), "input")


def _texts(value: Any, field: str, *, ids: bool = True) -> list[str]:
    """One side of a score request (``ids``: token-id items allowed), or rerank documents:
    the items' texts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return _multimodal(value, field)
    if isinstance(value, list) and value:
        if ids and all(is_token_id(t) for t in value):
            return [""]  # one prompt as token ids (SGLang)
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                out.append(_text_of(item))
            elif ids and isinstance(item, list) and all(is_token_id(t) for t in item):
                out.append("")  # token ids: the server counts them
            else:
                raise type_error(f"{field}[{i}]", "a string or an object")
        return out
    raise type_error(field, "a string, a non-empty array of strings or a multimodal object")


def _multimodal(value: Mapping[str, Any], field: str) -> list[str]:
    """vLLM's ``ScoreMultiModalParam``: ``{"content": [parts]}``, one item per part."""
    content = value.get("content")
    if not isinstance(content, list):
        raise type_error(f"{field}.content", "an array of content parts")
    return [message_text([part]) for part in content]


def _text_of(item: Mapping[str, Any]) -> str:
    text = item.get("text")
    if isinstance(text, str):
        return text
    return message_text(item.get("content"))


def _score(data: Mapping[str, Any]) -> Prompt:
    first, second = next(
        (sides for sides in _SCORE_SIDES if data.get(sides[0]) is not None), _SCORE_SIDES[0]
    )
    left = _texts(required(data, first), first)
    right = _texts(required(data, second), second)
    if len(left) == 1:
        pairs = [(left[0], r) for r in right]
    elif len(right) == 1:
        pairs = [(text, right[0]) for text in left]
    else:
        pairs = list(zip(left, right, strict=False))  # unequal lengths: the server's 400
    return [t for pair in pairs for t in pair], None, max(len(pairs), 1)


def _rerank(data: Mapping[str, Any]) -> Prompt:
    query = required(data, "query")
    if isinstance(query, dict):
        query_text = "".join(_multimodal(query, "query"))
    elif isinstance(query, str):
        query_text = query
    else:
        raise type_error("query", "a string or a multimodal object")
    documents = required(data, "documents")
    if isinstance(documents, dict):
        texts = _multimodal(documents, "documents")
    elif isinstance(documents, list) and documents:
        texts = _texts(documents, "documents", ids=False)
    else:
        raise type_error("documents", "a non-empty array of documents or a multimodal object")
    if not texts:
        raise BadRequestError("'documents' must not be empty", param="documents")
    return [t for doc in texts for t in (query_text, doc)], None, len(texts)
