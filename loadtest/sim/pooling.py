"""vLLM's score, rerank and classify routes: parsing, the numbers, and the response bodies.

vLLM serves them (with ``/pooling`` and embeddings) for pooling models. The sim plays a
cross-encoder reranker that also has a classification head:

- **A pair is one prompt.** ``/score`` pairs ``text_1`` with ``text_2`` (1:1, 1:N or N:N, as
  vLLM allows), ``/rerank`` pairs the ``query`` with each document, and a cross-encoder reads
  a pair as one sequence: the first text's tokens, then the second's. So a query shared by
  many documents is a shared prefix, cached like any other, and each pair is one prefill-only
  request on the engine.
- **Scores** are deterministic in the pair's tokens: the sigmoid of a Gaussian draw seeded by
  them, in (0, 1), like a reranker's relevance. They mean nothing; the same pair always gets
  the same score on every pod.
- **Classes.** ``/classify`` takes ``input`` like embeddings; each input gets ``probs`` over
  :data:`NUM_CLASSES` classes (the softmax of seeded Gaussian logits) and the label of the
  likeliest, named as Hugging Face names classes of a model without ``id2label``
  (``LABEL_0``, ``LABEL_1``).

``/pooling`` takes and answers what embeddings do (:mod:`loadtest.sim.embeddings`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from loadtest.sim.embeddings import parse_pooling_input, pooling_list_body
from loadtest.sim.protocol import Prompt, bad_request, load_object, optional_int, resolve_model

NUM_CLASSES = 2
_SCORE_SIGMA = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreRequest:
    """``/score``: the pairs to score, ``text_1`` already repeated for a 1:N request."""

    model: str
    pairs: list[tuple[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RerankRequest:
    """``/rerank``: the query, its documents, and how many results to return (all if 0)."""

    model: str
    query: str
    documents: list[str]
    top_n: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassifyRequest:
    """``/classify``: one prompt per input."""

    model: str
    inputs: list[Prompt]


def parse_score_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> ScoreRequest:
    fields = load_object(body)
    model = resolve_model(fields, served_model, adapters)
    texts_1 = _texts(fields.get("text_1"), "text_1")
    texts_2 = _texts(fields.get("text_2"), "text_2")
    # vLLM's checks and messages (score_utils._validate_score_input_lens).
    if len(texts_1) > 1 and len(texts_1) != len(texts_2):
        raise bad_request("Input lengths must be either 1:1, 1:N or N:N")
    if not texts_1:
        raise bad_request("At least one text element must be given")
    if not texts_2:
        raise bad_request("At least one text_pair element must be given")
    if len(texts_1) == 1:
        texts_1 = texts_1 * len(texts_2)
    return ScoreRequest(model=model, pairs=list(zip(texts_1, texts_2, strict=True)))


def parse_rerank_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> RerankRequest:
    fields = load_object(body)
    model = resolve_model(fields, served_model, adapters)
    query = fields.get("query")
    if not isinstance(query, str) or not query:
        raise bad_request("query must be a non-empty string", "query")
    documents = fields.get("documents")
    if not isinstance(documents, list):
        raise bad_request("documents must be a list of strings", "documents")
    documents = _texts(documents, "documents")
    if not documents:
        raise bad_request("At least one text_pair element must be given")
    top_n = optional_int(fields, "top_n", minimum=None)
    return RerankRequest(model=model, query=query, documents=documents, top_n=top_n or 0)


def parse_classify_request(
    body: bytes, served_model: str, adapters: Collection[str] = ()
) -> ClassifyRequest:
    fields = load_object(body)
    model = resolve_model(fields, served_model, adapters)
    value = fields.get("input")
    if value == "":
        raise bad_request("Input cannot be empty for classification", "input")
    # vLLM answers an empty list with an empty list.
    inputs = [] if value == [] else parse_pooling_input(value)
    return ClassifyRequest(model=model, inputs=inputs)


def relevance_score(digest: int) -> float:
    """The score of a pair whose tokens hash to ``digest``, in (0, 1)."""
    return 1.0 / (1.0 + math.exp(-random.Random(digest).gauss(0.0, _SCORE_SIGMA)))


def class_probs(digest: int) -> list[float]:
    """The class probabilities of an input whose tokens hash to ``digest``."""
    rng = random.Random(digest)
    logits = [rng.gauss(0.0, _SCORE_SIGMA) for _ in range(NUM_CLASSES)]
    top = max(logits)
    weights = [math.exp(logit - top) for logit in logits]
    total = sum(weights)
    return [weight / total for weight in weights]


def score_body(
    *, response_id: str, model: str, scores: Sequence[float], prompt_tokens: int
) -> bytes:
    """vLLM's ``ScoreResponse``: one score per pair, in request order."""
    items = [
        {"index": index, "object": "score", "score": score} for index, score in enumerate(scores)
    ]
    return pooling_list_body(
        response_id=response_id, model=model, items=items, prompt_tokens=prompt_tokens
    )


def rerank_body(
    *,
    response_id: str,
    model: str,
    documents: Sequence[str],
    scores: Sequence[float],
    top_n: int,
    prompt_tokens: int,
) -> bytes:
    """vLLM's ``RerankResponse``: results by decreasing score, the best ``top_n`` if it is
    above 0, each with its document's index in the request; usage is just ``total_tokens``."""
    results = sorted(
        (
            {"index": index, "document": {"text": document}, "relevance_score": score}
            for index, (document, score) in enumerate(zip(documents, scores, strict=True))
        ),
        key=_relevance,
        reverse=True,
    )
    if 0 < top_n < len(results):
        results = results[:top_n]
    return orjson.dumps(
        {
            "id": response_id,
            "model": model,
            "usage": {"total_tokens": prompt_tokens},
            "results": results,
        }
    )


def classify_body(
    *, response_id: str, model: str, probs: Sequence[list[float]], prompt_tokens: int
) -> bytes:
    """vLLM's ``ClassificationResponse``: each input's probabilities and likeliest label."""
    items = [
        {
            "index": index,
            "label": f"LABEL_{max(range(len(values)), key=values.__getitem__)}",
            "probs": values,
            "num_classes": len(values),
        }
        for index, values in enumerate(probs)
    ]
    return pooling_list_body(
        response_id=response_id, model=model, items=items, prompt_tokens=prompt_tokens
    )


def _texts(value: object, name: str) -> list[str]:
    """A field that is a string or a list of strings, none of them empty (400 otherwise)."""
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        texts = list(value)
    else:
        raise bad_request(f"{name} must be a string or a list of strings", name)
    if "" in texts:
        raise bad_request(f"{name} must not contain empty strings", name)
    return texts


def _relevance(result: dict[str, Any]) -> float:
    score: float = result["relevance_score"]
    return score
