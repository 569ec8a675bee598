"""deploy/Dockerfile and deploy/requirements.lock, read as text (no docker here).

The image: non-root, dependencies only from the lock (hash-checked), the predictor's state on
a volume, the gateway as its default command; and it agrees with the manifests (user, port,
config path, state directory). The lock: exact, hashed pins of every runtime dependency and
nothing of the development extras.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from config import from_yaml
from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    REPO,
    gateway,
    gateway_config_text,
    gateway_container,
    overlay,
    pod_spec,
    port_number,
)

LOCK = DEPLOY / "requirements.lock"
LOCK_IN_IMAGE = "deploy/requirements.lock"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        parsed = json.loads(self.value)
        assert isinstance(parsed, list), f"{self.keyword} is not in exec form"
        return [str(p) for p in parsed]


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, grouped by FROM, with ARG
    defaults declared before the first FROM substituted into FROM lines."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip())
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.value.partition("=")
            args[name] = default
        elif instruction.keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], instruction.value)
            stages.append([Instruction("FROM", image)])
        else:
            assert stages, f"{line!r} before the first FROM"
            stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def values(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.value for i in stage if i.keyword == keyword]


def copy_sources(value: str) -> list[str]:
    """The sources of a COPY (all but its destination); empty for a COPY --from a stage."""
    parts = shlex.split(value)
    if any(p.startswith("--from") for p in parts):
        return []
    return [p.rstrip("/") for p in parts[:-1] if not p.startswith("--")]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_image_is_python_slim_at_the_projects_python() -> None:
    for stage in dockerfile_stages():
        image = stage[0].value.split()[0]
        assert image.startswith("python:3.11-slim"), image
    assert pyproject()["project"]["requires-python"] == ">=3.11"


def test_the_image_runs_as_the_manifests_non_root_user() -> None:
    users = values(final_stage(), "USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "a numeric USER, so that Kubernetes' runAsNonRoot can check it"
    assert int(uid) != 0
    assert not gid or int(gid) != 0
    for name in OVERLAYS:
        context = pod_spec(gateway(overlay(name)))["securityContext"]
        assert context["runAsUser"] == int(uid)


def test_dependencies_come_only_from_the_lock() -> None:
    stage = final_stage()
    lock_copies = [
        shlex.split(v) for v in values(stage, "COPY") if LOCK_IN_IMAGE in copy_sources(v)
    ]
    assert len(lock_copies) == 1, "the lock is copied into the final stage"
    lock_path = lock_copies[0][-1]
    installs = [
        command
        for run in values(stage, "RUN")
        for command in re.split(r"&&|;", run)
        if re.search(r"\bpip install\b", command)
    ]
    assert installs
    from_lock = [shlex.split(c) for c in installs if f"-r {lock_path}" in c]
    assert len(from_lock) == 1
    assert {"--require-hashes", "--only-binary=:all:", "--no-deps"} <= set(from_lock[0])
    for command in installs:
        # Anything else installed adds no dependency the lock does not pin.
        assert f"-r {lock_path}" in command or "--no-deps" in command.split(), command
    assert any("pip check" in run for run in values(stage, "RUN"))


def test_the_default_command_is_the_gateway_not_the_simulator() -> None:
    stage = final_stage()
    (entrypoint,) = [i.exec_form() for i in stage if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i.exec_form() for i in stage if i.keyword == "CMD"]
    assert entrypoint == ["slogate"]
    assert cmd[0] == "serve"
    assert "sim" not in cmd
    for name in OVERLAYS:
        assert gateway_container(overlay(name))["args"] == cmd


def test_the_port_and_the_state_volume_match_the_manifests() -> None:
    stage = final_stage()
    (expose,) = values(stage, "EXPOSE")
    volumes = [v for i in stage if i.keyword == "VOLUME" for v in i.exec_form()]
    for name in OVERLAYS:
        objects = overlay(name)
        cfg = from_yaml(gateway_config_text(objects))
        assert int(expose) == cfg.server.port == port_number(gateway_container(objects), "http")
        assert cfg.predictor.state_dir in volumes


def test_the_image_holds_every_package_of_the_project() -> None:
    """A new top-level package (pyproject's packages.find) must be copied into the build."""
    copied = {s for v in values(dockerfile_stages()[0], "COPY") for s in copy_sources(v)}
    includes = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {i.rstrip("*") for i in includes} <= copied
    assert {"pyproject.toml", "README.md"} <= copied


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in dockerfile_stages():
        for copy in values(stage, "COPY"):
            for source in copy_sources(copy):
                assert source in kept, source


def lock_pins() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every requirement in the lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = canonicalize_name("")
    for line in LOCK.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
            continue
        assert not stripped.startswith("-"), f"an option in the lock: {stripped}"
        requirement = Requirement(stripped.rstrip("\\").strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", stripped
        current = canonicalize_name(requirement.name)
        pins[current] = (specifier.version, 0)
    return pins


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pins = lock_pins()
    for line in pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{name} is not in deploy/requirements.lock: run deploy/refresh-lock.sh"
        )
        assert requirement.specifier.contains(pins[name][0]), f"{name}=={pins[name][0]}: {line}"
    for pinned, (_, hashes) in pins.items():
        assert hashes, f"{pinned} has no hash"


def test_the_lock_holds_no_development_tool() -> None:
    pins = lock_pins()
    runtime = {
        canonicalize_name(Requirement(r).name) for r in pyproject()["project"]["dependencies"]
    }
    for extra, requirements in pyproject()["project"]["optional-dependencies"].items():
        for line in requirements:
            name = canonicalize_name(Requirement(line).name)
            assert name in runtime or name not in pins, f"{name} (extra {extra}) in the lock"
