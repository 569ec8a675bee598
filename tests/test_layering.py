"""Dependencies point inward: the scheduler and config never pull in aiohttp or the gateway."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import config, scheduler, scheduler.builder, scheduler.plugins
import scheduler.datalayer.store, scheduler.datalayer.inflight, scheduler.datalayer.prefix_index
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def loaded_modules() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    modules = json.loads(out)
    assert isinstance(modules, list)
    return modules


@pytest.mark.parametrize("forbidden", ["aiohttp", "gateway"])
def test_scheduler_and_config_do_not_import(loaded_modules: list[str], forbidden: str) -> None:
    offenders = [m for m in loaded_modules if m == forbidden or m.startswith(f"{forbidden}.")]
    assert offenders == []


def test_the_probe_really_loaded_the_scheduler(loaded_modules: list[str]) -> None:
    assert "scheduler.plugins.producers.approx_prefix" in loaded_modules
    assert "config.loader" in loaded_modules
