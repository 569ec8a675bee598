"""Command-line wiring: ``slogate sim`` (via :func:`add_sim_arguments` and :func:`run_sim`) and
``python -m loadtest.sim``.

The event loop is chosen here and only here: uvloop when it imports, else asyncio's default.
The server runs with handler cancellation on, so a client disconnect aborts its request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from aiohttp import web

from loadtest.sim.config import ENGINE_NAMES, SimConfig, SimConfigError
from loadtest.sim.server import create_sim_app

logger = logging.getLogger(__name__)

_DEFAULTS = SimConfig()
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
SHUTDOWN_TIMEOUT_S = 1.0


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to ``parser`` (defaults are :class:`SimConfig`'s)."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port to listen on")
    parser.add_argument("--model", default=_DEFAULTS.model, help="served model name")
    parser.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        default=_DEFAULTS.engine,
        help="latency model: vllm = continuous batching with a step cost model; slots = the "
        "llm-d inference simulator's model (max-num-seqs slots, per-request timers)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=_DEFAULTS.speed,
        help="GPU speed factor: every modelled time is divided by it (2.0 = twice as fast); "
        "POST /sim/speed changes it at run time",
    )
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=_DEFAULTS.max_num_seqs,
        help="most requests running in the batch at once; the rest wait FIFO",
    )
    parser.add_argument(
        "--kv-blocks",
        type=int,
        default=_DEFAULTS.kv_blocks,
        help="KV cache size in blocks (vllm:cache_config_info num_gpu_blocks)",
    )
    parser.add_argument(
        "--block-size", type=int, default=_DEFAULTS.block_size, help="tokens per KV block"
    )
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=_DEFAULTS.max_num_batched_tokens,
        help="token budget of one engine step (decodes count 1 each; prefills are chunked)",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=_DEFAULTS.max_model_len,
        help="context length: prompt + max_tokens above it is rejected with 400",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=_DEFAULTS.time_scale,
        help="wall-clock speed-up of simulated time (10 = ten times faster than real time)",
    )
    parser.add_argument(
        "--seed", type=int, default=_DEFAULTS.seed, help="seed of the output-length draws"
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=None,
        metavar="NAME",
        help="serve a LoRA adapter NAME on top of the base model (repeatable): listed in "
        "/v1/models, accepted as a request's model, reported in vllm:lora_requests_info",
    )
    slots = parser.add_argument_group(
        "slots engine", "latency model of --engine slots (ignored by --engine vllm)"
    )
    slots.add_argument(
        "--prefill-overhead-ms",
        type=float,
        default=_DEFAULTS.prefill_overhead_ms,
        help="slots engine only: fixed part of a request's prefill (time to first token)",
    )
    slots.add_argument(
        "--prefill-ms-per-token",
        type=float,
        default=_DEFAULTS.prefill_ms_per_token,
        help="slots engine only: prefill time per uncached prompt token",
    )
    slots.add_argument(
        "--itl-ms",
        type=float,
        default=_DEFAULTS.itl_ms,
        help="slots engine only: inter-token latency of a request running alone",
    )
    slots.add_argument(
        "--time-factor-under-load",
        type=float,
        default=_DEFAULTS.time_factor_under_load,
        help="slots engine only: slowdown of prefill and inter-token times with max-num-seqs "
        "requests running (linear from 1.0 with one running; >= 1)",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` the parsed flags describe (raises :class:`SimConfigError`)."""
    return SimConfig(
        model=args.model,
        engine=args.engine,
        speed=args.speed,
        max_num_seqs=args.max_num_seqs,
        kv_blocks=args.kv_blocks,
        block_size=args.block_size,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        time_scale=args.time_scale,
        seed=args.seed,
        prefill_overhead_ms=args.prefill_overhead_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        itl_ms=args.itl_ms,
        time_factor_under_load=args.time_factor_under_load,
        lora_adapters=tuple(args.lora or ()),
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop if installed, else asyncio's default loop."""
    try:
        import uvloop  # optional: chosen at run time
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_sim(args: argparse.Namespace) -> None:
    """Serve one sim until SIGINT/SIGTERM."""
    try:
        config = config_from_args(args)
    except SimConfigError as exc:
        raise SystemExit(f"slogate sim: {exc}") from None
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    logger.info(
        "sim.start",
        extra={
            "host": args.host,
            "port": args.port,
            "model": config.model,
            "engine": config.engine,
            "speed": config.speed,
            "time_scale": config.time_scale,
            "max_num_seqs": config.max_num_seqs,
            "kv_blocks": config.kv_blocks,
            "lora_adapters": ",".join(config.lora_adapters),
        },
    )
    web.run_app(
        create_sim_app(config),
        host=args.host,
        port=args.port,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=None,
        loop=loop,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m loadtest.sim``: the same flags as ``slogate sim``."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.sim",
        description="Simulated vLLM server (continuous batching or llm-d-style slots).",
    )
    add_sim_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_sim(parser.parse_args(argv))
