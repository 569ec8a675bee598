"""Render deploy/kubernetes with kustomize when it is on this machine, else in Python.

:func:`compose` is a small kustomize: exactly the features deploy/kubernetes uses, and an error
for any other, so that it can never silently drop something kustomize would apply.

- ``resources``: YAML files (several documents each) and directories with a kustomization;
- ``configMapGenerator``: ``files`` (``KEY=PATH`` or ``PATH``), ``behavior`` create / replace /
  merge; generated names get kustomize's content hash suffix, and references to them from pod
  specs (volumes, ``envFrom``, ``env``) follow;
- ``patches``: inline JSON 6902 patches with a ``target`` kind and name;
- ``images``: ``name`` with ``newName`` / ``newTag`` / ``digest``.

tests/deploy/test_renderer.py holds it to ``kustomize build`` (or ``kubectl kustomize``)
wherever one is installed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "images"}
)
GENERATOR_KEYS = frozenset({"name", "files", "behavior"})


class RenderError(Exception):
    """The kustomization uses something this renderer does not implement, or is wrong."""


@dataclass
class _Build:
    objects: list[Obj] = field(default_factory=list)
    generated: set[str] = field(default_factory=set)
    """Names of the generated ConfigMaps, which get a hash suffix at the end."""


def kustomize_command() -> list[str] | None:
    """``kustomize build`` or ``kubectl kustomize``, whichever is installed; else None."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render_with_tool(command: list[str], directory: Path) -> list[Obj]:
    out = subprocess.run(
        [*command, str(directory)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render(directory: Path) -> list[Obj]:
    """The objects ``kustomize build DIRECTORY`` outputs: by kustomize itself when installed."""
    command = kustomize_command()
    if command is not None:
        return render_with_tool(command, directory)
    return compose(directory)


def compose(directory: Path) -> list[Obj]:
    """The same objects, composed in Python."""
    build = _build(directory)
    renamed = {name: f"{name}-{configmap_hash(obj)}" for name, obj in _generated(build)}
    for obj in build.objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] in renamed:
            obj["metadata"]["name"] = renamed[obj["metadata"]["name"]]
        else:
            for spec in _pod_specs(obj):
                _rename_configmap_refs(spec, renamed)
    return build.objects


def configmap_hash(obj: Obj) -> str:
    """kustomize's name suffix of a generated ConfigMap (api/hasher): the first 10 hex digits
    of the SHA-256 of its JSON encoding as Go writes it, with some digits and vowels swapped
    so the suffix never spells a word."""
    encoded: Obj = {"data": obj.get("data", {}), "kind": "ConfigMap", "name": ""}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escaped)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _build(directory: Path) -> _Build:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{path}: not implemented here: {sorted(unknown)}")
    build = _Build()
    for entry in spec.get("resources", []):
        target = directory / entry
        if target.is_dir():
            sub = _build(target)
            build.objects.extend(sub.objects)
            build.generated |= sub.generated
        else:
            build.objects.extend(d for d in yaml.safe_load_all(target.read_text()) if d)
    for generator in spec.get("configMapGenerator", []):
        _generate(build, directory, generator)
    for patch in spec.get("patches", []):
        _patch(build, patch, path)
    for image in spec.get("images", []):
        for container in _containers(build.objects):
            _set_image(container, image)
    return build


def _generate(build: _Build, directory: Path, generator: Obj) -> None:
    unknown = set(generator) - GENERATOR_KEYS
    if unknown:
        raise RenderError(f"configMapGenerator {generator.get('name')}: {sorted(unknown)}")
    name = generator["name"]
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, sep, file = entry.partition("=")
        if not sep:
            key, file = Path(entry).name, entry
        data[key] = (directory / file).read_text()
    behavior = generator.get("behavior", "create")
    existing = [o for o in build.objects if o["kind"] == "ConfigMap" and _name(o) == name]
    if behavior == "create":
        if existing:
            raise RenderError(f"ConfigMap {name} exists already: use behavior replace or merge")
        build.objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        )
        build.generated.add(name)
    elif behavior in ("replace", "merge"):
        if len(existing) != 1:
            raise RenderError(f"behavior {behavior}: no ConfigMap {name} to {behavior}")
        obj = existing[0]
        obj["data"] = data if behavior == "replace" else {**obj.get("data", {}), **data}
    else:
        raise RenderError(f"ConfigMap {name}: unknown behavior {behavior!r}")


