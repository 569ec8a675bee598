"""A model server that answers instantly: for measuring the gateway's own cost.

Speaks enough of vLLM's OpenAI API for the gateway (completions, chat, models, health, metrics)
and does no work: a streaming answer is ``max_tokens`` pre-encoded SSE events written at once,
then the usage chunk and ``[DONE]``. Run: ``python -m loadtest.instant_backend --port 9001``.
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

MODEL = "sim-llm"
_METRICS = (
    "# TYPE vllm:num_requests_waiting gauge\n"
    f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0.0\n'
    "# TYPE vllm:num_requests_running gauge\n"
    f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0\n'
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
    "# TYPE vllm:cache_config_info gauge\n"
    'vllm:cache_config_info{block_size="16",num_gpu_blocks="4096"} 1.0\n'
).encode()


def _chunk(api: str, text: str) -> bytes:
    if api == "chat":
        choice: dict[str, object] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "finish_reason": None}
        obj = "text_completion"
    payload = {"id": "x", "object": obj, "created": 0, "model": MODEL, "choices": [choice]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _usage(n: int) -> dict[str, object]:
    return {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}


_TOKEN = {api: _chunk(api, " tok") for api in ("chat", "completions")}
_DONE = b"data: [DONE]\n\n"


async def _generate(request: web.Request, api: str) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    n = int(body.get("max_tokens") or 16)
    if not body.get("stream"):
        text = " tok" * n
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if api == "chat"
            else {"index": 0, "text": text}
        )
        return web.Response(
            body=orjson.dumps({"id": "x", "choices": [choice], "usage": _usage(n)}),
            content_type="application/json",
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    usage = b""
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = b"data: " + orjson.dumps({"id": "x", "choices": [], "usage": _usage(n)}) + b"\n\n"
    await resp.write(_TOKEN[api] * n + usage + _DONE)
    await resp.write_eof()
    return resp


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=_METRICS, content_type="text/plain")


async def health(request: web.Request) -> web.Response:
    return web.Response()


def create_instant_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from gateway.cli import new_event_loop

    web.run_app(
        create_instant_app(),
        host=args.host,
        port=args.port,
        loop=new_event_loop(),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
