"""The cheapest proxy aiohttp allows: the floor under slogate's own overhead.

One handler, no parsing, no scheduling, no metrics: read the body, POST it upstream on one
shared session, stream the answer back. Benchmarks run it beside the gateway so that what
slogate adds on top of aiohttp itself is visible. Run:
``python -m loadtest.floor_proxy --upstream http://127.0.0.1:9001 --port 9002``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

session_key = web.AppKey("session", aiohttp.ClientSession)
upstream_key = web.AppKey("upstream", str)


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[session_key] = aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )
    yield
    await app[session_key].close()


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app[session_key].post(
        request.app[upstream_key] + request.path,
        data=body,
        headers={"content-type": "application/json"},
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status, headers={"content-type": upstream.headers["content-type"]}
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_floor_app(upstream: str) -> web.Application:
    app = web.Application()
    app[upstream_key] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/completions", relay)
    app.router.add_post("/v1/chat/completions", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from gateway.cli import new_event_loop

    web.run_app(
        create_floor_app(args.upstream),
        host=args.host,
        port=args.port,
        loop=new_event_loop(),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
