"""What one speed-1 pod sustains for a workload: the matrix's definition of 100 % load.

Measured, not estimated: one freshly started speed-1 sim of the engine under test is
saturated by a closed loop (``max_num_seqs + max(8, max_num_seqs / 4)`` requests always in
flight, so its waiting queue never empties) with the workload's own rows in trace order,
lengths and prompts as in the benchmark. After ``warmup_s`` its counters are read at the start
and the end of a window of ``measure_s`` (longer for slow engines, until 100 requests
completed in it, 90 s at most). Capacity in requests/s is the generated tokens per second divided by
the mean output length of the rows sent to the pod: the completion rate, without the noise of
counting the few long requests that happen to end in the window (that rate is kept too).
A fleet's capacity is this times the sum of its pods' speeds (a sim's every time is divided
by its speed, so a pod's throughput scales with it exactly).

Results are cached in ``results/bench_routing_capacity.json`` under a key made of everything
that changes the answer, including a digest of the simulator's source, so a changed cost
model is measured again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtest.fleet import Phase, PromptMaker, SimSpec, WorkloadSpec, request_body, sim_fleet
from loadtest.simctl import pod_stats

CACHE_PATH = Path("results/bench_routing_capacity.json")
_SIM_SOURCE = Path(__file__).resolve().parent / "sim"
_ROWS = 3000


def sim_source_digest() -> str:
    """Short digest of the simulator's source files (a changed sim invalidates the cache)."""
    h = hashlib.sha256()
    for path in sorted(_SIM_SOURCE.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacitySpec:
    sims: SimSpec
    """Only its engine fields are used: the calibration runs one speed-1 pod of them."""
    workload: WorkloadSpec
    """Only its rows are used (trace, start row, seed, length scaling), not its phases."""
    warmup_s: float = 10.0
    measure_s: float = 30.0
    """At least this long; longer (up to ``max_measure_s``) until ``min_completions`` ended
    in the window, so a slow engine is not judged on a handful of requests."""
    max_measure_s: float = 90.0
    min_completions: int = 100

    def enough(self, elapsed_s: float, completions: int) -> bool:
        if elapsed_s >= self.max_measure_s:
            return True
        return elapsed_s >= self.measure_s and completions >= self.min_completions

    def one_pod(self) -> SimSpec:
        return SimSpec(
            speeds=(1.0,),
            max_num_seqs=self.sims.max_num_seqs,
            kv_blocks=self.sims.kv_blocks,
            time_scale=self.sims.time_scale,
            seed=self.sims.seed,
            engine=self.sims.engine,
            engine_params=self.sims.engine_params,
        )

    def rows(self) -> WorkloadSpec:
        return WorkloadSpec(
            trace=self.workload.trace,
            phases=(Phase("calibration", 1.0, _ROWS),),
            seed=self.workload.seed,
            start_row=self.workload.start_row,
            length_scale=self.workload.length_scale,
            max_prompt_tokens=self.workload.max_prompt_tokens,
            max_output_tokens=self.workload.max_output_tokens,
            min_output_tokens=self.workload.min_output_tokens,
        )

    def key(self) -> str:
        sims = self.one_pod()
        rows = asdict(self.rows())
        del rows["phases"]
        return json.dumps(
            {
                "sims": {k: v for k, v in asdict(sims).items() if k not in ("speeds", "seed")},
                "rows": rows,
                "warmup_s": self.warmup_s,
                "measure_s": self.measure_s,
                "max_measure_s": self.max_measure_s,
                "min_completions": self.min_completions,
                "sim_source": sim_source_digest(),
            },
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True)
class Capacity:
    rps_per_speed: float
    """Requests/s one speed-1 pod sustains (generated tokens/s over mean output length)."""
    completions_rps: float
    """Requests that completed per second in the window (noisier; for comparison)."""
    output_tokens_per_s: float
    mean_output_tokens: float
    concurrency: int
    min_waiting: int
    """Fewest requests waiting at any sample: > 0 means the pod was saturated throughout."""
    measured: str
    """When it was measured (local time)."""


async def measure_capacity(spec: CapacitySpec) -> Capacity:
    """Saturate one fresh speed-1 pod and read its throughput (see the module docstring)."""
    workload = spec.rows()
    arrivals = workload.arrivals()
    prompts = PromptMaker(workload)
    rows = itertools.cycle(arrivals)
    sent: list[int] = []  # output lengths, in the order the requests left
    concurrency = spec.sims.max_num_seqs + max(8, spec.sims.max_num_seqs // 4)
    async with sim_fleet(spec.one_pod()) as pods:
        pod = pods[0]
        url = f"{pod.url}/v1/completions"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def loop() -> None:
                for arrival in rows:
                    sent.append(arrival.output_tokens)
                    body = orjson.dumps(request_body(arrival, prompts.ids(arrival)))
                    async with session.post(
                        url, data=body, headers={"content-type": "application/json"}
                    ) as resp:
                        await resp.read()

            workers = [asyncio.create_task(loop()) for _ in range(concurrency)]
            try:
                await asyncio.sleep(spec.warmup_s)
                first = await pod_stats(session, pod)
                started = time.monotonic()
                min_waiting = int(first["num_waiting"])
                last = first
                while not spec.enough(
                    time.monotonic() - started, _completed(last) - _completed(first)
                ):
                    await asyncio.sleep(1.0)
                    last = await pod_stats(session, pod)
                    min_waiting = min(min_waiting, int(last["num_waiting"]))
                elapsed = time.monotonic() - started
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
    # The mix the pod worked on: every row sent (the closed loop sends them in trace order).
    mean_output = sum(sent) / len(sent)
    tokens_per_s = (last["generation_tokens"] - first["generation_tokens"]) / elapsed
    completed = _completed(last) - _completed(first)
    return Capacity(
        rps_per_speed=tokens_per_s / mean_output,
        completions_rps=completed / elapsed,
        output_tokens_per_s=tokens_per_s,
        mean_output_tokens=mean_output,
        concurrency=concurrency,
        min_waiting=min_waiting,
        measured=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


def _completed(stats: dict[str, Any]) -> int:
    finished = stats["finished"]
    if isinstance(finished, dict):
        return sum(int(v) for k, v in finished.items() if k != "abort")
    return int(finished)


async def capacity(
    spec: CapacitySpec, *, cache: Path = CACHE_PATH, fresh: bool = False
) -> Capacity:
    """The cached measurement for ``spec``, measured (and cached) when missing or ``fresh``."""
    key = spec.key()
    cached = None if fresh else cached_capacity(cache, key)
    if cached is not None:
        return cached
    result = await measure_capacity(spec)
    store_capacity(cache, key, result)
    return result


def cached_capacity(cache: Path, key: str) -> Capacity | None:
    entries = json.loads(cache.read_text()) if cache.exists() else {}
    return Capacity(**entries[key]) if key in entries else None


def store_capacity(cache: Path, key: str, result: Capacity) -> None:
    entries = json.loads(cache.read_text()) if cache.exists() else {}
    entries[key] = asdict(result)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
