"""The cold-start estimate: a latency for every candidate before any model is trusted.

Routing by prediction needs a trained model, and a model needs traffic. Until one has beaten the
heuristic on held-out requests, the predictor still gives every candidate a TTFT, from what the
gateway knows exactly and at once rather than from scraped metrics:

    work = 1 + inflight_requests + (inflight_prefill + uncached_tokens) / typical_prompt

— the requests it already has there (each one contends for the same engine), plus the prompt
work queued ahead of this request and its own uncached prompt, both in units of a typical prompt
(the recent mean prompt length, so the scale fits any workload). It is least-request on the
gateway's own in-flight counts, made prompt-size and prefix-cache aware. The estimate is
``work x seconds-per-unit`` of that endpoint, learned from its own first tokens
(``drift.LiveDrift`` over ``log(ttft / work)``): a pod that answers slower than its peers costs
more per unit of work from its first answers on, and never looks like the best choice because
nothing is known about it (an endpoint without samples gets the pool's median).
"""

from __future__ import annotations

import numpy as np

from scheduler.predictor.features import INFLIGHT, INFLIGHT_PREFILL, UNCACHED

DEFAULT_SECONDS_PER_UNIT = 0.05
"""Before any endpoint has answered: only the order matters, any positive value will do."""


def work(rows: np.ndarray, typical_prompt: float) -> np.ndarray:
    """Per row (candidate), the work ahead of and including this request, in request units."""
    out: np.ndarray = rows[:, INFLIGHT_PREFILL] + rows[:, UNCACHED]
    out /= max(typical_prompt, 1.0)
    out += rows[:, INFLIGHT]
    out += 1.0
    return out


def work_of(row: np.ndarray, typical_prompt: float) -> float:
    """:func:`work` of one row."""
    return float(
        1.0 + row[INFLIGHT] + (row[INFLIGHT_PREFILL] + row[UNCACHED]) / max(typical_prompt, 1.0)
    )
