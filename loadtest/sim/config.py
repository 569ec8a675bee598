"""The simulator's configuration: one frozen value object, validated on construction.

Everything a sim needs to behave like one vLLM pod lives here, so the demo can start a
heterogeneous fleet by building several configs (different ``speed``, ``kv_blocks``) and tests
can shrink queues and caches to make pressure appear with a handful of requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loadtest.sim.costmodel import CostModel

DEFAULT_MODEL = "sim-llm"
# "vllm": continuous batching with a step cost model (engine.py); "slots": the llm-d
# inference simulator's per-request latency model (slots.py).
ENGINE_NAMES: tuple[str, ...] = ("vllm", "slots")


class SimConfigError(ValueError):
    """A config field has a value the simulator cannot run with."""

    def __init__(self, path: str, value: object, reason: str) -> None:
        super().__init__(f"{path}: {reason} (got {value!r})")
        self.path = path
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """One simulated vLLM server.

    ``engine`` picks the latency model: ``"vllm"`` (continuous batching, costs from ``cost``)
    or ``"slots"`` (llm-d inference simulator: ``max_num_seqs`` slots, each request on its own
    timer, costs from the ``prefill_*``, ``itl_ms`` and ``time_factor_under_load`` fields,
    which only that engine reads). ``speed`` divides every modelled time (2.0 = a GPU twice as
    fast); it is the starting speed, ``POST /sim/speed`` changes it at run time. ``time_scale``
    only changes how fast simulated time passes on the wall clock (10.0 = ten times faster
    than real time); it never changes the modelled times. Output lengths without
    ``ignore_eos`` follow a log-normal with the given median and sigma (the Azure 2023
    conversation trace has median ~130 tokens, sigma ~0.86 in log space).
    ``lora_adapters`` are the LoRA adapter names served on top of ``model`` (vLLM's
    ``--lora-modules``): listed in ``/v1/models``, accepted as a request's ``model``, and
    reported in ``vllm:lora_requests_info``.
    """

    model: str = DEFAULT_MODEL
    engine: str = "vllm"
    speed: float = 1.0
    max_num_seqs: int = 256
    kv_blocks: int = 4096
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_model_len: int = 32768
    time_scale: float = 1.0
    seed: int = 0
    # vLLM v0's admission watermark: keep 1% of blocks free so decodes can grow.
    kv_watermark_fraction: float = 0.01
    output_len_median_tokens: float = 128.0
    output_len_sigma: float = 0.9
    # Steps behind the modelled timeline by more than this restart it (the sim is overloaded).
    max_timeline_lag_s: float = 0.05
    cost: CostModel = field(default_factory=CostModel)
    # The slots engine's latency model (llm-d inference simulator), at speed 1 and one request
    # running: TTFT = prefill_overhead_ms + prefill_ms_per_token * uncached prompt tokens, then
    # one token every itl_ms. Chosen to match the vllm engine's defaults (a lone request decodes
    # at ~11 ms/token, a 2,048-token prefill takes ~185 ms).
    prefill_overhead_ms: float = 11.0
    prefill_ms_per_token: float = 0.085
    itl_ms: float = 11.0
    # The slowdown at max_num_seqs running (linear from 1.0 at one request). 6.0 puts 256
    # running requests at 66 ms/token, the vllm engine's time for 256 decodes at ~750 tokens
    # of context.
    time_factor_under_load: float = 6.0
    lora_adapters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.model:
            raise SimConfigError("model", self.model, "must not be empty")
        if self.engine not in ENGINE_NAMES:
            raise SimConfigError("engine", self.engine, f"must be one of {', '.join(ENGINE_NAMES)}")
        for name in ("max_num_seqs", "kv_blocks", "block_size", "max_num_batched_tokens"):
            value = getattr(self, name)
            if value < 1:
                raise SimConfigError(name, value, "must be >= 1")
        if self.max_model_len < 2:
            raise SimConfigError("max_model_len", self.max_model_len, "must be >= 2")
        for name in ("speed", "time_scale", "output_len_median_tokens"):
            value = getattr(self, name)
            if not value > 0:
                raise SimConfigError(name, value, "must be > 0")
        if self.output_len_sigma < 0:
            raise SimConfigError("output_len_sigma", self.output_len_sigma, "must be >= 0")
        if not 0 <= self.kv_watermark_fraction < 1:
            raise SimConfigError(
                "kv_watermark_fraction", self.kv_watermark_fraction, "must be in [0, 1)"
            )
        if self.max_timeline_lag_s < 0:
            raise SimConfigError("max_timeline_lag_s", self.max_timeline_lag_s, "must be >= 0")
        for name in ("prefill_overhead_ms", "prefill_ms_per_token"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise SimConfigError(name, value, "must be a finite number >= 0")
        if not (self.itl_ms > 0 and math.isfinite(self.itl_ms)):
            raise SimConfigError("itl_ms", self.itl_ms, "must be a finite number > 0")
        if not (self.time_factor_under_load >= 1 and math.isfinite(self.time_factor_under_load)):
            raise SimConfigError(
                "time_factor_under_load",
                self.time_factor_under_load,
                "must be a finite number >= 1",
            )
        self._check_lora_adapters()
        capacity = self.kv_blocks * self.block_size
        if capacity < self.max_model_len:
            # vLLM refuses to start when one max-length sequence cannot fit in the KV cache.
            raise SimConfigError(
                "kv_blocks",
                self.kv_blocks,
                f"kv_blocks * block_size = {capacity} tokens cannot hold one sequence of "
                f"max_model_len = {self.max_model_len}",
            )

    def _check_lora_adapters(self) -> None:
        seen: set[str] = set()
        for index, name in enumerate(self.lora_adapters):
            path = f"lora_adapters[{index}]"
            if not name:
                raise SimConfigError(path, name, "must be a non-empty string")
            if "," in name:
                # vllm:lora_requests_info joins adapter names with commas.
                raise SimConfigError(path, name, "must not contain a comma")
            if name == self.model:
                raise SimConfigError(path, name, "must differ from the base model name")
            if name in seen:
                raise SimConfigError(path, name, "is listed twice")
            seen.add(name)

    @property
    def kv_watermark_blocks(self) -> int:
        """Blocks admission keeps free for running requests to grow into."""
        return int(self.kv_watermark_fraction * self.kv_blocks)