def _patch(build: _Build, patch: Obj, where: Path) -> None:
    if set(patch) != {"target", "patch"} or set(patch["target"]) - {"kind", "name"}:
        raise RenderError(f"{where}: only inline JSON 6902 patches with a kind/name target")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise RenderError(f"{where}: a strategic-merge patch is not implemented here")
    target = patch["target"]
    matched = [
        o
        for o in build.objects
        if o["kind"] == target.get("kind", o["kind"]) and _name(o) == target.get("name", _name(o))
    ]
    if not matched:
        raise RenderError(f"{where}: the patch's target {target} matches nothing")
    for obj in matched:
        for operation in operations:
            apply_json_patch(obj, operation)


def apply_json_patch(obj: Obj, operation: Obj) -> None:
    """One RFC 6902 operation: add, remove, replace or test."""
    op, path = operation["op"], operation["path"]
    keys = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    if not keys:
        raise RenderError(f"{path}: patching the whole object is not implemented here")
    parent: Any = obj
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last = keys[-1]
    if op == "test":
        current = parent[int(last)] if isinstance(parent, list) else parent[last]
        if current != operation["value"]:
            raise RenderError(f"test {path}: {current!r} != {operation['value']!r}")
    elif op == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif op in ("add", "replace"):
        value = copy.deepcopy(operation["value"])
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, value)
            else:
                parent[index] = value
        else:
            if op == "replace" and last not in parent:
                raise RenderError(f"replace {path}: no such field")
            parent[last] = value
    else:
        raise RenderError(f"{path}: op {op!r} is not implemented here")


def _set_image(container: Obj, image: Obj) -> None:
    reference = container.get("image", "")
    if "@" in reference:
        name, tag = reference.split("@", 1)[0], "@" + reference.split("@", 1)[1]
    else:
        name, sep, rest = reference.rpartition(":")
        if not sep or "/" in rest:
            name, tag = reference, ""
        else:
            tag = ":" + rest
    if name != image["name"]:
        return
    if "newTag" in image:
        tag = ":" + str(image["newTag"])
    if "digest" in image:
        tag = "@" + image["digest"]
    container["image"] = image.get("newName", name) + tag


def _generated(build: _Build) -> Iterator[tuple[str, Obj]]:
    for obj in build.objects:
        if obj["kind"] == "ConfigMap" and _name(obj) in build.generated:
            yield _name(obj), obj


def _name(obj: Obj) -> str:
    name: str = obj["metadata"]["name"]
    return name


def _pod_specs(obj: Obj) -> Iterator[Obj]:
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        yield spec
    elif "template" in spec:
        yield spec["template"].get("spec", {})


def _containers(objects: list[Obj]) -> Iterator[Obj]:
    for obj in objects:
        for spec in _pod_specs(obj):
            yield from spec.get("initContainers", [])
            yield from spec.get("containers", [])


def _rename_configmap_refs(spec: Obj, renamed: dict[str, str]) -> None:
    refs: list[Obj] = []
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            refs.append(volume["configMap"])
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                refs.append(source["configMap"])
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for env_from in container.get("envFrom", []):
            if "configMapRef" in env_from:
                refs.append(env_from["configMapRef"])
        for env in container.get("env", []):
            if "configMapKeyRef" in env.get("valueFrom", {}):
                refs.append(env["valueFrom"]["configMapKeyRef"])
    for ref in refs:
        ref["name"] = renamed.get(ref["name"], ref["name"])
