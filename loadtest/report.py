"""Benchmark reports: one JSON file per run, with what produced it and where it ran."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any


def write_report(path: Path, benchmark: str, **fields: Any) -> None:
    """Write ``fields`` under the benchmark's name, the Python version and the platform."""
    report = {
        "benchmark": benchmark,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
