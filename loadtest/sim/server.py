"""The simulated vLLM server as an aiohttp app: factory, route table, thin handlers.

``create_sim_app(config)`` builds one sim around the engine ``config.engine`` names (``vllm``
or ``slots``, both behind :class:`~loadtest.sim.engines.SimEngine`); the engine's loop starts
and stops with the app (``cleanup_ctx``), and the app owns its metrics registry, so one
process can serve several sims (a heterogeneous demo fleet) on one event loop.
``start_sim_server`` runs one on a TCP port with handler cancellation on, which the sim
relies on: a client that goes away cancels its handler, and the handler's ``finally`` aborts
the request, freeing its batch slot and KV blocks at once, whether it was running or still
waiting.

Routes::

    POST /v1/completions         OpenAI completions (stream and non-stream)
    POST /v1/chat/completions    OpenAI chat completions (stream and non-stream)
    GET  /v1/models              the served model
    GET  /health                 200, empty body
    GET  /metrics                vLLM-named Prometheus metrics (gzip if the client accepts it)
    GET  /sim/stats              JSON: engine, speed, step timing vs the model, CPU, counters
    POST /sim/stats/reset        clear the step-timing log (benchmarks call it after warm-up)
    GET  /sim/speed              {"speed": current}
    POST /sim/speed              {"speed": new > 0}: slow the pod down or speed it up now
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from gateway.tokenizer import Tokenizer, load_tokenizer
from loadtest.sim.config import SimConfig
from loadtest.sim.engines import SimEngine, create_engine, running_engine
from loadtest.sim.kvcache import hash_prompt_blocks
from loadtest.sim.metrics import create_registry, metrics_exposition
from loadtest.sim.protocol import (
    SSE_DONE,
    ApiError,
    ParsedRequest,
    StreamEncoder,
    bad_request,
    completion_body,
    filler_text,
    parse_chat_request,
    parse_completion_request,
    resolve_max_tokens,
    usage_dict,
)
from loadtest.sim.request import RequestState, SimRequest, draw_output_len

SIM_CONFIG_KEY = web.AppKey("sim_config", SimConfig)
# Subscripted, not AppKey(name, SimEngine): a Protocol is not a concrete class for type[T].
SIM_ENGINE_KEY = web.AppKey[SimEngine]("sim_engine")
SIM_REGISTRY_KEY = web.AppKey("sim_registry", CollectorRegistry)

# Above these sizes, tokenizing and hashing move to a worker thread so the step loop and the
# other streams keep their timing.
LARGE_PROMPT_CHARS = 20_000
LARGE_PROMPT_TOKENS = 16_384
CLIENT_MAX_SIZE_BYTES = 64 * 1024 * 1024

_SSE_HEADERS = {"Cache-Control": "no-cache"}
_FINISHED = RequestState.FINISHED
_ABORTED = RequestState.ABORTED


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """What the engine needs of a prompt: its length, block hashes and a content digest."""

    num_tokens: int
    block_hashes: list[int]
    digest: int


def prompt_info(token_ids: Sequence[int], block_size: int) -> PromptInfo:
    return PromptInfo(
        num_tokens=len(token_ids),
        block_hashes=hash_prompt_blocks(token_ids, block_size),
        digest=hash(tuple(token_ids)),
    )


def _text_prompt_info(tokenizer: Tokenizer, text: str, block_size: int) -> PromptInfo:
    return prompt_info(tokenizer.encode(text), block_size)


class SimHandlers:
    """The request handlers of one sim, holding its dependencies (no app lookups per call)."""

    def __init__(
        self,
        config: SimConfig,
        engine: SimEngine,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float],
        tokenizer: Tokenizer | None,
    ) -> None:
        self._config = config
        self._engine = engine
        self._registry = registry
        self._clock = clock
        self._tokenizer = tokenizer

    async def tokenizer_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Load the default tokenizer off the event loop unless one was injected."""
        if self._tokenizer is None:
            self._tokenizer = await asyncio.get_running_loop().run_in_executor(None, load_tokenizer)
        yield

    async def completions(self, request: web.Request) -> web.StreamResponse:
        parsed = parse_completion_request(await request.read(), self._config.model)
        return await self._generate(request, parsed)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        parsed = parse_chat_request(await request.read(), self._config.model)
        return await self._generate(request, parsed)

    async def models(self, request: web.Request) -> web.Response:
        model = self._config.model
        card = {
            "id": model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "slogate-sim",
            "root": model,
            "parent": None,
            "max_model_len": self._config.max_model_len,
        }
        return _json_response({"object": "list", "data": [card]})

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

    async def _generate(self, request: web.Request, parsed: ParsedRequest) -> web.StreamResponse:
        arrival_s = self._clock()
        config = self._config
        prompt = await self._prompt_info(parsed)
        max_tokens = resolve_max_tokens(parsed, prompt.num_tokens, config.max_model_len)
        if parsed.ignore_eos:
            output_len = max_tokens
        else:
            output_len = draw_output_len(
                prompt.digest,
                parsed.seed,
                sim_seed=config.seed,
                median=config.output_len_median_tokens,
                sigma=config.output_len_sigma,
            )
        request_id = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
        sim_request = SimRequest(
            request_id=request_id,
            prompt_len=prompt.num_tokens,
            block_hashes=prompt.block_hashes,
            max_tokens=max_tokens,
            output_len=output_len,
            stream=parsed.stream,
            arrival_s=arrival_s,
        )
        word_offset = prompt.digest % 1024
        created = int(time.time())
        self._engine.add_request(sim_request)
        try:
            if parsed.stream:
                encoder = StreamEncoder(
                    chat=parsed.chat,
                    request_id=request_id,
                    created=created,
                    model=config.model,
                    word_offset=word_offset,
                )
                return await self._stream(request, sim_request, parsed, encoder)
            while not sim_request.done:
                await sim_request.wait_for_update()
            if sim_request.state is _ABORTED:
                raise ApiError(503, "the engine stopped", error_type="ServiceUnavailableError")
            body = completion_body(
                chat=parsed.chat,
                request_id=request_id,
                created=created,
                model=config.model,
                text=filler_text(word_offset, 0, sim_request.num_generated),
                finish_reason=sim_request.finish_reason or "stop",
                usage=_usage(sim_request),
            )
            return web.Response(body=body, content_type="application/json")
        finally:
            # Cancelled (client gone, or shutdown) or failed: give back the slot and blocks.
            if not sim_request.done:
                self._engine.abort(sim_request)

    async def _prompt_info(self, parsed: ParsedRequest) -> PromptInfo:
        block_size = self._config.block_size
        loop = asyncio.get_running_loop()
        if parsed.prompt_ids is not None:
            ids = parsed.prompt_ids
            if len(ids) > LARGE_PROMPT_TOKENS:
                return await loop.run_in_executor(None, prompt_info, ids, block_size)
            return prompt_info(ids, block_size)
        tokenizer = self._tokenizer
        text = parsed.prompt_text
        if tokenizer is None or text is None:  # pragma: no cover - cleanup_ctx loads it first
            raise RuntimeError("the sim app was not started")
        if len(text) > LARGE_PROMPT_CHARS:
            return await loop.run_in_executor(None, _text_prompt_info, tokenizer, text, block_size)
        return _text_prompt_info(tokenizer, text, block_size)

    async def _stream(
        self,
        request: web.Request,
        sim_request: SimRequest,
        parsed: ParsedRequest,
        encoder: StreamEncoder,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        sent = 0
        role_pending = parsed.chat  # vLLM sends the role chunk with the first token
        try:
            while True:
                generated = sim_request.num_generated
                finished = sim_request.state is _FINISHED
                if generated > sent or finished:
                    parts = [
                        encoder.tokens(
                            sent, generated, sim_request.finish_reason if finished else None
                        )
                    ]
                    if role_pending:
                        parts.insert(0, encoder.role_chunk())
                        role_pending = False
                    sent = generated
                    if finished:
                        if parsed.include_usage:
                            parts.append(
                                encoder.usage_chunk(
                                    sim_request.prompt_len,
                                    generated,
                                    max(0, sim_request.num_cached_tokens),
                                )
                            )
                        parts.append(SSE_DONE)
                    await response.write(b"".join(parts))
                    if finished:
                        break
                elif sim_request.state is _ABORTED:
                    break  # the engine stopped: end the stream without [DONE]
                await sim_request.wait_for_update()
            await response.write_eof()
        except ConnectionResetError:
            # The client went away and handler cancellation is off: abort in the caller's
            # finally and let aiohttp finish the dead connection quietly.
            pass
        return response


def create_sim_app(
    config: SimConfig,
    *,
    clock: Callable[[], float] | None = None,
    tokenizer: Tokenizer | None = None,
) -> web.Application:
    """Build one simulated vLLM server. ``clock`` is a monotonic clock in seconds (default
    ``time.monotonic``); pass a loaded ``tokenizer`` to share one between several sims."""
    clock = clock if clock is not None else time.monotonic
    engine = create_engine(config, clock=clock)
    registry = create_registry(engine, config.model)
    handlers = SimHandlers(config, engine, registry, clock=clock, tokenizer=tokenizer)

    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE_BYTES)
    app[SIM_CONFIG_KEY] = config
    app[SIM_ENGINE_KEY] = engine
    app[SIM_REGISTRY_KEY] = registry
    app.cleanup_ctx.append(handlers.tokenizer_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/v1/models", handlers.models)
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
    """The one place an :class:`ApiError` becomes an OpenAI-style JSON error response."""
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


def _usage(sim_request: SimRequest) -> dict[str, Any]:
    return usage_dict(
        sim_request.prompt_len, sim_request.num_generated, max(0, sim_request.num_cached_tokens)
    )


def _json_response(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
