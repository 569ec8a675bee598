"""The Python renderer against kustomize itself, and its pieces on their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.kustomize import (
    Obj,
    RenderError,
    apply_json_patch,
    compose,
    configmap_hash,
    kustomize_command,
    render_with_tool,
)
from tests.deploy.manifests import KUSTOMIZE_ROOT

KUSTOMIZATIONS = sorted(p.parent for p in KUSTOMIZE_ROOT.rglob("kustomization.yaml"))


def by_kind_and_name(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    keyed = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(keyed) == len(objects)
    return keyed


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_python_composition_equals_kustomize(directory: Path) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: the Python renderer is used")
    assert by_kind_and_name(compose(directory)) == by_kind_and_name(
        render_with_tool(command, directory)
    )


@pytest.mark.parametrize(
    ("data", "suffix"),
    [
        # Values from kubectl kustomize (kustomize v5.5.0): Go's JSON escapes <, > and &.
        ({"a.yaml": "k: v\n"}, "b8b9c8h678"),
        ({"a.yaml": 'k: "<v>" & é\n'}, "2fbfmm7k6h"),
    ],
)
def test_configmap_hash_is_kustomizes(data: dict[str, str], suffix: str) -> None:
    assert configmap_hash({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": data}) == suffix


def test_json_patch_operations() -> None:
    obj: Obj = {"spec": {"replicas": 2, "list": ["a", "b"], "map": {"k/1": "v"}}}
    apply_json_patch(obj, {"op": "replace", "path": "/spec/replicas", "value": 1})
    apply_json_patch(obj, {"op": "add", "path": "/spec/list/-", "value": "c"})
    apply_json_patch(obj, {"op": "add", "path": "/spec/list/0", "value": "z"})
    apply_json_patch(obj, {"op": "remove", "path": "/spec/map/k~11"})
    apply_json_patch(obj, {"op": "test", "path": "/spec/replicas", "value": 1})
    assert obj == {"spec": {"replicas": 1, "list": ["z", "a", "b", "c"], "map": {}}}
    with pytest.raises(RenderError):
        apply_json_patch(obj, {"op": "replace", "path": "/spec/absent", "value": 1})
    with pytest.raises(RenderError):
        apply_json_patch(obj, {"op": "test", "path": "/spec/replicas", "value": 2})


def test_unimplemented_features_are_errors_not_silence(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(RenderError, match="namePrefix"):
        compose(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "patches:\n  - path: patch.yaml\n    target: {kind: Deployment}\n"
    )
    with pytest.raises(RenderError, match="inline JSON 6902"):
        compose(tmp_path)


def test_generated_configmaps_are_renamed_with_their_references(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [pod.yaml]\n"
        "configMapGenerator:\n  - name: cfg\n    files: [key=a.txt]\n"
        "images:\n  - name: app\n    newName: registry.example/app\n    newTag: '2'\n"
    )
    (tmp_path / "a.txt").write_text("k: v\n")
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec:\n  template:\n    spec:\n"
        "      containers: [{name: c, image: 'app:1', envFrom: [{configMapRef: {name: cfg}}]}]\n"
        "      volumes: [{name: v, configMap: {name: cfg}}, {name: w, configMap: {name: other}}]\n"
    )
    objects = by_kind_and_name(compose(tmp_path))
    name = "cfg-" + configmap_hash({"data": {"key": "k: v\n"}})
    assert objects["ConfigMap", name]["data"] == {"key": "k: v\n"}
    spec = objects["Deployment", "d"]["spec"]["template"]["spec"]
    assert [v["configMap"]["name"] for v in spec["volumes"]] == [name, "other"]
    assert spec["containers"][0]["envFrom"][0]["configMapRef"]["name"] == name
    assert spec["containers"][0]["image"] == "registry.example/app:2"
    command = kustomize_command()
    if command is not None:
        assert objects == by_kind_and_name(render_with_tool(command, tmp_path))
