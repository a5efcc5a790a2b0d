"""The reliability harness (issue 5): every test here is marked ``reliability``.

The default suite runs the fast tier; ``make stress`` (``STATEKIT_STRESS=1``)
runs the full sizes. ``size(fast, full)`` picks one.
"""

from __future__ import annotations

import os

import pytest

STRESS = os.environ.get("STATEKIT_STRESS", "") not in ("", "0")


def size(fast: int, full: int) -> int:
    """``full`` under ``make stress``, else ``fast``."""
    return full if STRESS else fast


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.reliability)
