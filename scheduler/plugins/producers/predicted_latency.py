"""``predicted-latency-producer``: predict TTFT, TPOT and e2e latency on every candidate.

Once per request, builds one feature row per candidate (``scheduler.predictor.features``, with
the predictor's own ``prefill_wait`` column) and asks the in-process latency predictor for all
candidates in one batched call per target, for the targets this request needs (TTFT and TPOT
when streamed, TTFT and e2e when not); writes the ``PREDICTION`` attribute on each candidate.
When the predictor is not ready (no model yet, the model has not beaten the heuristic on
held-out requests, training keeps failing) it writes nothing and consumers fall back to their
heuristics.

It also turns requests into training samples: at dispatch it remembers the chosen endpoint's
feature row (the same row the prediction used), at the first token it records a TTFT sample
(streamed requests), at the end a TPOT sample (streamed) or an e2e sample (non-streamed).
Which target a request trains follows its own ``stream`` flag, so mixed streaming and
non-streaming traffic trains correctly (llm-d needs one global ``streamingMode`` for this).

Pooling requests (embeddings, rerank, score, classify, pooling: ``Api.generates`` false) have no
first token and no decoding: their latency is prefill, not a generation's TTFT or e2e. They
never train the model, and they are routed on the cold-start estimate (the in-flight work on
each candidate plus their own uncached prompt, at each endpoint's observed speed), never on
the model's generation predictions; the gateway keeps their latency in its own histogram.

Inputs: candidate metrics, in-flight load, ``PREFIX_MATCH`` (run the prefix producer first).
Output: ``PREDICTION`` per candidate.

Parameters (the predictor's own settings live in the ``predictor`` config section):

- ``routeBy`` (``auto``): what the predictions written for routing come from. ``auto``: the
  trained model once it orders held-out requests better than the cold-start estimate, the
  estimate until then; ``estimate``: always the cold-start estimate (with its live per-pod
  correction), the model still trained and reported; ``model``: the model as soon as one
  exists, whether or not it beat the estimate.
- ``tpotWhileEstimating`` (false): while TTFT comes from the estimate, predict TPOT (and e2e)
  with the model as soon as one exists. Latency objectives need a TPOT prediction; routing
  alone is better without (the estimate ranks pods on TTFT only).
- ``tpotStepFloor`` (0): a streamed request's predicted TPOT on an endpoint is at least this
  many times that endpoint's live engine-step interval, as the gateway times it from the
  streams it relays (0: off). The TPOT model learns from requests that end seconds after they
  were predicted and lags a batch that grows under rising load; the step interval does not.

Extension points: data producer, pre-request, response observer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import numpy as np

from scheduler.framework.attributes import PREDICTION
from scheduler.framework.params import Params
from scheduler.framework.plugins import PluginHandle, RequestRecord
from scheduler.framework.types import (
    AttrKey,
    Candidate,
    CycleState,
    InferenceRequest,
    SchedulingResult,
)
from scheduler.predictor.runtime import LatencyPredictor, shared_predictor

ROUTE_BY = ("auto", "estimate", "model")
FEATURE_ROWS: AttrKey[np.ndarray] = AttrKey("predicted-latency-feature-rows")


class PredictedLatencyProducer:
    TYPE: ClassVar[str] = "predicted-latency-producer"

    def __init__(
        self,
        name: str,
        predictor: LatencyPredictor,
        *,
        route_by: str = "auto",
        tpot_while_estimating: bool = False,
        tpot_step_floor: float = 0.0,
    ) -> None:
        self.name = name
        self.predictor = predictor
        self.route_by = route_by
        self.tpot_while_estimating = tpot_while_estimating
        self.tpot_step_floor = tpot_step_floor
        predictor.enabled = True

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Self:
        route_by = params.str("routeBy", "auto", choices=ROUTE_BY)
        tpot = params.bool("tpotWhileEstimating", False)
        floor = params.float("tpotStepFloor", 0.0, ge=0.0)
        params.done()
        return cls(
            name,
            shared_predictor(handle.services, handle.clock, handle.rng),
            route_by=route_by,
            tpot_while_estimating=tpot,
            tpot_step_floor=floor,
        )

    def produce(
        self, state: CycleState, request: InferenceRequest, candidates: Sequence[Candidate]
    ) -> None:
        rows = self.predictor.feature_rows(request, candidates)
        if not request.api.generates:
            for candidate, estimated in zip(
                candidates, self.predictor.estimate(rows, candidates), strict=True
            ):
                candidate.attributes.put(PREDICTION, estimated)
            return
        state.put(FEATURE_ROWS, rows)
        predictions = self.predictor.predict(
            rows,
            candidates,
            stream=request.stream,
            source=self.route_by,
            model_tpot=self.tpot_while_estimating,
            tpot_floor=self.tpot_step_floor,
        )
        if predictions is not None:
            for candidate, prediction in zip(candidates, predictions, strict=True):
                candidate.attributes.put(PREDICTION, prediction)

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        rows = result.state.get(FEATURE_ROWS)
        if rows is None:
            return
        target = result.target
        for i, candidate in enumerate(result.candidates):
            if candidate is target:
                self.predictor.dispatched(
                    request.request_id,
                    rows[i],
                    target.endpoint.name,
                    model=request.model,
                    stream=request.stream,
                    prediction=target.attributes.get(PREDICTION),
                )
                return

    def on_first_token(self, request: InferenceRequest, endpoint: str, now: float) -> None:
        self.predictor.first_token(request.request_id, now)

    def on_end(self, request: InferenceRequest, record: RequestRecord) -> None:
        self.predictor.finished(request.request_id, record)

    def forget(self, endpoint: str) -> None:
        self.predictor.forget(endpoint)
