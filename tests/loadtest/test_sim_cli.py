"""``slogate sim`` flags and the config they build."""

from __future__ import annotations

import argparse

import pytest

from loadtest.sim.cli import add_sim_arguments, config_from_args, run_sim
from loadtest.sim.config import SimConfig, SimConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_config_defaults() -> None:
    args = parse()
    assert args.host == "127.0.0.1"
    assert args.port == 8000
    assert config_from_args(args) == SimConfig()
    assert SimConfig().model == "sim-llm"


def test_every_flag_reaches_the_config() -> None:
    args = parse(
        "--port", "9001", "--host", "0.0.0.0", "--model", "m", "--speed", "2.5",
        "--max-num-seqs", "8", "--kv-blocks", "1024", "--block-size", "32",
        "--max-num-batched-tokens", "512", "--max-model-len", "4096", "--time-scale", "10",
        "--seed", "7", "--engine", "slots", "--prefill-overhead-ms", "30",
        "--prefill-ms-per-token", "0.25", "--itl-ms", "20", "--time-factor-under-load", "2.5",
    )  # fmt: skip
    assert (args.port, args.host) == (9001, "0.0.0.0")
    assert config_from_args(args) == SimConfig(
        model="m",
        speed=2.5,
        max_num_seqs=8,
        kv_blocks=1024,
        block_size=32,
        max_num_batched_tokens=512,
        max_model_len=4096,
        time_scale=10.0,
        seed=7,
        engine="slots",
        prefill_overhead_ms=30.0,
        prefill_ms_per_token=0.25,
        itl_ms=20.0,
        time_factor_under_load=2.5,
    )


def test_unknown_engine_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        parse("--engine", "tgi")


def test_the_default_engine_is_vllm() -> None:
    assert SimConfig().engine == "vllm"


def test_invalid_flags_exit_with_the_field_named() -> None:
    with pytest.raises(SystemExit, match="speed: must be > 0"):
        run_sim(parse("--speed", "0"))


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"time_scale": -1.0}, "time_scale"),
        ({"kv_blocks": 10}, "kv_blocks"),
        ({"model": ""}, "model"),
        ({"kv_watermark_fraction": 1.0}, "kv_watermark_fraction"),
        ({"engine": "tgi"}, "engine"),
        ({"prefill_overhead_ms": -1.0}, "prefill_overhead_ms"),
        ({"prefill_ms_per_token": float("nan")}, "prefill_ms_per_token"),
        ({"itl_ms": 0.0}, "itl_ms"),
        ({"itl_ms": float("inf")}, "itl_ms"),
        ({"time_factor_under_load": 0.5}, "time_factor_under_load"),
    ],
    ids=[
        "seqs",
        "time-scale",
        "kv-too-small",
        "model",
        "watermark",
        "engine",
        "prefill-overhead",
        "prefill-per-token-nan",
        "itl-zero",
        "itl-inf",
        "factor-below-one",
    ],
)
def test_config_errors_name_the_field(overrides: dict[str, object], path: str) -> None:
    with pytest.raises(SimConfigError) as caught:
        SimConfig(**overrides)  # type: ignore[arg-type]
    assert caught.value.path == path


def test_slots_flag_errors_exit_with_the_field_named() -> None:
    with pytest.raises(SystemExit, match="time_factor_under_load: must be a finite number >= 1"):
        run_sim(parse("--engine", "slots", "--time-factor-under-load", "0.9"))
