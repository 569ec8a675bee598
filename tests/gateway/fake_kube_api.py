"""A fake Kubernetes API server, pods only: what the pod watcher talks to in the tests.

It speaks the real protocol of ``GET /api/v1/namespaces/{namespace}/pods``, warts included:

- a list is a ``PodList`` whose ``metadata.resourceVersion`` is the store's current version,
  filtered by the ``labelSelector`` (equality terms ``k=v``, ``k==v``, ``k!=v``; anything else
  is a 400), gzip-compressed when the client accepts it (as the API server does for large lists);
- ``?watch=1`` answers 200 and then a chunked stream of newline-delimited watch events: every
  change after ``resourceVersion`` (replayed from the history, then live), ``ADDED`` /
  ``MODIFIED`` / ``DELETED`` with the whole pod, seen through the selector (a pod relabelled out
  of it is ``DELETED`` for that watch, relabelled into it ``ADDED``); ``BOOKMARK`` events (only
  ``metadata.resourceVersion``) only to watches that asked with ``allowWatchBookmarks=true``;
  the stream ends cleanly after ``timeoutSeconds``;
- a watch from a compacted ``resourceVersion`` gets 200 and one ``ERROR`` event holding a
  ``Status`` with code 410 (what the watch cache answers), or a plain HTTP 410 with
  ``gone_as_http_status``;
- errors are ``Status`` objects.

The test drives it: add, change and delete pods (each bumps the global resourceVersion), send
bookmarks, compact the history, end or drop the open watches, answer an error status for a while,
send garbage; and it records every request, so a test can say "re-watched from 7 without
relisting".
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Pod = dict[str, Any]


def make_pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    labels: Mapping[str, str] | None = None,
    namespace: str = "default",
    phase: str = "Running",
    ready: bool = True,
    terminating: bool = False,
) -> Pod:
    """A pod as the API server returns it (the fields the watcher reads, and some it must not
    mind)."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True" if ready else "False"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
        "hostIP": "192.0.2.10",
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": dict(labels if labels is not None else {"app": "llm"}),
        "annotations": {"kubectl.kubernetes.io/default-container": "vllm"},
    }
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        metadata["deletionGracePeriodSeconds"] = 30
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": status,
    }


@dataclass(frozen=True)
class RecordedRequest:
    namespace: str
    watch: bool
    params: Mapping[str, str]
    authorization: str | None

    @property
    def resource_version(self) -> str | None:
        return self.params.get("resourceVersion")


@dataclass(frozen=True)
class _Change:
    rv: int
    type: str
    pod: Pod
    before: Pod | None


_END = object()
_DROP = object()


@dataclass(eq=False)
class _Watch:
    request: web.Request
    namespace: str
    selector: list[tuple[str, str, str]]
    bookmarks: bool
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)


