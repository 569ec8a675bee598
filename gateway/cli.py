"""The ``slogate`` command: ``serve`` (the gateway), ``sim`` (a simulated vLLM server), ``demo``.

The subcommands and their flags are a contract other tools rely on: add, never rename.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

from aiohttp import web

from config import (
    ConfigError,
    EndpointConfig,
    GatewayConfig,
    SchedulingConfig,
    load_config,
    preset_names,
)
from config.loader import check_pool, check_scheduling
from gateway.app import create_app
from gateway.keys import gateway_key
from gateway.listener import listener_settings
from gateway.logs import configure_logging
from gateway.reload import ConfigReloader, watched_files
from gateway.tls import CertificateReloader

logger = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed, the stdlib loop otherwise: the one place the loop is chosen."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def parse_endpoint(value: str) -> EndpointConfig:
    """``URL`` or ``NAME=URL``."""
    name, sep, url = value.partition("=")
    if not sep:
        name, url = "", value
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL (or NAME=URL)")
    return EndpointConfig(url=url, name=name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slogate",
        description="LLM inference gateway that routes each request to the fastest replica.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML configuration file")
    serve.add_argument(
        "--endpoint",
        action="append",
        type=parse_endpoint,
        default=[],
        metavar="URL",
        help="a model server (repeatable; NAME=URL names it); adds to the config's endpoints",
    )
    serve.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="URL",
        help="another replica of this gateway in front of the same pods (repeatable): the "
        "replicas share their in-flight counts; adds to the config's pool.peers.urls",
    )
    serve.add_argument("--preset", help=f"scheduling preset: {', '.join(preset_names())}")
    serve.add_argument("--host", help="listen address (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    sim = sub.add_parser("sim", help="run one simulated vLLM model server")
    from loadtest.sim.cli import add_sim_arguments

    add_sim_arguments(sim)

    demo = sub.add_parser("demo", help="run the gateway on a simulated fleet and show it working")
    demo.add_argument("--pods", type=int, default=4, help="simulated pods (default 4)")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: Ctrl-C)",
    )
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument("--preset", help="scheduling preset (default: the default preset)")
    return parser


def serve_config(args: argparse.Namespace) -> GatewayConfig:
    cfg = load_config(args.config)
    if args.endpoint:
        pool = dataclasses.replace(cfg.pool, endpoints=(*cfg.pool.endpoints, *args.endpoint))
        cfg = dataclasses.replace(cfg, pool=pool)
    if args.peer:
        peers = dataclasses.replace(cfg.pool.peers, urls=(*cfg.pool.peers.urls, *args.peer))
        cfg = dataclasses.replace(cfg, pool=dataclasses.replace(cfg.pool, peers=peers))
    if args.preset:
        cfg = dataclasses.replace(cfg, scheduling=SchedulingConfig(preset=args.preset))
    server = cfg.server
    if args.host:
        server = dataclasses.replace(server, host=args.host)
    if args.port is not None:
        server = dataclasses.replace(server, port=args.port)
    cfg = dataclasses.replace(cfg, server=server)
    if args.log_level:
        cfg = dataclasses.replace(
            cfg, logging=dataclasses.replace(cfg.logging, level=args.log_level)
        )
    # Re-validate the assembled config: overrides must obey the same rules as the file.
    check_scheduling(cfg.scheduling, "scheduling")
    check_pool(cfg.pool, "pool")
    if not cfg.pool.endpoints and cfg.pool.kubernetes is None:
        raise ConfigError(
            "pool.endpoints",
            [],
            "no endpoints: give --endpoint URL, or a config with pool.endpoints or pool.kubernetes",
        )
    return cfg


def run_gateway(cfg: GatewayConfig, args: argparse.Namespace | None = None) -> None:
    """Serve ``cfg``; with ``args`` (the command line it came from), SIGHUP and changes of the
    configuration file reload it (:mod:`gateway.reload`)."""
    configure_logging(cfg.logging.level, cfg.logging.format)
    app = create_app(cfg)
    gateway = app[gateway_key]
    config_path = None if args is None else args.config
    reloader = ConfigReloader(
        gateway,
        (lambda: cfg) if args is None else (lambda: serve_config(args)),
        environ=os.environ,
        files=watched_files(config_path),
    )
    if config_path and cfg.server.config_watch_s > 0:
        app.cleanup_ctx.append(_watch_ctx(reloader, cfg.server.config_watch_s))
    tls = CertificateReloader.from_config(
        cfg.server, on_error=gateway.metrics.background_task_errors.labels("tls_reload").inc
    )
    if tls is not None:
        app.cleanup_ctx.append(tls.ctx)
    logger.info(
        "gateway.start",
        extra={
            "host": cfg.server.host,
            "port": cfg.server.port,
            "tls": tls is not None,
            "client_auth": bool(gateway.access.api_keys),
            "endpoints": [e.url for e in cfg.pool.endpoints],
        },
    )
    loop = new_event_loop()
    try:
        loop.run_until_complete(
            serve_until_stopped(app, cfg, None if tls is None else tls.context, reloader)
        )
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _watch_ctx(
    reloader: ConfigReloader, interval_s: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(reloader.watch(interval_s), name="config_watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


async def serve_until_stopped(
    app: web.Application,
    cfg: GatewayConfig,
    ssl_context: ssl.SSLContext | None,
    reloader: ConfigReloader | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop in Kubernetes' order: readiness first.

    On SIGTERM ``/ready`` answers 503 for ``server.readiness_delay_s`` while requests are still
    served (endpoints controllers take the pod out of Services meanwhile); then the listener
    closes, in-flight requests get ``server.shutdown_timeout_s`` to finish, and whatever still
    runs is cancelled and counted in the ``gateway.stopped`` log line. SIGINT skips the delay.
    SIGHUP reloads the configuration through ``reloader`` (without one it is logged and
    ignored: its default action would end the process).
    """
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=logging.getLogger("slogate.access") if cfg.server.access_log else None,
        **listener_settings(cfg.server),
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        cfg.server.host,
        cfg.server.port,
        ssl_context=ssl_context,
        shutdown_timeout=cfg.server.shutdown_timeout_s,
    )
    await site.start()
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(received: signal.Signals) -> None:
        if not stop.done():
            stop.set_result(received)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
    else:
        loop.add_signal_handler(
            signal.SIGHUP, logger.warning, "gateway.reload_unavailable: SIGHUP ignored"
        )
    gateway = app[gateway_key]
    inflight = gateway.store.inflight
    try:
        received = await stop
        delay = cfg.server.readiness_delay_s if received is signal.SIGTERM else 0.0
        gateway.draining = True
        logger.info(
            "gateway.stopping",
            extra={"signal": received.name, "readiness_delay_s": delay, "in_flight": len(inflight)},
        )
        if delay:
            await asyncio.sleep(delay)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        draining_since = loop.time()
        at_deadline: list[int] = []

        async def count_at_deadline() -> None:
            await asyncio.sleep(max(0.0, cfg.server.shutdown_timeout_s - 0.01))
            at_deadline.append(len(inflight))

        watcher = asyncio.create_task(count_at_deadline())
        in_flight = len(inflight)
        await runner.cleanup()
        watcher.cancel()
        logger.info(
            "gateway.stopped",
            extra={
                "in_flight_at_close": in_flight,
                "cancelled": at_deadline[0] if at_deadline else 0,
                "drain_s": round(loop.time() - draining_since, 3),
            },
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            run_gateway(serve_config(args), args)
        elif args.command == "sim":
            from loadtest.sim.cli import run_sim

            run_sim(args)
        elif args.command == "demo":
            from gateway.demo import run_demo

            run_demo(pods=args.pods, duration_s=args.duration, port=args.port, preset=args.preset)
    except ConfigError as exc:
        print(f"slogate: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
