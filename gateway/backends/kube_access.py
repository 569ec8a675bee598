"""How slogate reaches the Kubernetes API server: in a pod, the service account (nothing but
aiohttp and the standard library); elsewhere, a kubeconfig resolved by kubernetes_asyncio (the
optional ``kubernetes`` extra: contexts, client certificates, exec plugins), imported only then.
The token is asked for per request (:attr:`KubeApi.authorization`), since the kubelet rotates a
service account's token and exec-plugin credentials expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesError(Exception):
    """An expected failure talking to the API server: logged without a traceback."""


class AccessError(KubernetesError):
    """No way to reach the API server: no service account, an unusable kubeconfig."""


async def _no_authorization() -> str:
    return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeApi:
    """How to reach the API server."""

    server: str
    """``https://host:port``; ``http://`` for a test server or ``kubectl proxy``."""
    tls: ssl.SSLContext | None = None
    """For ``https``: the cluster's CA (and a client certificate); None: the system's CAs."""
    authorization: Callable[[], Awaitable[str]] = _no_authorization
    """The ``Authorization`` header for the next request ("" for none); asked per request so
    that a rotated token is picked up."""
    namespace: str = ""
    """The kubeconfig context's namespace, if it names one."""


async def load_api(
    kubeconfig: str, *, environ: Mapping[str, str], service_account_dir: Path
) -> KubeApi:
    """``kubeconfig`` if set; else the service account when running in a pod; else
    ``KUBECONFIG`` or ``~/.kube/config``."""
    if not kubeconfig:
        host = environ.get("KUBERNETES_SERVICE_HOST", "")
        port = environ.get("KUBERNETES_SERVICE_PORT", "")
        if host and port:
            return await in_cluster_api(host, port, service_account_dir)
        home = environ.get("HOME") or str(Path.home())
        kubeconfig = environ.get("KUBECONFIG") or str(Path(home) / ".kube" / "config")
    return await kubeconfig_api(kubeconfig)


async def in_cluster_api(host: str, port: str, service_account_dir: Path) -> KubeApi:
    token_file = service_account_dir / "token"
    cafile = str(service_account_dir / "ca.crt")
    context = await asyncio.to_thread(ssl.create_default_context, cafile=cafile)

    async def authorization() -> str:
        token = (await asyncio.to_thread(token_file.read_text)).strip()
        return f"Bearer {token}" if token else ""

    await authorization()  # no token file: fail here, naming it
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return KubeApi(server=f"https://{server}", tls=context, authorization=authorization)


async def kubeconfig_api(paths: str) -> KubeApi:
    """The current context of the kubeconfig at ``paths`` (``KUBECONFIG``'s syntax)."""
    try:
        from kubernetes_asyncio.client import Configuration
        from kubernetes_asyncio.config.config_exception import ConfigException
        from kubernetes_asyncio.config.kube_config import KubeConfigLoader, KubeConfigMerger
    except ImportError as exc:
        raise AccessError(
            "a kubeconfig needs kubernetes_asyncio: pip install 'slogate[kubernetes]'"
        ) from exc
    configuration = Configuration()
    with _kubeconfig_errors(paths, ConfigException):
        merged = await asyncio.to_thread(KubeConfigMerger, paths)
        if merged.config is None:
            raise AccessError(f"kubeconfig {paths}: no such file")
        loader = KubeConfigLoader(config_dict=merged.config, config_base_path=None)
        await loader.load_and_set(configuration)
        context = (loader.current_context or {}).get("context") or {}
        tls = None
        if str(configuration.host).startswith("https:"):
            tls = await asyncio.to_thread(
                _client_ssl,
                configuration.ssl_ca_cert,
                configuration.cert_file,
                configuration.key_file,
                bool(configuration.verify_ssl),
            )

    async def authorization() -> str:
        with _kubeconfig_errors(paths, ConfigException):
            # Re-reads a token file and re-runs an exec plugin when its credential expired.
            await loader.load_and_set(configuration)
        return str(configuration.api_key.get("BearerToken") or "")

    return KubeApi(
        server=str(configuration.host).rstrip("/"),
        tls=tls,
        authorization=authorization,
        namespace=str(context.get("namespace") or ""),
    )


@contextlib.contextmanager
def _kubeconfig_errors(paths: str, config_exception: type[Exception]) -> Iterator[None]:
    """kubernetes_asyncio reports a bad kubeconfig as its ConfigException, or as an assert or
    a KeyError deep in its loader: all an AccessError naming the file."""
    try:
        yield
    except KubernetesError:
        raise
    except (
        config_exception,
        yaml.YAMLError,
        AssertionError,
        LookupError,
        TypeError,
        ValueError,
        OSError,
    ) as exc:
        raise AccessError(f"kubeconfig {paths}: {str(exc) or type(exc).__name__}") from exc


def _client_ssl(
    cafile: str | None, certfile: str | None, keyfile: str | None, verify: bool
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    if not verify:  # the kubeconfig's insecure-skip-tls-verify
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def resolve_namespace(
    configured: str, *, api: KubeApi, environ: Mapping[str, str], namespace_file: Path
) -> str:
    """``configured``, else the service account's, ``POD_NAMESPACE``, the kubeconfig
    context's, ``default``."""
    if configured:
        return configured
    try:
        own = (await asyncio.to_thread(namespace_file.read_text)).strip()
    except OSError:
        own = ""
    return own or environ.get("POD_NAMESPACE", "") or api.namespace or "default"
