"""Figures the harness reports: with ``STATEKIT_FIGURES_DIR`` set, each test
adds its counts to ``<dir>/<harness>.json`` (RELIABILITY.md quotes them)."""

from __future__ import annotations

import json
import os
from typing import Any


def record(harness: str, case: str, figures: dict[str, Any]) -> None:
    directory = os.environ.get("STATEKIT_FIGURES_DIR")
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{harness}.json")
    data: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[case] = figures
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def report(name: str, figures: dict[str, Any]) -> None:
    """Print one test's figures (seen under ``-s``) and, with
    ``STATEKIT_FIGURES_DIR`` set, write them to ``<dir>/<name>.json``."""
    print(f"\n{name}: {json.dumps(figures, sort_keys=True)}")
    directory = os.environ.get("STATEKIT_FIGURES_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            f.write(json.dumps(figures, indent=2, sort_keys=True) + "\n")
