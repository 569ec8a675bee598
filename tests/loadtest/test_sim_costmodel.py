"""The GPU cost model: default constants land in the ranges the simulator promises."""

from __future__ import annotations

import pytest

from loadtest.sim.costmodel import BatchShape, CostModel, chunk_attention_pairs


def decode_step_s(model: CostModel, batch: int, context: int, speed: float = 1.0) -> float:
    return model.step_seconds(
        prefill_tokens=0,
        prefill_attention_pairs=0.0,
        num_decodes=batch,
        decode_context_tokens=batch * context,
        speed=speed,
    )


def prefill_step_s(model: CostModel, tokens: int, start: int = 0) -> float:
    return model.step_seconds(
        prefill_tokens=tokens,
        prefill_attention_pairs=chunk_attention_pairs(start, tokens),
        num_decodes=0,
        decode_context_tokens=0,
    )


def test_lone_short_request_decodes_at_10_to_15_ms() -> None:
    assert 0.010 <= decode_step_s(CostModel(), batch=1, context=200) <= 0.015


def test_2k_prefill_costs_150_to_250_ms() -> None:
    assert 0.150 <= prefill_step_s(CostModel(), 2048) <= 0.250


def test_64_decodes_at_2k_context_take_30_to_50_ms() -> None:
    assert 0.030 <= decode_step_s(CostModel(), batch=64, context=2048) <= 0.050


def test_decode_cost_grows_with_batch_and_context() -> None:
    model = CostModel()
    assert decode_step_s(model, 64, 2048) > decode_step_s(model, 64, 512)
    assert decode_step_s(model, 128, 512) > decode_step_s(model, 64, 512)


def test_prefill_attention_is_superlinear_in_prompt_position() -> None:
    model = CostModel()
    # The same chunk costs more late in a long prompt: it attends to more context.
    assert prefill_step_s(model, 2048, start=16384) > prefill_step_s(model, 2048, start=0)


@pytest.mark.parametrize(
    ("start", "tokens", "expected"),
    [(0, 2, 2.0), (10, 4, 48.0), (0, 2048, 2048 * 1024.0)],
    ids=["tiny", "offset", "2k"],
)
def test_chunk_attention_pairs(start: int, tokens: int, expected: float) -> None:
    assert chunk_attention_pairs(start, tokens) == expected


def test_speed_divides_every_cost() -> None:
    model = CostModel()
    batch = BatchShape(
        prefill_tokens=300,
        prefill_attention_pairs=chunk_attention_pairs(100, 300),
        num_decodes=20,
        decode_context_tokens=20 * 700,
    )
    assert model.batch_seconds(batch, speed=2.0) == pytest.approx(model.batch_seconds(batch) / 2)


def test_formula_sums_the_five_terms() -> None:
    model = CostModel(
        overhead_s=1.0,
        prefill_s_per_token=2.0,
        attention_s_per_token_pair=3.0,
        decode_s_per_seq=4.0,
        decode_s_per_context_token=5.0,
    )
    seconds = model.step_seconds(
        prefill_tokens=1, prefill_attention_pairs=1.0, num_decodes=1, decode_context_tokens=1
    )
    assert seconds == 15.0
