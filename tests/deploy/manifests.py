"""The rendered manifests of deploy/kubernetes and lookups over them, shared by the tests."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from tests.deploy.kustomize import Obj, render

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE_ROOT = DEPLOY / "kubernetes"
OVERLAYS = ("predicted-latency", "predicted-latency-slo", "sim-fleet")
"""Every overlay; test_overlays_are_all_tested keeps this list complete."""
GATEWAY_CONFIG_KEY = "gateway.yaml"


@cache
def _rendered(directory: Path) -> tuple[Obj, ...]:
    return tuple(render(directory))


def rendered(directory: Path) -> list[Obj]:
    """What ``kustomize build DIRECTORY`` outputs (a copy: tests may not spoil the cache)."""
    return copy.deepcopy(list(_rendered(directory)))


def overlay(name: str) -> list[Obj]:
    return rendered(KUSTOMIZE_ROOT / "overlays" / name)


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def pod_labels(workload: Obj) -> Mapping[str, str]:
    labels: Mapping[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container(workload: Obj, name: str) -> Obj:
    found: list[Obj] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: no container {name}"
    return found[0]


def containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container of every workload."""
    for workload in workloads(objects):
        spec = pod_spec(workload)
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            yield workload, c


def port_number(c: Obj, port: Any) -> int:
    """A container port given by name or number, as a probe or a Service's targetPort does."""
    for p in c.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            number: int = p["containerPort"]
            return number
    raise AssertionError(f"container {c['name']} has no port {port!r}")


def configmap_mounted_at(objects: list[Obj], workload: Obj, c: Obj, path: str) -> Obj:
    """The ConfigMap the container mounts at ``path`` (a directory)."""
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
    volume_name = mounts.get(path.rstrip("/"))
    assert volume_name is not None, f"container {c['name']}: nothing mounted at {path}"
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    configmap_ref = volumes[volume_name].get("configMap")
    assert configmap_ref is not None, f"volume {volume_name} is not a ConfigMap"
    return one(objects, "ConfigMap", configmap_ref["name"])


def gateway(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment", "slogate")


def gateway_container(objects: list[Obj]) -> Obj:
    return container(gateway(objects), "slogate")


def gateway_config_text(objects: list[Obj]) -> str:
    """The gateway.yaml the gateway container reads: the ConfigMap behind its --config path."""
    c = gateway_container(objects)
    args = c["args"]
    config_path = Path(args[args.index("--config") + 1])
    configmap = configmap_mounted_at(objects, gateway(objects), c, str(config_path.parent))
    text: str = configmap["data"][config_path.name]
    return text
