"""The simulator's configuration: one frozen value object, validated on construction.

Everything a sim needs to behave like one vLLM pod lives here, so the demo can start a
heterogeneous fleet by building several configs (different ``speed``, ``kv_blocks``) and tests
can shrink queues and caches to make pressure appear with a handful of requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.sim.costmodel import CostModel

DEFAULT_MODEL = "sim-llm"


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

    ``speed`` divides every GPU cost (2.0 = a GPU twice as fast). ``time_scale`` only changes
    how fast simulated time passes on the wall clock (10.0 = ten times faster than real time);
    it never changes the modelled step times. Output lengths without ``ignore_eos`` follow a
    log-normal with the given median and sigma (the Azure 2023 conversation trace has median
    ~130 tokens, sigma ~0.86 in log space).
    """

    model: str = DEFAULT_MODEL
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

    def __post_init__(self) -> None:
        if not self.model:
            raise SimConfigError("model", self.model, "must not be empty")
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
        capacity = self.kv_blocks * self.block_size
        if capacity < self.max_model_len:
            # vLLM refuses to start when one max-length sequence cannot fit in the KV cache.
            raise SimConfigError(
                "kv_blocks",
                self.kv_blocks,
                f"kv_blocks * block_size = {capacity} tokens cannot hold one sequence of "
                f"max_model_len = {self.max_model_len}",
            )

    @property
    def kv_watermark_blocks(self) -> int:
        """Blocks admission keeps free for running requests to grow into."""
        return int(self.kv_watermark_fraction * self.kv_blocks)
