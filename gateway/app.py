"""The app factory: ``create_app(cfg, deps)`` wires the gateway from config and dependencies.

Resources with a lifetime (the relay's client session, the control-plane session used by the
scraper, model discovery and the health checks of ejected endpoints, their background tasks)
live in ``cleanup_ctx`` generators, so a
test that builds the app gets exactly what production gets, and shutdown releases everything.
The two sessions are configured for their jobs: the relay's passes bytes through untouched, the
control session asks for and decodes compressed answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from config import GatewayConfig, SchedulingConfig
from gateway.auth import AccessPolicy, metrics_secret
from gateway.backends.control_session import ControlSessionConfig
from gateway.backends.discovery import run_discovery
from gateway.backends.health_check import HealthChecker
from gateway.backends.kubernetes import TASK as KUBERNETES_TASK, PodWatcher
from gateway.backends.membership import PoolMembership, endpoint_of
from gateway.backends.outliers import OutlierDetector
from gateway.backends.peers import TASK as PEERS_TASK, PeerLoads, peer_urls
from gateway.backends.pool_state import ScrapeStatus
from gateway.backends.scraper import EndpointScraper
from gateway.deps import Dependencies
from gateway.director import Director
from gateway.faults import FaultReporter
from gateway.keys import gateway_key
from gateway.limits import RequestLimits
from gateway.middlewares import (
    make_access_middleware,
    make_body_middleware,
    make_error_middleware,
)
from gateway.passthrough import Passthrough
from gateway.pod_access import pod_headers, pod_ssl
from gateway.predictor_telemetry import PredictorMetrics, PredictorStateCollector
from gateway.response_pods import ResponsePods
from gateway.retries import RetryPolicy
from gateway.routes import setup_routes
from gateway.telemetry import GatewayMetrics
from gateway.tokenizer import PromptEncoder, load_tokenizer
from gateway.trainer import PredictorTrainer
from scheduler.builder import build_scheduler
from scheduler.datalayer.store import EndpointStore
from scheduler.framework.plugins import PluginHandle
from scheduler.framework.types import Endpoint
from scheduler.plugins import builtin_registry
from scheduler.predictor.runtime import LATENCY_PREDICTOR, LatencyPredictor
from scheduler.scheduler import Scheduler


class Gateway:
    """Everything one gateway instance owns; reachable from handlers via ``gateway_key``."""

    def __init__(
        self, cfg: GatewayConfig, deps: Dependencies, environ: Mapping[str, str] | None = None
    ) -> None:
        self.cfg = cfg
        self.clock = deps.clock
        self.rng = deps.rng
        self.started_at = int(time.time())
        self.draining = False
        self.engines = {endpoint_of(e).name: e.engine for e in cfg.pool.endpoints}
        self.store = EndpointStore(
            (endpoint_of(e) for e in cfg.pool.endpoints),
            staleness_s=cfg.pool.staleness_ms / 1000,
            static_models=cfg.pool.models,
            silent_after_s=cfg.upstream.silent_after_s,
        )
        self.metrics = GatewayMetrics(self.store, deps.clock)
        self.scrape_status = {e.name: ScrapeStatus() for e in self.store.endpoints}
        """What each endpoint's last scrape found (``/ready`` shows it)."""
        self.predictor = LatencyPredictor(
            clock=deps.clock,
            rng=deps.rng,
            per_bucket=cfg.predictor.samples_per_bucket,
            shape_label=cfg.predictor.shape_label or None,
        )
        self._registry = deps.plugin_registry or builtin_registry()
        scheduler = self.new_scheduler(cfg.scheduling)
        self.trainer = PredictorTrainer(
            self.predictor,
            cfg.predictor,
            shapes=self.endpoint_shapes,
            clock=deps.clock,
            worker=deps.training_worker,
            rng=deps.rng,
            on_loop_error=self.metrics.background_task_errors.labels("trainer").inc,
        )
        if self.predictor.enabled:
            predictor_metrics = PredictorMetrics(self.metrics.registry)
            self.predictor.hooks = predictor_metrics
            self.metrics.registry.register(PredictorStateCollector(self.predictor, self.trainer))
        self.limits = RequestLimits.from_config(cfg.server)
        self._environ = os.environ if environ is None else environ
        self.access = AccessPolicy.from_config(cfg, self._environ)
        """Client API keys, the /metrics token and the Authorization policy."""
        # A bad CA file or pod token fails here, at start, naming its key.
        self._pod_ssl = pod_ssl(cfg.upstream)
        self._pod_headers = pod_headers(cfg.upstream)
        self._session_factory = deps.session_factory
        self._control_session_factory = deps.control_session_factory
        self._session: aiohttp.ClientSession | None = None
        self._trainer_task: asyncio.Task[None] | None = None
        self._kube_api = deps.kube_api
        self.peer_loads: PeerLoads | None = None
        """With ``pool.peers``: the other replicas' in-flight loads (while the app runs)."""
        self.pod_watcher: PodWatcher | None = None
        """With ``pool.kubernetes``: the pods' watch, which sets the pool (while the app runs)."""
        self._control_session: aiohttp.ClientSession | None = None
        self.response_pods = ResponsePods(cfg.server.max_response_ids)
        """The endpoint of each recent Responses API response (``previous_response_id``)."""
        self.outliers = OutlierDetector(
            self.store, cfg.upstream, metrics=self.metrics, clock=deps.clock
        )
        self.retries = RetryPolicy(cfg.upstream, clock=deps.clock, rng=deps.rng)
        self.faults = FaultReporter(
            store=self.store, outliers=self.outliers, metrics=self.metrics, clock=deps.clock
        )
        self.passthrough = Passthrough(
            cfg=cfg,
            store=self.store,
            session=self.session,
            retries=self.retries,
            faults=self.faults,
            clock=deps.clock,
            rng=deps.rng,
        )
        self._discovery_wake = asyncio.Event()
        self.membership = PoolMembership(
            self.store,
            engines=self.engines,
            statuses=self.scrape_status,
            start_scraper=self._scrape,
            on_leave=(
                self.outliers.forget,
                self.metrics.forget_endpoint,
                lambda name: self.director.policy.scheduler.forget_endpoint(name),
            ),
            on_join=(lambda _name: self._discovery_wake.set(),),
        )
        """Endpoints joining and leaving while the gateway runs (discovery, reload)."""
        self.director = Director(
            cfg=cfg,
            store=self.store,
            scheduler=scheduler,
            encoder=PromptEncoder(deps.tokenizer or load_tokenizer(cfg.tokenizer.tokenizer)),
            session=self.session,
            metrics=self.metrics,
            observers=deps.observers,
            clock=deps.clock,
            rng=deps.rng,
            retries=self.retries,
            faults=self.faults,
            response_pods=self.response_pods,
        )

    def new_scheduler(self, scheduling: SchedulingConfig) -> Scheduler:
        """A scheduler for ``scheduling``, its plugins sharing this gateway's predictor. Raises
        ``ConfigError`` (naming the plugin and parameter) when the plugins reject it."""
        handle = PluginHandle(clock=self.clock, rng=self.rng)
        handle.services.put(LATENCY_PREDICTOR, self.predictor)
        return build_scheduler(
            scheduling, registry=self._registry, handle=handle, timer=self.metrics
        )

    def _peer_tasks(self) -> list[asyncio.Task[None]]:
        """Polling the other replicas' in-flight loads, and finding them (Kubernetes)."""
        cfg = self.cfg.pool.peers
        token = metrics_secret(self.cfg.server)
        loads = self.peer_loads = PeerLoads(
            cfg,
            self.store.inflight,
            session=self.control_session,
            clock=self.clock,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            on_error=self.metrics.background_task_errors.labels(PEERS_TASK).inc,
        )
        tasks = [asyncio.create_task(loads.run(), name="peers")]
        if cfg.kubernetes is not None:
            own = self._environ.get("POD_NAME") or socket.gethostname()
            watcher = PodWatcher(
                cfg.kubernetes,
                on_change=lambda pods: loads.set_discovered(peer_urls(pods, own)),
                clock=self.clock,
                rng=self.rng,
                on_error=self.metrics.background_task_errors.labels(PEERS_TASK).inc,
                api=self._kube_api,
            )
            tasks.append(asyncio.create_task(watcher.run(), name="peers-kubernetes"))
        return tasks

    def start_trainer(self) -> None:
        """Train the predictor in the background, unless it is not used or already trained."""
        if self.predictor.enabled and self._trainer_task is None:
            self._trainer_task = asyncio.create_task(self._run_trainer(), name="trainer")

    async def _run_trainer(self) -> None:
        await self.trainer.restore()
        await self.trainer.run()

    def endpoint_shapes(self) -> dict[str, str]:
        label = self.cfg.predictor.shape_label
        if not label:
            return {}
        return {e.name: e.labels[label] for e in self.store.endpoints if label in e.labels}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream session exists only while the app runs")
        return self._session

    def control_session(self) -> aiohttp.ClientSession:
        if self._control_session is None:
            raise RuntimeError("the control session exists only while the app runs")
        return self._control_session

    async def sessions_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self._session = self._session_factory(self.cfg.upstream)
        # Scrapes, discovery and health checks get their own small pool so they never wait
        # behind streams.
        self._control_session = self._control_session_factory(
            ControlSessionConfig(
                connect_timeout_s=self.cfg.upstream.connect_timeout_s,
                request_timeout_s=self.cfg.pool.scrape_timeout_ms / 1000,
                # Three per endpoint; the pool may grow while running (discovery, reload),
                # each task holds one connection at most, so the cap is only a safety net.
                max_connections=3 * max(64, len(self.store.endpoints)),
                ssl=self._pod_ssl,
                headers=self._pod_headers,
            )
        )
        yield
        await self._session.close()
        await self._control_session.close()
        self._session = self._control_session = None

    def _scrape(
        self, endpoint: Endpoint, engine: str, status: ScrapeStatus
    ) -> Coroutine[Any, Any, None]:
        return EndpointScraper(
            endpoint,
            engine=engine,
            store=self.store,
            session=self.control_session,
            cfg=self.cfg.pool,
            metrics=self.metrics,
            clock=self.clock,
            rng=self.rng,
            status=status,
        ).run()

    async def background_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self.membership.start()
        tasks: list[asyncio.Task[None]] = []
        if self.cfg.upstream.consecutive_failures:  # 0: outlier detection off, no ejections
            tasks.append(
                asyncio.create_task(
                    HealthChecker(
                        self.outliers,
                        store=self.store,
                        session=self.control_session,
                        timeout_s=self.cfg.pool.scrape_timeout_ms / 1000,
                        metrics=self.metrics,
                        rng=self.rng,
                    ).run(),
                    name="health_check",
                )
            )
        if self.predictor.enabled:
            await self.trainer.restore()
            self._trainer_task = asyncio.create_task(self.trainer.run(), name="trainer")
        if self.cfg.pool.kubernetes is not None:
            self.pod_watcher = PodWatcher(
                self.cfg.pool.kubernetes,
                on_change=self.membership.apply,
                clock=self.clock,
                rng=self.rng,
                on_error=self.metrics.background_task_errors.labels(KUBERNETES_TASK).inc,
                api=self._kube_api,
            )
            tasks.append(asyncio.create_task(self.pod_watcher.run(), name="kubernetes"))
        peers = self.cfg.pool.peers
        if peers.urls or peers.kubernetes is not None:
            tasks += self._peer_tasks()
        if not self.cfg.pool.models:
            tasks.append(
                asyncio.create_task(
                    run_discovery(
                        self.store,
                        self.control_session,
                        self.cfg.pool,
                        metrics=self.metrics,
                        clock=self.clock,
                        rng=self.rng,
                        wake=self._discovery_wake,
                    ),
                    name="discovery",
                )
            )
        yield
        if self._trainer_task is not None:
            tasks.append(self._trainer_task)
            self._trainer_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.membership.close()
        await asyncio.get_running_loop().run_in_executor(None, self.trainer.close)

    async def on_shutdown(self, app: web.Application) -> None:
        self.draining = True


def create_app(
    cfg: GatewayConfig,
    deps: Dependencies | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> web.Application:
    """``environ``: where ``SLOGATE_API_KEYS`` is read (default: the process environment)."""
    deps = deps or Dependencies()
    gateway = Gateway(cfg, deps, environ)
    app = web.Application(
        client_max_size=cfg.server.max_body_bytes,
        middlewares=[
            make_error_middleware(gateway.metrics, deps.clock),
            make_access_middleware(lambda: gateway.access),
            make_body_middleware(
                max_body_bytes=cfg.server.max_body_bytes,
                timeout_s=cfg.server.body_read_timeout_s,
            ),
        ],
    )
    app[gateway_key] = gateway
    app.cleanup_ctx.append(gateway.sessions_ctx)
    app.cleanup_ctx.append(gateway.background_ctx)
    app.on_shutdown.append(gateway.on_shutdown)
    setup_routes(app)
    return app
