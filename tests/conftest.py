"""Shared fixtures: tmp_path stores and a snapshot of every file in a store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    """Every file under ``root``, except lock files (created on demand, never
    deleted, no content) and the index database (SQLite rewrites its pages
    and WAL on its own; compare its rows with ``index_rows``)."""
    files: dict[str, bytes] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel.startswith((os.path.join(".statekit", "locks"), os.path.join(".statekit", "index.db"),
                               os.path.join(".statekit", "verified.db"))):  # (caches, like the index)
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


@contextmanager
def statements(index: Any) -> Iterator[list[str]]:
    """The SQL the index runs on this thread's connection meanwhile (its values written in)."""
    seen: list[str] = []
    driver = index._writer()  # this thread's connection: the index's every read on it runs there
    driver.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        driver.set_trace_callback(None)


def index_rows(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """The index's content, table by table, in a stable order. Left out: the
    surrogate event ids, and sync's bookkeeping of when each file was last
    checked (``checked_at_ns``, and ``file_stamp``, which exists only once a
    check came long enough after the file's change): a rebuild does its own."""
    from sqlalchemy import select

    from statekit.index.tables import episodes, events, shows, stage_totals

    skip = {"id", "checked_at_ns", "file_stamp"}
    out = {}
    with store.index.engine.connect() as conn:
        for table in (episodes, events, shows, stage_totals):
            columns = [c for c in table.columns if c.name not in skip]
            rows = conn.execute(select(*columns)).all()
            out[table.name] = sorted(
                (tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows), key=repr
            )
    out["stage_totals"] = [r for r in out["stage_totals"] if r[2] or r[3]]  # zero rows mean nothing
    return out


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL url (``STATEKIT_TEST_PG_URL``) whose search_path is a fresh schema, dropped
    after: each test its own, so tests running side by side never see each other's tables."""
    from statekit.index import engine_for

    server = os.environ.get("STATEKIT_TEST_PG_URL")
    if not server:
        pytest.skip("STATEKIT_TEST_PG_URL is not set (.ci/run sets it)")
    schema = "statekit_t_" + uuid.uuid4().hex[:10]
    admin = engine_for(server)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server else "?"
    try:
        yield f"{server}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(autouse=True)
def statekit_logger_as_it_was():
    """A command line run in-process (CliRunner) sets the statekit logger's level and handler for
    its process; put them back so the next test sees the logger as a fresh process does."""
    import logging

    logger = logging.getLogger("statekit")
    state = (logger.level, list(logger.handlers), logger.disabled, logger.propagate)
    yield
    logger.setLevel(state[0])
    logger.handlers[:] = state[1]
    logger.disabled, logger.propagate = state[2], state[3]
