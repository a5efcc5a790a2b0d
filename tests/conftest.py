"""Shared fixtures: tmp_path stores and a snapshot of every file in a store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from statekit import Store

# Every example touches a real disk with fsync: no per-example deadline.
settings.register_profile(
    "statekit", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("statekit")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store")


@pytest.fixture(params=["yaml", "json"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store", format=request.param)


@pytest.fixture
def podcast(tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store", pipeline="podcast")


def snapshot(root: str | Path) -> dict[str, bytes]:
    """Every file under ``root`` (lock files excluded: they are created on
    demand and never deleted, and carry no content)."""
    files: dict[str, bytes] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel.startswith(os.path.join(".statekit", "locks")):
                continue
            with open(path, "rb") as f:
                files[rel] = f.read()
    return files


def episode_file(store: Store, show: str, ep: str) -> Path:
    folder = Path(store.root, "shows", show, "episodes", ep)
    for name in ("episode.yaml", "episode.json"):
        if (folder / name).exists():
            return folder / name
    return folder / ("episode." + store.config.format)
