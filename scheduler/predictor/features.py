"""Features of one (request, endpoint) pair, captured once at scheduling time.

The same row serves the prediction made before the pick and, for the chosen endpoint, the
training sample recorded when the request's latency is known: prediction and training see
identical inputs (llm-d snapshots its in-flight load for the same reason).

Columns (llm-d's schema, plus what measurably helps here):

======================  ==========================================================================
``kv_usage``            scraped KV-cache usage 0..1 (``-1`` when the endpoint's metrics are unknown)
``waiting``             scraped waiting-queue length (``-1`` unknown)
``running``             scraped running requests (``-1`` unknown)
``inflight_requests``   requests this gateway dispatched there and has not seen finish, in
                        sequences (one of ``n`` > 1 or a batch counts as several), plus this
                        request's own sequences beyond its first
``inflight_prefill``    uncached prompt tokens dispatched there still waiting for a first token
``prompt_tokens``       the request's prompt length
``prefix_match``        fraction of the prompt's blocks the endpoint likely holds in its cache
``uncached_tokens``     prompt tokens the endpoint would have to prefill for this request
``max_tokens``          the request's ``max_tokens`` (``-1`` when absent); used by the e2e model
``prefill_wait``        how long the endpoint has been working on the oldest streamed request
                        this gateway sent there that still waits for its first token, in
                        seconds divided by the endpoint's learned latency factor (0 when none
                        waits); see below
``step_phase``          seconds since the last chunk relayed from the endpoint: how far its
                        engine step in progress has got (``-1`` when not observable: no stream
                        relaying chunks from there)
``step_interval``       the endpoint's smoothed engine-step duration, in seconds (``-1`` unknown)
======================  ==========================================================================

Both step columns are divided by the endpoint's latency factor like ``prefill_wait``, and come
from the gateway's observation of the chunks it relays (``Candidate.steps``,
``scheduler.datalayer.inflight``): a model server sends every running stream one chunk per
engine step. A request that arrives mid-step waits for the step in progress to end before the
engine admits it; for a short prompt that wait is a large part of its TTFT.

``prefill_wait`` is the predictor's own bookkeeping (``LatencyPredictor.feature_rows`` fills it):
``inflight_prefill`` says how much prompt work is queued ahead, but not how far the endpoint has
got with it; the age of the oldest request still without a first token does. The age counts
from the later of that request's dispatch and the first token of the request ahead of it (prefill
is in arrival order: the one behind gets the prompt work from then on). Dividing by the
endpoint's latency factor (``exp`` of its TTFT offset, 1 before there is a model) turns the age
into work done at pool-average speed, comparable across fast and slow endpoints. Measured on the
simulated fleet (``docs/predictor.md``), it is the feature that most reduces TTFT error under load.

Two more columns are derived from a row when a model is applied (``derived_columns``; see
``offsets.py`` for how the rate is learned): ``prefill_remaining``, the prompt tokens queued
ahead that are likely still to prefill, ``max(0, inflight_prefill - rate * prefill_wait)``, and
``prefill_before_first_token``, that plus this request's ``uncached_tokens``.

Endpoint identity is not a column: pods differ in speed by a factor that multiplies every
latency, which the model learns as a per-endpoint offset in log space (see ``model.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    "prefill_wait",
    "step_phase",
    "step_interval",
)
N_FEATURES = len(FEATURES)
(
    KV,
    WAITING,
    RUNNING,
    INFLIGHT,
    INFLIGHT_PREFILL,
    PROMPT,
    PREFIX,
    UNCACHED,
    MAX_TOKENS,
    PREFILL_WAIT,
    STEP_PHASE,
    STEP_INTERVAL,
) = range(N_FEATURES)

DERIVED: tuple[str, ...] = ("prefill_remaining", "prefill_before_first_token")

UNKNOWN = -1.0

ABSENT: tuple[float, ...] = (*([0.0] * (N_FEATURES - 2)), UNKNOWN, UNKNOWN)
"""Per column, its value in a row recorded before the column existed (a window saved by an
older version): ``prefill_wait`` 0 (as when nothing waits), the step columns unknown."""


def feature_rows(
    request: InferenceRequest,
    candidates: Sequence[Candidate],
    prefill_wait: Sequence[float] | None = None,
    *,
    now: float | None = None,
    speed: Mapping[str, float] | None = None,
) -> np.ndarray:
    """One float64 row per candidate, in candidate order (``prefill_wait`` 0 when not given).

    The step columns need ``now``, the time the rows describe (unknown without it); they are
    in seconds times ``speed[endpoint]`` (pool-average seconds; 1 for an endpoint not in it)."""
    prompt = request.prompt_len
    speed_of = (speed or {}).get
    max_tokens = UNKNOWN if request.max_tokens is None else float(request.max_tokens)
    # One flat list and one conversion: per-candidate work is what costs at 256 endpoints
    # (see loadtest/bench_prediction_cost.py); the prefix match is read field by field for
    # the same reason (its properties are method calls).
    flat: list[float] = []
    extend = flat.extend
    for c in candidates:
        m = c.metrics
        match = c.attributes.get(PREFIX_MATCH)
        load = c.inflight
        if match is None:
            fraction, uncached = 0.0, prompt
        else:
            total = match.total_blocks
            fraction = match.matched_blocks / total if total else 0.0
            uncached = prompt - match.matched_blocks * match.block_size
            if uncached < 0:
                uncached = 0
        if m is None:
            extend((UNKNOWN, UNKNOWN, UNKNOWN))
        else:
            extend((m.kv_usage, m.waiting, m.running))
        extend((load.requests, load.prefill_tokens, prompt, fraction, uncached, max_tokens, 0.0))
        steps = c.steps
        if steps is None or now is None:
            extend((UNKNOWN, UNKNOWN))
        else:
            f = speed_of(c.endpoint.name, 1.0)
            extend(((now - steps.last_chunk_at) * f, steps.interval_s * f))
    out = np.array(flat, dtype=np.float64).reshape(len(candidates), N_FEATURES)
    own = request.sequences - 1  # sequences decoding beside this request's first
    if own:
        out[:, INFLIGHT] += own
    if prefill_wait is not None:
        out[:, PREFILL_WAIT] = prefill_wait
    return out


def derived_columns(
    X: np.ndarray, prefill_rate: float, out: np.ndarray | None = None
) -> np.ndarray:
    """The ``DERIVED`` columns of rows ``X``, for prompt work done at ``prefill_rate`` tokens per
    second (at pool-average speed) since the oldest request ahead was dispatched; written into
    ``out`` (rows x 2) when given."""
    if out is None:
        out = np.empty((len(X), len(DERIVED)))
    remaining = out[:, 0]
    np.multiply(X[:, PREFILL_WAIT], -prefill_rate, out=remaining)
    remaining += X[:, INFLIGHT_PREFILL]
    np.maximum(remaining, 0.0, out=remaining)
    np.add(remaining, X[:, UNCACHED], out=out[:, 1])
    return out
