"""The pod watcher against a fake API server that speaks the real list + watch protocol: which
pods are endpoints, how the watch resumes (bookmarks, drops, 410 Gone), how failures are
counted and outlived, and how it finds the API server (kubeconfig, in-cluster)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from config import EndpointConfig, KubernetesDiscoveryConfig
from gateway.backends.kube_access import AccessError, KubeApi, load_api, resolve_namespace
from gateway.backends.kubernetes import PodWatcher, pod_endpoint
from tests.gateway.fake_kube_api import FakeKubeApi, make_pod
from tests.gateway.scrape_support import log_field

CFG = KubernetesDiscoveryConfig(
    selector={"app": "llm"}, namespace="default", port=8000, engine_label="engine"
)


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The fake fails only where a test tells it to."""
    yield
    errors = [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 40]
    assert not errors, errors[0].getMessage()


async def until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``check`` until it holds (the deadline is generous: never a speed assertion)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: never happened")
        await asyncio.sleep(0.005)


@dataclass
class Run:
    watcher: PodWatcher
    task: asyncio.Task[None]
    sets: list[tuple[EndpointConfig, ...]] = field(default_factory=list)
    errors: int = 0

    @property
    def names(self) -> list[str] | None:
        return [e.name for e in self.sets[-1]] if self.sets else None

    def endpoint(self, name: str) -> EndpointConfig:
        (found,) = [e for e in self.sets[-1] if e.name == name]
        return found


StartWatcher = Callable[..., Run]


@pytest.fixture
async def start_watcher() -> AsyncIterator[StartWatcher]:
    runs: list[Run] = []

    def start(
        api: KubeApi | None,
        cfg: KubernetesDiscoveryConfig = CFG,
        *,
        on_change: Callable[[Sequence[EndpointConfig]], None] | None = None,
        **kwargs: Any,
    ) -> Run:
        def record(endpoints: Sequence[EndpointConfig]) -> None:
            if on_change is not None:
                on_change(endpoints)
            run.sets.append(tuple(endpoints))

        def count_error() -> None:
            run.errors += 1

        watcher = PodWatcher(
            cfg,
            on_change=record,
            clock=time.monotonic,
            rng=random.Random(3),
            on_error=count_error,
            api=api,
            environ=kwargs.pop("environ", {}),
            service_account_dir=kwargs.pop("service_account_dir", Path("/nonexistent")),
            backoff_base_s=0.01,
            backoff_cap_s=0.05,
            **kwargs,
        )
        run = Run(watcher, asyncio.create_task(watcher.run(), name="kubernetes"))
        runs.append(run)
        return run

    yield start
    for run in runs:
        assert not run.task.done(), "the watcher died"
        run.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run.task


@pytest.fixture
async def fake(aiohttp_server: AiohttpServer) -> FakeKubeApi:
    api = FakeKubeApi()
    server = await aiohttp_server(api.app)
    api.url = url(server)
    return api


def url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def plain(fake: FakeKubeApi) -> KubeApi:
    return KubeApi(server=fake.url)


async def synced(run: Run) -> None:
    await until(lambda: run.watcher.synced, "the first list")


async def watching(fake: FakeKubeApi, count: int = 1) -> None:
    """Until the ``count``-th watch request is open on the fake."""
    await until(lambda: len(fake.watches()) >= count and fake.open_watches == 1, "a watch")


