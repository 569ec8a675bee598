"""The simulated vLLM server as an aiohttp app: factory, route table, thin handlers.

``create_sim_app(config)`` builds one sim around the engine ``config.engine`` names (``vllm``
or ``slots``, both behind :class:`~loadtest.sim.engines.SimEngine`); the engine's loop starts
and stops with the app (``cleanup_ctx``), and the app owns its metrics registry, so one
process can serve several sims (a heterogeneous demo fleet) on one event loop.
``start_sim_server`` runs one on a TCP port with handler cancellation on, which the sim
relies on: a client that goes away cancels its handler, and the handler leaving
``SimFrontend.submitted`` aborts the request, freeing its batch slot and KV blocks at once,
whether it was running or still waiting.

Routes::

    POST /v1/completions         OpenAI completions (stream and non-stream)
    POST /v1/chat/completions    OpenAI chat completions (stream and non-stream)
    POST /v1/responses           OpenAI Responses API (stream and non-stream), see responses.py
    GET  /v1/responses/{id}      a response this pod produced (404 if unknown or forgotten)
    POST /v1/embeddings          OpenAI embeddings, prefill-only requests on the engine
    POST /pooling                vLLM's pooling: a vector per input, like embeddings
    POST /classify               vLLM's classification: class probabilities per input
    POST /score, /v1/score       vLLM's score: one score per (text_1, text_2) pair
    POST /rerank, /v1/rerank, /v2/rerank
                                 vLLM's (Jina-style) rerank: documents by relevance to a query
    GET  /v1/models              the served model and its LoRA adapters
    POST /tokenize               vLLM's tokenizer endpoint (prompt or messages)
    POST /detokenize             vLLM's: token ids back to text
    GET  /version                {"version": <the vLLM release the sim follows>}
    GET  /health                 200, empty body
    GET  /metrics                vLLM-named Prometheus metrics (gzip if the client accepts it)
    GET  /sim/stats              JSON: engine, speed, step timing vs the model, CPU, counters
    POST /sim/stats/reset        clear the step-timing log (benchmarks call it after warm-up)
    GET  /sim/speed              {"speed": current}
    POST /sim/speed              {"speed": new > 0}: slow the pod down or speed it up now

The routes that run the engine live in their own handler modules (``completions_handler``,
``responses_handler``, ``pooling_handler``) and all go through one
:class:`~loadtest.sim.frontend.SimFrontend`, so they load the pod and show in its metrics
alike; this module keeps the routes that only read or set state.

Errors: an :class:`~loadtest.sim.protocol.ApiError` becomes an OpenAI-style JSON error; a path
no route serves gets FastAPI's ``{"detail": "Not Found"}`` (and a known path with another
method ``{"detail": "Method Not Allowed"}``, a 405 with ``Allow``), as vLLM's server answers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TypeVar

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from gateway.tokenizer import Tokenizer
from loadtest.sim.completions_handler import CompletionHandlers
from loadtest.sim.config import SimConfig
from loadtest.sim.engines import SimEngine, create_engine, running_engine
from loadtest.sim.frontend import LARGE_PROMPT_TOKENS, SimFrontend
from loadtest.sim.lora import LoraTracker
from loadtest.sim.metrics import create_registry, metrics_exposition
from loadtest.sim.pooling_handler import PoolingHandlers
from loadtest.sim.protocol import VLLM_VERSION, ApiError, bad_request
from loadtest.sim.response_store import ResponseStore
from loadtest.sim.responses_handler import ResponsesHandlers
from loadtest.sim.tokenization import (
    Detokenizer,
    detokenize_body,
    parse_detokenize_request,
    parse_tokenize_request,
    tokenize_body,
)

SIM_CONFIG_KEY = web.AppKey("sim_config", SimConfig)
# Subscripted, not AppKey(name, SimEngine): a Protocol is not a concrete class for type[T].
SIM_ENGINE_KEY = web.AppKey[SimEngine]("sim_engine")
SIM_REGISTRY_KEY = web.AppKey("sim_registry", CollectorRegistry)

CLIENT_MAX_SIZE_BYTES = 64 * 1024 * 1024

_R = TypeVar("_R")


class SimHandlers:
    """The routes of one sim that do not run the engine, holding their dependencies (no app
    lookups per call)."""

    def __init__(self, frontend: SimFrontend, registry: CollectorRegistry) -> None:
        self._frontend = frontend
        self._config = frontend.config
        self._engine = frontend.engine
        self._registry = registry
        self._detokenizer: Detokenizer | None = None

    async def models(self, request: web.Request) -> web.Response:
        config = self._config
        model = config.model
        created = int(time.time())
        base = {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "slogate-sim",
            "root": model,
            "parent": None,
            "max_model_len": config.max_model_len,
        }
        # vLLM's card for an adapter: its own id, the base model as parent, no max_model_len.
        adapters = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": name,
                "parent": model,
                "max_model_len": None,
            }
            for name in config.lora_adapters
        ]
        return _json_response({"object": "list", "data": [base, *adapters]})

    async def version(self, request: web.Request) -> web.Response:
        return _json_response({"version": VLLM_VERSION})

    async def tokenize(self, request: web.Request) -> web.Response:
        config = self._config
        parsed = parse_tokenize_request(await request.read(), config.model, config.lora_adapters)
        tokens = await self._frontend.encode(parsed.text)
        token_strs = (
            await self._off_loop_if_large(self._get_detokenizer().token_strs, tokens)
            if parsed.return_token_strs
            else None
        )
        return web.Response(
            body=tokenize_body(tokens, config.max_model_len, token_strs),
            content_type="application/json",
        )

    async def detokenize(self, request: web.Request) -> web.Response:
        config = self._config
        tokens = parse_detokenize_request(await request.read(), config.model, config.lora_adapters)
        text = await self._off_loop_if_large(self._get_detokenizer().decode, tokens)
        return web.Response(body=detokenize_body(text), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def metrics(self, request: web.Request) -> web.Response:
        body, headers = metrics_exposition(
            self._registry, request.headers.get(hdrs.ACCEPT_ENCODING, "")
        )
        return web.Response(body=body, headers=headers)

    async def stats(self, request: web.Request) -> web.Response:
        engine = self._engine
        stats = engine.stats
        return _json_response(
            {
                "model": self._config.model,
                "engine": self._config.engine,
                "speed": engine.speed,
                "time_scale": self._config.time_scale,
                "num_running": engine.num_running,
                "num_waiting": engine.num_waiting,
                "kv_cache_usage": engine.kv.usage,
                "steps": stats.steps,
                "simulated_s": stats.simulated_s,
                "generation_tokens": stats.generation_tokens,
                "prompt_tokens": stats.prompt_tokens,
                "preemptions": stats.preemptions,
                "finished": stats.finished,
                "process_cpu_s": time.process_time(),
                "step_timing": engine.timings.summary(),
            }
        )

    async def reset_stats(self, request: web.Request) -> web.Response:
        self._engine.timings.reset()
        return web.Response(status=204)

    async def get_speed(self, request: web.Request) -> web.Response:
        return _json_response({"speed": self._engine.speed})

    async def set_speed(self, request: web.Request) -> web.Response:
        """Every modelled time is divided by the new speed from now on, in-flight work too."""
        self._engine.set_speed(parse_speed_body(await request.read()))
        return _json_response({"speed": self._engine.speed})

    def _get_detokenizer(self) -> Detokenizer:
        if self._detokenizer is None:
            self._detokenizer = Detokenizer(self._frontend.tokenizer)
        return self._detokenizer

    async def _off_loop_if_large(self, work: Callable[[list[int]], _R], tokens: list[int]) -> _R:
        """``work(tokens)``, in a worker thread when there are many tokens."""
        if len(tokens) > LARGE_PROMPT_TOKENS:
            return await asyncio.get_running_loop().run_in_executor(None, work, tokens)
        return work(tokens)


def create_sim_app(
    config: SimConfig,
    *,
    clock: Callable[[], float] | None = None,
    tokenizer: Tokenizer | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> web.Application:
    """Build one simulated vLLM server. ``clock`` is a monotonic clock in seconds (default
    ``time.monotonic``); pass a loaded ``tokenizer`` to share one between several sims.
    ``wall_clock`` (default ``time.time``) stamps ``vllm:lora_requests_info``."""
    clock = clock if clock is not None else time.monotonic
    engine = create_engine(config, clock=clock)
    lora = LoraTracker(
        config.lora_adapters, wall_clock=wall_clock if wall_clock is not None else time.time
    )
    registry = create_registry(engine, config.model, lora)
    frontend = SimFrontend(config, engine, lora, tokenizer=tokenizer)
    handlers = SimHandlers(frontend, registry)
    completions = CompletionHandlers(frontend, clock=clock)
    responses = ResponsesHandlers(frontend, ResponseStore(), clock=clock)
    pooling = PoolingHandlers(frontend, clock=clock)

    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE_BYTES)
    app[SIM_CONFIG_KEY] = config
    app[SIM_ENGINE_KEY] = engine
    app[SIM_REGISTRY_KEY] = registry
    app.cleanup_ctx.append(frontend.tokenizer_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    app.router.add_post("/v1/completions", completions.completions)
    app.router.add_post("/v1/chat/completions", completions.chat_completions)
    app.router.add_post("/v1/responses", responses.create)
    app.router.add_get("/v1/responses/{response_id}", responses.retrieve)
    app.router.add_post("/v1/embeddings", pooling.embeddings)
    app.router.add_post("/pooling", pooling.pooling)
    app.router.add_post("/classify", pooling.classify)
    for path in ("/score", "/v1/score"):
        app.router.add_post(path, pooling.score)
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.router.add_post(path, pooling.rerank)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_post("/tokenize", handlers.tokenize)
    app.router.add_post("/detokenize", handlers.detokenize)
    app.router.add_get("/version", handlers.version)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/sim/stats", handlers.stats)
    app.router.add_post("/sim/stats/reset", handlers.reset_stats)
    app.router.add_get("/sim/speed", handlers.get_speed)
    app.router.add_post("/sim/speed", handlers.set_speed)
    return app


@dataclass(frozen=True, slots=True)
class SimServer:
    """A sim listening on a TCP port; ``close()`` stops it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_sim_server(
    config: SimConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] | None = None,
    tokenizer: Tokenizer | None = None,
    shutdown_timeout_s: float = 1.0,
) -> SimServer:
    """Serve ``create_sim_app(config)`` on ``host:port`` (0 = any free port) in the running
    loop, with handler cancellation enabled so client disconnects abort requests."""
    app = create_sim_app(config, clock=clock, tokenizer=tokenizer)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound_port = int(address[1])
            break
    return SimServer(runner=runner, host=host, port=bound_port)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become JSON: an :class:`ApiError` OpenAI-style, a request no route
    matches as FastAPI (so vLLM) answers it, ``{"detail": "Not Found"}`` or
    ``{"detail": "Method Not Allowed"}``."""
    routing_error = request.match_info.http_exception
    if routing_error is not None:
        headers = {}
        if hdrs.ALLOW in routing_error.headers:
            headers[hdrs.ALLOW] = routing_error.headers[hdrs.ALLOW]
        return web.Response(
            status=routing_error.status,
            body=orjson.dumps({"detail": HTTPStatus(routing_error.status).phrase}),
            content_type="application/json",
            headers=headers,
        )
    try:
        return await handler(request)
    except ApiError as exc:
        return web.Response(status=exc.status, body=exc.body(), content_type="application/json")


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    async with running_engine(app[SIM_ENGINE_KEY]):
        yield


def parse_speed_body(body: bytes) -> float:
    """The speed in a ``POST /sim/speed`` body, ``{"speed": <number > 0>}`` (400 otherwise)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request('body must be a JSON object like {"speed": 0.5}') from None
    if not isinstance(payload, dict) or "speed" not in payload:
        raise bad_request('body must be a JSON object like {"speed": 0.5}', "speed")
    speed = payload["speed"]
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise bad_request("'speed' must be a number", "speed")
    if not (speed > 0 and math.isfinite(speed)):
        raise bad_request(f"'speed' must be a finite number > 0 (got {speed!r})", "speed")
    return float(speed)


def _json_response(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
