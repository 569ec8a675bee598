"""Features of one (request, endpoint) pair, captured once at scheduling time.

The same row serves the prediction made before the pick and, for the chosen endpoint, the
training sample recorded when the request's latency is known: prediction and training see
identical inputs (llm-d snapshots its in-flight load for the same reason).

Columns (llm-d's schema, plus what measurably helps here):

======================  ==========================================================================
``kv_usage``            scraped KV-cache usage 0..1 (``-1`` when the endpoint's metrics are unknown)
``waiting``             scraped waiting-queue length (``-1`` unknown)
``running``             scraped running requests (``-1`` unknown)
``inflight_requests``   requests this gateway dispatched there and has not seen finish
``inflight_prefill``    uncached prompt tokens dispatched there still waiting for a first token
``prompt_tokens``       the request's prompt length
``prefix_match``        fraction of the prompt's blocks the endpoint likely holds in its cache
``uncached_tokens``     prompt tokens the endpoint would have to prefill for this request
``max_tokens``          the request's ``max_tokens`` (``-1`` when absent); used by the e2e model
======================  ==========================================================================

Endpoint identity is not a column: pods differ in speed by a factor that multiplies every
latency, which the model learns as a per-endpoint offset in log space (see ``model.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scheduler.framework.attributes import PREFIX_MATCH
from scheduler.framework.types import Candidate, InferenceRequest

FEATURES: tuple[str, ...] = (
    "kv_usage",
    "waiting",
    "running",
    "inflight_requests",
    "inflight_prefill",
    "prompt_tokens",
    "prefix_match",
    "uncached_tokens",
    "max_tokens",
)
N_FEATURES = len(FEATURES)
KV, WAITING, RUNNING, INFLIGHT, INFLIGHT_PREFILL, PROMPT, PREFIX, UNCACHED, MAX_TOKENS = range(
    N_FEATURES
)

UNKNOWN = -1.0


def feature_rows(request: InferenceRequest, candidates: Sequence[Candidate]) -> np.ndarray:
    """One float64 row per candidate, in candidate order."""
    prompt = request.prompt_len
    max_tokens = UNKNOWN if request.max_tokens is None else float(request.max_tokens)
    rows = []
    for c in candidates:
        m = c.metrics
        match = c.attributes.get(PREFIX_MATCH)
        if match is None:
            fraction, uncached = 0.0, prompt
        else:
            fraction, uncached = match.fraction, match.uncached_tokens(prompt)
        load = c.inflight
        if m is None:
            kv = waiting = running = UNKNOWN
        else:
            kv, waiting, running = m.kv_usage, m.waiting, m.running
        rows.append(
            (
                kv,
                waiting,
                running,
                load.requests,
                load.prefill_tokens,
                prompt,
                fraction,
                uncached,
                max_tokens,
            )
        )
    return np.array(rows, dtype=np.float64)