# -- which pods are endpoints -----------------------------------------------------------------
async def test_the_initial_list_reports_the_ready_pods_sorted_by_name(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    fake.put(make_pod("b", "10.0.0.2", labels={"app": "llm", "engine": "sglang"}))
    fake.put(make_pod("a", "10.0.0.1"))
    fake.put(make_pod("unready", "10.0.0.3", ready=False))
    fake.put(make_pod("no-ip", None))
    fake.put(make_pod("pending", "10.0.0.4", phase="Pending"))
    fake.put(make_pod("terminating", "10.0.0.5", terminating=True))
    fake.put(make_pod("other-app", "10.0.0.6", labels={"app": "web"}))
    fake.put(make_pod("elsewhere", "10.0.0.7", namespace="other"))
    run = start_watcher(plain(fake))
    await synced(run)
    assert run.sets == [
        (
            EndpointConfig(
                url="http://10.0.0.1:8000", name="a", labels={"app": "llm"}, engine="vllm"
            ),
            EndpointConfig(
                url="http://10.0.0.2:8000",
                name="b",
                labels={"app": "llm", "engine": "sglang"},
                engine="sglang",
            ),
        )
    ]
    (listed,) = fake.lists()
    assert listed.namespace == "default"
    assert listed.params["labelSelector"] == "app=llm"


async def test_an_empty_pool_is_reported_once_listed(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    run = start_watcher(plain(fake))
    await synced(run)
    assert run.sets == [()]


async def test_a_pod_joins_when_ready_and_leaves_when_unready(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    fake.put(make_pod("a", "10.0.0.1", ready=False))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    assert run.names == []
    fake.put(make_pod("a", "10.0.0.1"))
    await until(lambda: run.names == ["a"], "a joins")
    fake.put(make_pod("a", "10.0.0.1", ready=False))
    await until(lambda: run.names == [], "a leaves")
    assert len(fake.lists()) == 1


async def test_a_pod_that_changes_its_ip_changes_its_url(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    fake.put(make_pod("a", "10.0.0.1"))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    fake.put(make_pod("a", "10.0.0.9"))
    await until(lambda: run.endpoint("a").url == "http://10.0.0.9:8000", "the new url")
    assert run.names == ["a"]


async def test_a_deleted_pod_leaves(fake: FakeKubeApi, start_watcher: StartWatcher) -> None:
    fake.put(make_pod("a", "10.0.0.1"))
    fake.put(make_pod("b", "10.0.0.2"))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    fake.delete("a")
    await until(lambda: run.names == ["b"], "a leaves")


async def test_a_terminating_pod_leaves_at_once(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    fake.put(make_pod("a", "10.0.0.1"))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    fake.put(make_pod("a", "10.0.0.1", terminating=True))  # still Ready and Running
    await until(lambda: run.names == [], "a leaves")


async def test_only_pods_matching_every_selector_term_are_endpoints(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    cfg = KubernetesDiscoveryConfig(selector={"tier": "gpu", "app": "llm"}, namespace="default")
    fake.put(make_pod("both", "10.0.0.1", labels={"app": "llm", "tier": "gpu"}))
    fake.put(make_pod("one", "10.0.0.2", labels={"app": "llm", "tier": "cpu"}))
    run = start_watcher(plain(fake), cfg)
    await synced(run)
    await watching(fake)
    assert run.names == ["both"]
    assert fake.lists()[0].params["labelSelector"] == "app=llm,tier=gpu"
    assert fake.watches()[0].params["labelSelector"] == "app=llm,tier=gpu"
    fake.put(make_pod("one", "10.0.0.2", labels={"app": "llm", "tier": "gpu"}))
    await until(lambda: run.names == ["both", "one"], "one relabelled into the selector")
    fake.put(make_pod("both", "10.0.0.1", labels={"app": "llm", "tier": "cpu"}))
    await until(lambda: run.names == ["one"], "both relabelled out of it")


@pytest.mark.parametrize(
    ("engine_label", "labels", "engine"),
    [
        ("engine", {"engine": "sglang"}, "sglang"),
        ("engine", {"engine": "vllm"}, "vllm"),
        ("engine", {"engine": "trt-llm"}, "vllm"),
        ("engine", {}, "vllm"),
        ("", {"engine": "sglang"}, "vllm"),
    ],
)
def test_the_engine_label_names_the_engine(
    engine_label: str, labels: dict[str, str], engine: str
) -> None:
    cfg = KubernetesDiscoveryConfig(selector={"app": "llm"}, engine_label=engine_label)
    endpoint = pod_endpoint(make_pod("a", labels={"app": "llm", **labels}), cfg)
    assert endpoint is not None
    assert endpoint.engine == engine


def test_an_ipv6_pod_ip_is_bracketed_and_the_scheme_and_port_apply() -> None:
    cfg = KubernetesDiscoveryConfig(selector={"app": "llm"}, scheme="https", port=8443)
    endpoint = pod_endpoint(make_pod("a", "fd00::1:2"), cfg)
    assert endpoint is not None
    assert endpoint.url == "https://[fd00::1:2]:8443"


async def test_events_that_change_nothing_relevant_notify_nobody(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    fake.put(make_pod("a", "10.0.0.1"))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    pod = make_pod("a", "10.0.0.1")
    pod["metadata"]["annotations"]["touched"] = "yes"
    rv = fake.put(pod)
    fake.put(make_pod("not-ready", "10.0.0.2", ready=False))
    last = fake.put(make_pod("not-ready", "10.0.0.3", ready=False))
    fake.end_watches()
    await watching(fake, 2)
    assert rv < last
    assert fake.watches()[1].resource_version == str(last)
    assert run.names == ["a"]
    assert len(run.sets) == 1


# -- how the watch resumes --------------------------------------------------------------------
async def test_the_watch_asks_for_bookmarks_and_a_jittered_timeout(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    cfg = KubernetesDiscoveryConfig(selector={"app": "llm"}, namespace="default", resync_s=300)
    run = start_watcher(plain(fake), cfg)
    await synced(run)
    await watching(fake)
    assert len(fake.lists()) == 1
    (watch,) = fake.watches()
    assert watch.params["allowWatchBookmarks"] == "true"
    assert watch.resource_version == str(fake.rv)  # the list's: nothing changed since
    assert 150 <= int(watch.params["timeoutSeconds"]) <= 300


async def test_bookmarks_advance_the_resource_version_of_the_next_watch(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    fake.put(make_pod("a", "10.0.0.1"))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    fake.bookmark()
    bookmarked = fake.bookmark()
    fake.end_watches()  # after the bookmarks, on the same stream
    await watching(fake, 2)
    assert fake.watches()[1].resource_version == str(bookmarked)
    assert len(fake.lists()) == 1
    assert len(run.sets) == 1


async def test_a_dropped_watch_resumes_from_the_last_resource_version_without_relisting(
    fake: FakeKubeApi, start_watcher: StartWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gateway.backends.kubernetes")
    fake.put(make_pod("a", "10.0.0.1"))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    seen = fake.put(make_pod("b", "10.0.0.2"))
    await until(lambda: run.names == ["a", "b"], "b joins")
    fake.drop_watches()
    fake.put(make_pod("c", "10.0.0.3"))  # while disconnected: replayed on the next watch
    await until(lambda: run.names == ["a", "b", "c"], "c joins")
    assert fake.watches()[1].resource_version == str(seen)
    assert len(fake.lists()) == 1
    assert run.errors == 0, "a dropped watch is routine, not an error"
    assert [r.getMessage() for r in caplog.records].count("kubernetes.watch_dropped") == 1


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_relists_and_recomputes_the_set(
    fake: FakeKubeApi, start_watcher: StartWatcher, as_http_status: bool
) -> None:
    fake.gone_as_http_status = as_http_status
    fake.put(make_pod("a", "10.0.0.1"))
    fake.put(make_pod("b", "10.0.0.2"))
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    fake.drop_watches()
    fake.delete("b")  # never seen as an event: the watcher was away
    fake.put(make_pod("c", "10.0.0.3"))
    fake.compact()
    await until(lambda: run.names == ["a", "c"], "the relisted set")
    await watching(fake, 3)
    assert len(fake.lists()) == 2
    assert fake.watches()[-1].resource_version == str(fake.rv)
    assert run.errors == 0


async def test_a_watch_from_a_relist_after_410_is_not_gone_again(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    fake.end_watches()
    fake.compact()
    await until(lambda: len(fake.lists()) == 2, "the relist")
    await watching(fake, 3)
    fake.put(make_pod("a", "10.0.0.1"))
    await until(lambda: run.names == ["a"], "a joins on the new watch")


# -- failures are counted and outlived --------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403, 500])
async def test_an_error_status_is_counted_retried_and_recovered_from(
    fake: FakeKubeApi,
    start_watcher: StartWatcher,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    caplog.set_level(logging.WARNING, "gateway.backends.kubernetes")
    fake.put(make_pod("a", "10.0.0.1"))
    fake.fail(status)
    run = start_watcher(plain(fake))
    await until(lambda: run.errors >= 3, "errors counted")
    assert not run.watcher.synced
    fake.recover()
    await synced(run)
    assert run.names == ["a"]
    errors = [r for r in caplog.records if r.getMessage() == "kubernetes.error"]
    assert errors
    assert all(r.exc_info is None for r in errors), "an expected failure has no traceback"
    assert str(status) in log_field(errors[0], "error")


async def test_a_failing_watch_retries_from_its_resource_version_without_relisting(
    fake: FakeKubeApi, start_watcher: StartWatcher
) -> None:
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    rv = fake.put(make_pod("a", "10.0.0.1"))
    await until(lambda: run.names == ["a"], "a joins")
    fake.fail(500, times=3)
    fake.end_watches()
    await watching(fake, 5)
    assert run.errors == 3
    assert {w.resource_version for w in fake.watches()[1:]} == {str(rv)}
    assert len(fake.lists()) == 1


async def test_garbage_on_the_watch_is_counted_and_the_watch_resumes(
    fake: FakeKubeApi, start_watcher: StartWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gateway.backends.kubernetes")
    run = start_watcher(plain(fake))
    await synced(run)
    await watching(fake)
    rv = fake.put(make_pod("a", "10.0.0.1"))
    await until(lambda: run.names == ["a"], "a joins")
    fake.send_raw(b"<html>502 Bad Gateway</html>\n")
    await watching(fake, 2)
    fake.send_raw(b'{"type": "ADDED", "object": "a pod?"}\n')
    await watching(fake, 3)
    assert run.errors == 2
    assert [w.resource_version for w in fake.watches()[1:]] == [str(rv), str(rv)]
    fake.put(make_pod("b", "10.0.0.2"))
    await until(lambda: run.names == ["a", "b"], "b joins")
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_refused_connection_is_counted_and_retried(start_watcher: StartWatcher) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    run = start_watcher(KubeApi(server=f"http://127.0.0.1:{port}"))
    await until(lambda: run.errors >= 3, "errors counted")
    assert not run.watcher.synced


async def test_an_unexpected_exception_is_logged_with_its_traceback_and_outlived(
    fake: FakeKubeApi, start_watcher: StartWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gateway.backends.kubernetes")
    fake.put(make_pod("a", "10.0.0.1"))
    failures = [RuntimeError("the pool refused the change")]

    def flaky(endpoints: Sequence[EndpointConfig]) -> None:
        if failures:
            raise failures.pop()

    run = start_watcher(plain(fake), on_change=flaky)
    await until(lambda: run.names == ["a"], "told again after the failure")
    assert run.errors == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "kubernetes.unexpected_error"]
    assert record.exc_info is not None
    assert len(fake.lists()) == 1


# -- finding the API server -------------------------------------------------------------------
def write_kubeconfig(path: Path, server: str, *, token: str, namespace: str) -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
current-context: test
contexts:
- name: test
  context: {{cluster: fake, user: robot, namespace: {namespace}}}
- name: other
  context: {{cluster: fake, user: robot, namespace: wrong}}
clusters:
- name: fake
  cluster: {{server: "{server}"}}
users:
- name: robot
  user: {{token: {token}}}
"""
    )
    return path


async def test_a_kubeconfig_names_the_server_the_token_and_the_namespace(
    fake: FakeKubeApi, start_watcher: StartWatcher, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path / "config",
        fake.url,
        token="s3cret-token",
        namespace="team-a",
    )
    fake.put(make_pod("a", "10.0.0.1", namespace="team-a"))
    cfg = KubernetesDiscoveryConfig(selector={"app": "llm"}, kubeconfig=str(kubeconfig))
    run = start_watcher(None, cfg)
    await synced(run)
    await watching(fake)
    assert run.names == ["a"]
    assert {r.namespace for r in fake.requests} == {"team-a"}
    assert {r.authorization for r in fake.requests} == {"Bearer s3cret-token"}


async def test_without_a_service_account_the_watcher_reads_kubeconfig_from_the_environment(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path / "config",
        fake.url,
        token="t",
        namespace="team-a",
    )
    api = await load_api(
        "", environ={"KUBECONFIG": str(kubeconfig)}, service_account_dir=tmp_path / "none"
    )
    assert api.server == fake.url
    assert api.namespace == "team-a"
    assert await api.authorization() == "Bearer t"


async def test_a_missing_kubeconfig_is_counted_and_retried(
    start_watcher: StartWatcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gateway.backends.kubernetes")
    cfg = KubernetesDiscoveryConfig(selector={"app": "llm"}, kubeconfig="")
    run = start_watcher(None, cfg, environ={"HOME": str(tmp_path)})
    await until(lambda: run.errors >= 2, "errors counted")
    error = next(r for r in caplog.records if r.getMessage() == "kubernetes.error")
    assert str(tmp_path / ".kube" / "config") in log_field(error, "error")
    with pytest.raises(AccessError):
        await load_api(str(tmp_path / "nope"), environ={}, service_account_dir=tmp_path)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_in_cluster_the_service_account_reaches_the_api_over_tls(
    aiohttp_server: AiohttpServer, start_watcher: StartWatcher, tmp_path: Path, ca: trustme.CA
) -> None:
    fake = FakeKubeApi()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    server = await aiohttp_server(fake.app, ssl=server_ssl)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("token-1\n")
    (account / "namespace").write_text("team-b")
    ca.cert_pem.write_to_path(str(account / "ca.crt"))
    fake.put(make_pod("a", "10.0.0.1", namespace="team-b"))
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port)}
    cfg = KubernetesDiscoveryConfig(selector={"app": "llm"})
    run = start_watcher(None, cfg, environ=environ, service_account_dir=account)
    await synced(run)
    await watching(fake)
    assert run.names == ["a"]
    assert {r.namespace for r in fake.requests} == {"team-b"}
    assert {r.authorization for r in fake.requests} == {"Bearer token-1"}
    (account / "token").write_text("token-2\n")  # the kubelet rotated it
    fake.end_watches()
    await watching(fake, 2)
    assert fake.watches()[1].authorization == "Bearer token-2"


@pytest.mark.parametrize(
    ("configured", "file", "env", "context", "expected"),
    [
        ("mine", "own", "pod", "ctx", "mine"),
        ("", "own", "pod", "ctx", "own"),
        ("", None, "pod", "ctx", "pod"),
        ("", None, "", "ctx", "ctx"),
        ("", None, "", "", "default"),
    ],
)
async def test_the_namespace_comes_from_config_then_the_pod_then_the_kubeconfig(
    tmp_path: Path, configured: str, file: str | None, env: str, context: str, expected: str
) -> None:
    namespace_file = tmp_path / "namespace"
    if file is not None:
        namespace_file.write_text(file + "\n")
    environ = {"POD_NAMESPACE": env} if env else {}
    api = KubeApi(server="http://127.0.0.1:1", namespace=context)
    namespace = await resolve_namespace(
        configured, api=api, environ=environ, namespace_file=namespace_file
    )
    assert namespace == expected
