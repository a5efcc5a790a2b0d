"""Figures the harness reports (RELIABILITY.md quotes them)."""

from __future__ import annotations

import json
import os
from typing import Any


def report(name: str, figures: dict[str, Any], case: str | None = None) -> None:
    """Print one test's figures (seen under ``-s``) and, with
    ``STATEKIT_FIGURES_DIR`` set, write them to ``<dir>/<name>.json``; with
    ``case``, under that key, beside the other cases already there."""
    print(f"\n{name} {case or ''}: {json.dumps(figures, sort_keys=True)}")
    directory = os.environ.get("STATEKIT_FIGURES_DIR")
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    if case is not None:
        data: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        figures = {**data, case: figures}
    with open(path, "w") as f:
        f.write(json.dumps(figures, indent=2, sort_keys=True) + "\n")
