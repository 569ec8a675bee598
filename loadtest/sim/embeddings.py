"""``/v1/embeddings`` as vLLM serves it: parsing, the vectors, and the response body.

``input`` is a string, a list of strings, a list of token ids or a list of token-id lists;
each entry is one prompt, run on the engine as a prefill-only request (vLLM runs pooling
requests through the same scheduler), so an embedding costs prefill time, loads the pod and
shows in its metrics. The other pooling routes (:mod:`loadtest.sim.pooling`) take ``input``
the same way and check lengths the same way.

The vector of a prompt is deterministic in its token ids: a seeded Gaussian draw of
``EMBEDDING_DIM`` floats, cut to ``dimensions`` if asked (the model is treated as Matryoshka:
any size up to ``EMBEDDING_DIM``) and normalized to unit length, as vLLM normalizes. It means
nothing; it is stable, so a cache or a test can compare it. ``encoding_format: "base64"``
sends the little-endian float32 bytes in base64, as OpenAI does.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from loadtest.sim.protocol import (
    Prompt,
    bad_request,
    is_token_id,
    load_object,
    optional_int,
    resolve_model,
)

EMBEDDING_DIM = 1024
ENCODING_FORMATS = ("float", "base64")
_SEED_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingRequest:
    """One embeddings (or ``/pooling``) request: its prompts, as texts or token-id lists."""

    model: str
    inputs: list[Prompt]
    encoding_format: str
    dimensions: int


def parse_embedding_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> EmbeddingRequest:
    fields = load_object(body)
    model = resolve_model(fields, served_model, adapters)
    inputs = parse_pooling_input(fields.get("input"))
    encoding_format = fields.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise bad_request(
            f"encoding_format must be one of {', '.join(ENCODING_FORMATS)}", "encoding_format"
        )
    dimensions = optional_int(fields, "dimensions", minimum=1)
    if dimensions is not None and dimensions > EMBEDDING_DIM:
        raise bad_request(
            f"dimensions must be at most {EMBEDDING_DIM} for model {model!r}", "dimensions"
        )
    return EmbeddingRequest(
        model=model,
        inputs=inputs,
        encoding_format=encoding_format,
        dimensions=EMBEDDING_DIM if dimensions is None else dimensions,
    )


def parse_pooling_input(value: object) -> list[Prompt]:
    """A pooling request's ``input``, one prompt per entry: a string, a list of strings, a
    list of token ids (one prompt) or a list of token-id lists (400 otherwise)."""
    if isinstance(value, str):
        inputs: list[Prompt] = [value]
    elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        inputs = list(value)
    elif isinstance(value, list) and value and all(is_token_id(item) for item in value):
        inputs = [value]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(item, list) and item for item in value)
        and all(is_token_id(token) for item in value for token in item)
    ):
        inputs = list(value)
    else:
        raise bad_request(
            "input must be a string, a list of strings, a list of token ids or a list of "
            "non-empty lists of token ids",
            "input",
        )
    if "" in inputs:
        raise bad_request("input must not contain empty strings", "input")
    return inputs


def check_input_length(
    prompt_len: int,
    max_model_len: int,
    operation: str = "embedding generation",
    param: str | None = "input",
) -> None:
    """vLLM's 400 for a pooling input longer than the context (``operation`` is what vLLM
    names: ``embedding generation``, ``score`` or ``classification``)."""
    if prompt_len > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len} tokens in the input for {operation}. Please reduce the "
            "length of the input.",
            param,
        )


def embedding_vector(digest: int, dimensions: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The unit-length float32 vector of a prompt whose token ids hash to ``digest``."""
    rng = np.random.default_rng(digest & _SEED_MASK)
    vector = rng.standard_normal(EMBEDDING_DIM)[:dimensions]
    norm = float(np.linalg.norm(vector))
    return (vector / (norm if norm > 0 else 1.0)).astype(np.float32)


def encode_vector(
    vector: np.ndarray[Any, np.dtype[np.float32]], encoding_format: str
) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    values: list[float] = vector.tolist()
    return values


VECTOR_KINDS = {"embedding": "embedding", "pooling": "data"}
"""Per item ``object``, the field holding its vector: vLLM's ``EmbeddingResponse`` (``POST
/v1/embeddings``) and ``PoolingResponse`` (``POST /pooling``) differ only there."""


def vectors_body(
    *,
    kind: str,
    response_id: str,
    model: str,
    vectors: Sequence[np.ndarray[Any, np.dtype[np.float32]]],
    encoding_format: str,
    prompt_tokens: int,
) -> bytes:
    """The pooled vector of each input, as vLLM answers ``kind`` (a key of ``VECTOR_KINDS``)."""
    field = VECTOR_KINDS[kind]
    items = [
        {"index": index, "object": kind, field: encode_vector(vector, encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    return pooling_list_body(
        response_id=response_id, model=model, items=items, prompt_tokens=prompt_tokens
    )


def pooling_list_body(
    *, response_id: str, model: str, items: Sequence[dict[str, Any]], prompt_tokens: int
) -> bytes:
    """The list envelope vLLM's embeddings, pooling, score and classify answers share, with
    its ``UsageInfo``: prompt tokens only."""
    return orjson.dumps(
        {
            "id": response_id,
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": items,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )
