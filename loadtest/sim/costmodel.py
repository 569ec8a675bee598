"""How long one engine step takes on the simulated GPU.

A continuous-batching step runs every scheduled token through the model once. Its time has
four honest parts, and routing only matters if the simulator keeps all of them:

- a fixed cost per step (reading the weights once, kernel launches, sampling, scheduling),
- a compute cost per prefill token (the linear layers; prefill is compute-bound),
- an attention cost per prefill token that grows with the context the chunk attends to
  (quadratic in prompt length when summed over a long prompt's chunks),
- per decode sequence: a small compute cost, plus reading that sequence's KV cache, which
  grows with its context length (decode is memory-bound).

``step_seconds = (overhead + a*P + b*sum(n_i*(start_i + n_i/2)) + c*D + d*sum(ctx_j)) / speed``

where ``P`` is the number of prefill tokens in the step, chunk ``i`` has ``n_i`` tokens
starting at position ``start_i`` (so it attends to ``start_i + n_i/2`` tokens on average),
``D`` is the number of decoding sequences and ``ctx_j`` their context lengths.

The defaults describe roughly an 8B model in bf16 on one mid-range data-centre GPU
(~200 TFLOP/s effective, ~770 GB/s): a lone short request decodes at ~11 ms/token, a 2k-token
prefill takes ~185 ms, and 64 decodes at 2k context take ~40 ms per step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchShape:
    """What one step computes, reduced to the sums the cost model needs."""

    prefill_tokens: int = 0
    # sum over prefill chunks of n * (start + n / 2): token-context pairs of attention.
    prefill_attention_pairs: float = 0.0
    num_decodes: int = 0
    decode_context_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CostModel:
    """Step-time constants of the simulated GPU at ``speed`` 1.0 (seconds)."""

    overhead_s: float = 0.011
    prefill_s_per_token: float = 80e-6
    attention_s_per_token_pair: float = 5e-9
    decode_s_per_seq: float = 100e-6
    decode_s_per_context_token: float = 1.7e-7

    def step_seconds(
        self,
        *,
        prefill_tokens: int,
        prefill_attention_pairs: float,
        num_decodes: int,
        decode_context_tokens: int,
        speed: float = 1.0,
    ) -> float:
        """Modelled duration of a step; every cost is divided by ``speed``."""
        return (
            self.overhead_s
            + self.prefill_s_per_token * prefill_tokens
            + self.attention_s_per_token_pair * prefill_attention_pairs
            + self.decode_s_per_seq * num_decodes
            + self.decode_s_per_context_token * decode_context_tokens
        ) / speed

    def batch_seconds(self, batch: BatchShape, *, speed: float = 1.0) -> float:
        """:meth:`step_seconds` for a :class:`BatchShape`."""
        return self.step_seconds(
            prefill_tokens=batch.prefill_tokens,
            prefill_attention_pairs=batch.prefill_attention_pairs,
            num_decodes=batch.num_decodes,
            decode_context_tokens=batch.decode_context_tokens,
            speed=speed,
        )


def chunk_attention_pairs(start: int, num_tokens: int) -> float:
    """Token-context pairs a prefill chunk of ``num_tokens`` at position ``start`` attends."""
    return num_tokens * (start + num_tokens / 2)
