"""Pool membership from the Kubernetes API: the ready pods matching a selector, watched live.

The protocol is client-go's reflector, in small. LIST the pods (``labelSelector``) and keep the
list's ``resourceVersion``; WATCH from it with ``allowWatchBookmarks`` and a jittered
``timeoutSeconds``, keeping the ``resourceVersion`` of every event, bookmarks included. A watch
that ends (the server's timeout, a dropped connection) is re-established from the last
``resourceVersion`` after a short jittered backoff, without relisting; only 410 Gone (that
version was compacted away) makes it relist, and a relist computes the set from scratch, so pods
deleted meanwhile leave. Any other failure (401/403, a refused connection, garbage) is logged,
reported through ``on_error`` and retried after a capped backoff: the watcher never dies.

A pod is an endpoint while it is Running, Ready, has an IP and is not terminating.

How the API server is reached (service account or kubeconfig): :mod:`gateway.backends.kube_access`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from config import EndpointConfig, KubernetesDiscoveryConfig
from gateway.backends.backoff import Backoff
from gateway.backends.kube_access import (
    SERVICE_ACCOUNT_DIR,
    KubeApi,
    KubernetesError,
    load_api,
    resolve_namespace,
)

logger = logging.getLogger(__name__)

TASK = "kubernetes"
ENGINES = ("vllm", "sglang")
_CONNECT_TIMEOUT_S = 5.0
_LIST_TIMEOUT_S = 60.0
_WATCH_SILENCE_GRACE_S = 30.0
"""A watch silent this long past its ``timeoutSeconds`` hangs: it is dropped."""
_MAX_EVENT_BYTES = 16 * 1024 * 1024


class BadResponse(KubernetesError):
    """Not what the API server sends: bad JSON, an event or a pod without its fields."""


class ApiStatusError(KubernetesError):
    """The API server answered an error: an HTTP status, or a watch's ERROR event."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}".rstrip())
        self.code = code


class ResourceExpired(ApiStatusError):
    """410 Gone: the resourceVersion to watch from was compacted away; relist."""


class WatchDropped(KubernetesError):
    """The watch's connection broke (or fell silent) before the server ended it."""

    def __init__(self, cause: BaseException, events: int) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.events = events


