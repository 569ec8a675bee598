"""A simulated vLLM server fleet for demos, tests and benchmarks.

Latency comes from a model of a GPU running continuous batching (chunked prefill, a token
budget per step, a KV cache with prefix caching and recompute preemption), never from fixed
per-request sleeps, so a router that predicts latency has something real to predict.

Modules, one concept each:

- :mod:`~loadtest.sim.config`    ``SimConfig``, the frozen description of one sim
- :mod:`~loadtest.sim.costmodel` how long a step takes on the simulated GPU
- :mod:`~loadtest.sim.kvcache`   block allocator and LRU prefix cache with chained hashes
- :mod:`~loadtest.sim.request`   one request's state and the engine-to-handler wake-up
- :mod:`~loadtest.sim.engine`    the scheduler (pure) and its asyncio step loop
- :mod:`~loadtest.sim.stats`     counters, histograms and the step-timing log
- :mod:`~loadtest.sim.metrics`   vLLM-named Prometheus metrics on the sim's own registry
- :mod:`~loadtest.sim.protocol`  OpenAI/vLLM request parsing and response bytes
- :mod:`~loadtest.sim.server`    the aiohttp app factory, handlers and ``start_sim_server``
- :mod:`~loadtest.sim.cli`       ``add_sim_arguments`` / ``run_sim`` for ``slogate sim``
"""

from loadtest.sim.config import SimConfig, SimConfigError
from loadtest.sim.costmodel import BatchShape, CostModel
from loadtest.sim.server import (
    SIM_CONFIG_KEY,
    SIM_ENGINE_KEY,
    SIM_REGISTRY_KEY,
    SimServer,
    create_sim_app,
    start_sim_server,
)

__all__ = [
    "SIM_CONFIG_KEY",
    "SIM_ENGINE_KEY",
    "SIM_REGISTRY_KEY",
    "BatchShape",
    "CostModel",
    "SimConfig",
    "SimConfigError",
    "SimServer",
    "create_sim_app",
    "start_sim_server",
]
