"""A simulated vLLM server fleet for demos, tests and benchmarks.

Latency comes from a model, never from fixed per-request sleeps, so a router that predicts
latency has something real to predict. Two engines: ``vllm`` (the default), a GPU running
continuous batching (chunked prefill, a token budget per step, a KV cache with prefix caching
and recompute preemption); and ``slots``, the llm-d inference simulator's model (a prefill and
inter-token time per request, stretched by a load factor, with the same KV cache).

Modules, one concept each:

- :mod:`~loadtest.sim.config`    ``SimConfig``, the frozen description of one sim
- :mod:`~loadtest.sim.costmodel` how long a step takes on the simulated GPU
- :mod:`~loadtest.sim.kvcache`   block allocator and LRU prefix cache with chained hashes
- :mod:`~loadtest.sim.request`   one request's state and the engine-to-handler wake-up
- :mod:`~loadtest.sim.engines`   ``SimEngine``, the contract the server uses, and the registry
- :mod:`~loadtest.sim.engine`    the ``vllm`` engine: scheduler (pure) and its asyncio step loop
- :mod:`~loadtest.sim.slots`     the ``slots`` engine: work clock, event heap and one loop
- :mod:`~loadtest.sim.alarm`     the engines' interruptible sleep
- :mod:`~loadtest.sim.stats`     counters, histograms and the step-timing log
- :mod:`~loadtest.sim.metrics`   vLLM-named Prometheus metrics on the sim's own registry
- :mod:`~loadtest.sim.lora`      LoRA adapters in flight and ``vllm:lora_requests_info``
- :mod:`~loadtest.sim.protocol`  OpenAI/vLLM completions and chat: parsing and response bytes
- :mod:`~loadtest.sim.choices`   a request's engine requests, one per prompt and sample (``n``)
- :mod:`~loadtest.sim.responses` the Responses API: parsing, the response object, its events
- :mod:`~loadtest.sim.response_store` the responses a pod produced, bounded
- :mod:`~loadtest.sim.embeddings` embeddings and ``/pooling``: parsing, deterministic vectors,
  the bodies, the pooling routes' shared ``input`` and length check
- :mod:`~loadtest.sim.pooling`   score, rerank and classify: parsing, numbers, bodies
- :mod:`~loadtest.sim.tokenization` ``/tokenize`` and ``/detokenize``
- :mod:`~loadtest.sim.frontend`  prompts into engine requests, shared by every engine route
- :mod:`~loadtest.sim.completions_handler`, :mod:`~loadtest.sim.responses_handler`,
  :mod:`~loadtest.sim.pooling_handler`  the aiohttp handlers of the engine routes
- :mod:`~loadtest.sim.server`    the app factory, route table, other handlers,
  ``start_sim_server``
- :mod:`~loadtest.sim.cli`       ``add_sim_arguments`` / ``run_sim`` for ``slogate sim``
"""

from loadtest.sim.config import SimConfig, SimConfigError
from loadtest.sim.costmodel import BatchShape, CostModel
from loadtest.sim.engines import ENGINES, SimEngine, create_engine
from loadtest.sim.server import (
    SIM_CONFIG_KEY,
    SIM_ENGINE_KEY,
    SIM_REGISTRY_KEY,
    SimServer,
    create_sim_app,
    start_sim_server,
)

__all__ = [
    "ENGINES",
    "SIM_CONFIG_KEY",
    "SIM_ENGINE_KEY",
    "SIM_REGISTRY_KEY",
    "BatchShape",
    "CostModel",
    "SimConfig",
    "SimConfigError",
    "SimEngine",
    "SimServer",
    "create_engine",
    "create_sim_app",
    "start_sim_server",
]