class FakeKubeApi:
    def __init__(self) -> None:
        self.url = ""
        """Where it is served, once it is."""
        self.rv = 1
        self.compacted_rv = 0
        """Watches from a resourceVersion below this get 410 Gone."""
        self.gone_as_http_status = False
        self.requests: list[RecordedRequest] = []
        self._pods: dict[tuple[str, str], Pod] = {}
        self._history: list[_Change] = []
        self._watches: set[_Watch] = set()
        self._failure: tuple[int, int | None] | None = None
        self.app = web.Application()
        self.app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._handle)

    # -- what the test does --------------------------------------------------------------------
    def put(self, pod: Pod) -> int:
        """Create or replace a pod (ADDED or MODIFIED); its new resourceVersion."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        before = self._pods.get(key)
        return self._change("MODIFIED" if before else "ADDED", copy.deepcopy(pod), before)

    def delete(self, name: str, namespace: str = "default") -> int:
        before = self._pods[(namespace, name)]
        return self._change("DELETED", copy.deepcopy(before), before)

    def bookmark(self) -> int:
        """Unrelated writes moved the store on; tell the watches that asked for bookmarks."""
        self.rv += 1
        event = {
            "type": "BOOKMARK",
            "object": {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
            },
        }
        for watch in self._watches:
            if watch.bookmarks:
                watch.queue.put_nowait(orjson.dumps(event) + b"\n")
        return self.rv

    def compact(self) -> None:
        """etcd compaction: every resourceVersion handed out so far is too old to watch from."""
        self.rv += 1
        self.compacted_rv = self.rv

    def end_watches(self) -> None:
        """The server's timeout: every open watch ends cleanly."""
        for watch in self._watches:
            watch.queue.put_nowait(_END)

    def drop_watches(self) -> None:
        """Every open watch's connection is cut mid-stream, nothing more gets through."""
        for watch in self._watches:
            if watch.request.transport is not None:
                watch.request.transport.abort()
            watch.queue.put_nowait(_DROP)

    def send_raw(self, line: bytes) -> None:
        """Something that is not a watch event, to every open watch."""
        for watch in self._watches:
            watch.queue.put_nowait(line)

    def fail(self, status: int, times: int | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests (None: until ``recover``)."""
        self._failure = (status, times)

    def recover(self) -> None:
        self._failure = None

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def lists(self) -> list[RecordedRequest]:
        return [r for r in self.requests if not r.watch]

    def watches(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.watch]

    # -- the store -----------------------------------------------------------------------------
    def _change(self, kind: str, pod: Pod, before: Pod | None) -> int:
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if kind == "DELETED":
            del self._pods[key]
        else:
            self._pods[key] = pod
        change = _Change(self.rv, kind, pod, before)
        self._history.append(change)
        for watch in self._watches:
            if (line := _seen_by(watch, change)) is not None:
                watch.queue.put_nowait(line)
        return self.rv

    # -- the API -------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        query = request.query
        watch = query.get("watch") in ("1", "true")
        self.requests.append(
            RecordedRequest(namespace, watch, dict(query), request.headers.get("Authorization"))
        )
        if self._failure is not None:
            status, times = self._failure
            if times is not None:
                self._failure = (status, times - 1) if times > 1 else None
            return _status(
                status,
                {401: "Unauthorized", 403: "Forbidden"}.get(status, "InternalError"),
                "injected",
            )
        try:
            selector = _parse_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            return _status(400, "BadRequest", str(exc))
        if watch:
            return await self._watch(request, namespace, selector)
        items = [
            pod
            for (ns, _), pod in sorted(self._pods.items())
            if ns == namespace and _matches(pod, selector)
        ]
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }
        resp = web.Response(body=orjson.dumps(body), content_type="application/json")
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression()
        return resp

    async def _watch(
        self, request: web.Request, namespace: str, selector: list[tuple[str, str, str]]
    ) -> web.StreamResponse:
        query = request.query
        since = int(query.get("resourceVersion") or self.rv)
        if since < self.compacted_rv and self.gone_as_http_status:
            return _status(410, "Expired", f"too old resource version: {since}")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if since < self.compacted_rv:
            gone = _status_object(410, "Expired", f"too old resource version: {since}")
            await resp.write(orjson.dumps({"type": "ERROR", "object": gone}) + b"\n")
            await resp.write_eof()
            return resp
        watch = _Watch(
            request,
            namespace,
            selector,
            query.get("allowWatchBookmarks") == "true",
        )
        for change in self._history:
            if change.rv > since and (line := _seen_by(watch, change)) is not None:
                watch.queue.put_nowait(line)
        self._watches.add(watch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(query.get("timeoutSeconds", "1800"))
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is _END:
                    break
                if item is _DROP:  # the transport is gone: no final chunk, no clean end
                    return resp
                assert isinstance(item, bytes)
                await resp.write(item)
        finally:
            self._watches.discard(watch)
        await resp.write_eof()
        return resp


def _seen_by(watch: _Watch, change: _Change) -> bytes | None:
    """The event ``change`` makes on ``watch`` (None: none), as the watch cache filters it."""
    if change.pod["metadata"]["namespace"] != watch.namespace:
        return None
    now = _matches(change.pod, watch.selector)
    before = change.before is not None and _matches(change.before, watch.selector)
    if change.type == "DELETED":
        kind = "DELETED" if before else None
    elif change.type == "ADDED":
        kind = "ADDED" if now else None
    elif now:
        kind = "MODIFIED" if before else "ADDED"
    else:
        kind = "DELETED" if before else None
    if kind is None:
        return None
    return orjson.dumps({"type": kind, "object": change.pod}) + b"\n"


def _parse_selector(text: str) -> list[tuple[str, str, str]]:
    terms = []
    for term in filter(None, text.split(",")):
        for op in ("!=", "==", "="):
            key, found, value = term.partition(op)
            if found:
                terms.append((key.strip(), "!=" if op == "!=" else "=", value.strip()))
                break
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return terms


def _matches(pod: Pod, selector: list[tuple[str, str, str]]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return all((labels.get(k) == v) == (op == "=") for k, op, v in selector)


def _status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.Response(
        status=code,
        body=orjson.dumps(_status_object(code, reason, message)),
        content_type="application/json",
    )