def pod_endpoint(pod: Mapping[str, Any], cfg: KubernetesDiscoveryConfig) -> EndpointConfig | None:
    """The endpoint a pod is, or None while it is not one (not ready, terminating, no IP)."""
    metadata = _mapping(pod.get("metadata"))
    status = _mapping(pod.get("status"))
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise BadResponse("a pod without metadata.name")
    labels = {k: v for k, v in _mapping(metadata.get("labels")).items() if isinstance(v, str)}
    ip = status.get("podIP")
    ready = any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    if (
        not isinstance(ip, str)
        or not ip
        or status.get("phase") != "Running"
        or not ready
        or metadata.get("deletionTimestamp")
        or any(labels.get(k) != v for k, v in cfg.selector.items())
    ):
        return None
    host = f"[{ip}]" if ":" in ip else ip
    engine = labels.get(cfg.engine_label, "") if cfg.engine_label else ""
    return EndpointConfig(
        url=f"{cfg.scheme}://{host}:{cfg.port}",
        name=name,
        labels=labels,
        engine=engine if engine in ENGINES else "vllm",
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class _Connection:
    api: KubeApi
    pods_url: str
    session: aiohttp.ClientSession


class PodWatcher:
    """Tells ``on_change`` the full, name-sorted endpoint set each time it changes."""

    def __init__(
        self,
        cfg: KubernetesDiscoveryConfig,
        *,
        on_change: Callable[[Sequence[EndpointConfig]], object],
        clock: Callable[[], float],
        rng: random.Random,
        on_error: Callable[[], None] | None = None,
        api: KubeApi | None = None,
        environ: Mapping[str, str] | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self._cfg = cfg
        self._on_change = on_change
        self._clock = clock
        self._rng = rng
        self._on_error = on_error or (lambda: None)
        self._api = api
        self._environ = environ
        self._service_account_dir = service_account_dir
        self._backoff = Backoff(base_s=backoff_base_s, cap_s=backoff_cap_s, rng=rng)
        self._selector = ",".join(f"{k}={v}" for k, v in sorted(cfg.selector.items()))
        self._pods: dict[str, EndpointConfig] = {}
        """The pods that are endpoints, by name."""
        self._published: tuple[EndpointConfig, ...] | None = None
        self._resource_version: str | None = None
        """Where the next watch starts; None: relist first."""

    @property
    def synced(self) -> bool:
        """True once the first list has been applied."""
        return self._published is not None

    async def run(self) -> None:
        """List and watch until cancelled."""
        connection: _Connection | None = None
        try:
            while True:
                try:
                    if connection is None:
                        connection = await self._connect()
                    if self._resource_version is None:
                        await self._list(connection)
                    await self._watch(connection)
                except ResourceExpired as exc:
                    logger.info("kubernetes.relist", extra={"task": TASK, "reason": str(exc)})
                    self._resource_version = None
                    delay_s = self._backoff.next_delay_s()
                except WatchDropped as exc:
                    if exc.events:
                        self._backoff.reset()
                    delay_s = self._backoff.next_delay_s()
                    logger.info(
                        "kubernetes.watch_dropped",
                        extra={
                            "task": TASK,
                            "error": str(exc),
                            "events": exc.events,
                            "resource_version": self._resource_version,
                            "retry_in_s": round(delay_s, 3),
                        },
                    )
                except (KubernetesError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    delay_s = self._failed(exc, expected=True)
                except Exception as exc:  # the watcher outlives whatever went wrong
                    delay_s = self._failed(exc, expected=False)
                else:  # the server ended the watch: re-watch soon, from where it ended
                    self._backoff.reset()
                    delay_s = self._backoff.next_delay_s()
                    self._backoff.reset()
                await asyncio.sleep(delay_s)
        finally:
            if connection is not None:
                await connection.session.close()

    def _failed(self, exc: Exception, *, expected: bool) -> float:
        delay_s = self._backoff.next_delay_s()
        self._on_error()
        logger.warning(
            "kubernetes.error" if expected else "kubernetes.unexpected_error",
            exc_info=None if expected else exc,
            extra={
                "task": TASK,
                "error": str(exc) or type(exc).__name__,
                "consecutive": self._backoff.failures,
                "retry_in_s": round(delay_s, 3),
            },
        )
        return delay_s

    async def _connect(self) -> _Connection:
        environ = os.environ if self._environ is None else self._environ
        api = self._api or await load_api(
            self._cfg.kubeconfig, environ=environ, service_account_dir=self._service_account_dir
        )
        namespace = await resolve_namespace(
            self._cfg.namespace,
            api=api,
            environ=environ,
            namespace_file=self._service_account_dir / "namespace",
        )
        logger.info(
            "kubernetes.watching",
            extra={"server": api.server, "namespace": namespace, "selector": self._selector},
        )
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=api.tls or True, limit=4),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"Accept": "application/json", "Accept-Encoding": "gzip, deflate"},
        )
        pods_url = f"{api.server}/api/v1/namespaces/{quote(namespace, safe='')}/pods"
        return _Connection(api, pods_url, session)

    async def _headers(self, api: KubeApi) -> dict[str, str]:
        authorization = await api.authorization()
        return {"Authorization": authorization} if authorization else {}

    async def _list(self, connection: _Connection) -> None:
        async with connection.session.get(
            connection.pods_url,
            params={"labelSelector": self._selector},
            headers=await self._headers(connection.api),
            timeout=aiohttp.ClientTimeout(total=_LIST_TIMEOUT_S, sock_connect=_CONNECT_TIMEOUT_S),
        ) as resp:
            await _raise_for_status(resp)
            body = await resp.read()
        pod_list = _json_object(body, "pod list")
        items = pod_list.get("items") or []
        resource_version = _mapping(pod_list.get("metadata")).get("resourceVersion")
        if not isinstance(items, list) or not isinstance(resource_version, str):
            raise BadResponse("a pod list without items or metadata.resourceVersion")
        pods = {}
        for item in items:
            endpoint = pod_endpoint(_mapping(item), self._cfg)
            if endpoint is not None:
                pods[endpoint.name] = endpoint
        self._pods = pods
        self._resource_version = resource_version
        self._backoff.reset()
        self._publish()

    async def _watch(self, connection: _Connection) -> None:
        self._publish()  # again, if telling the last change failed
        timeout_s = max(1, round(self._cfg.resync_s * self._rng.uniform(0.5, 1.0)))
        params = {
            "labelSelector": self._selector,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": self._resource_version or "",
            "timeoutSeconds": str(timeout_s),
        }
        started = self._clock()
        events = 0
        async with connection.session.get(
            connection.pods_url,
            params=params,
            headers=await self._headers(connection.api),
            timeout=aiohttp.ClientTimeout(
                sock_connect=_CONNECT_TIMEOUT_S, sock_read=timeout_s + _WATCH_SILENCE_GRACE_S
            ),
        ) as resp:
            await _raise_for_status(resp)
            while True:
                try:
                    line = await resp.content.readline(max_line_length=_MAX_EVENT_BYTES)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise WatchDropped(exc, events) from exc
                if not line:
                    break
                if not line.endswith(b"\n"):
                    raise WatchDropped(ConnectionResetError("cut mid-event"), events)
                if line.strip():
                    self._apply(line)
                    events += 1
        logger.debug(
            "kubernetes.watch_ended",
            extra={
                "task": TASK,
                "events": events,
                "after_s": round(self._clock() - started, 3),
                "resource_version": self._resource_version,
            },
        )

    def _apply(self, line: bytes) -> None:
        event = _json_object(line, "watch event")
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise BadResponse(f"a {kind} watch event without an object")
        if kind == "ERROR":
            code = obj.get("code")
            message = f"{obj.get('reason', '')}: {obj.get('message', '')}"
            raise (ResourceExpired if code == 410 else ApiStatusError)(
                code if isinstance(code, int) else 0, message
            )
        resource_version = _mapping(obj.get("metadata")).get("resourceVersion")
        if not isinstance(resource_version, str) or not resource_version:
            raise BadResponse(f"a {kind} watch event without metadata.resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            endpoint = pod_endpoint(obj, self._cfg)
            name = _mapping(obj.get("metadata"))["name"]
            if endpoint is None or kind == "DELETED":
                self._pods.pop(name, None)
            else:
                self._pods[name] = endpoint
        elif kind != "BOOKMARK":
            raise BadResponse(f"a watch event of type {kind!r}")
        self._resource_version = resource_version
        self._publish()

    def _publish(self) -> None:
        current = tuple(sorted(self._pods.values(), key=lambda e: e.name))
        if current == self._published:
            return
        before = {e.name: e for e in self._published or ()}
        now = {e.name: e for e in current}
        self._on_change(current)
        self._published = current
        logger.info(
            "kubernetes.pods",
            extra={
                "task": TASK,
                "count": len(current),
                "added": sorted(now.keys() - before.keys()),
                "removed": sorted(before.keys() - now.keys()),
                "changed": sorted(n for n in now.keys() & before.keys() if now[n] != before[n]),
            },
        )


def _json_object(body: bytes, what: str) -> Mapping[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadResponse(f"the {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadResponse(f"the {what} is not a JSON object")
    return value


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status == 200:
        return
    body = await resp.content.read(64 * 1024)
    try:
        status = orjson.loads(body)
        message = f"{status.get('reason', '')}: {status.get('message', '')}"
    except (orjson.JSONDecodeError, AttributeError):
        message = resp.reason or ""
    raise (ResourceExpired if resp.status == 410 else ApiStatusError)(resp.status, message)
