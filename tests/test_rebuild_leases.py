"""A rebuild restores the leases its files record by looking up only the episodes its
fill saw with a lease (``index/leases:restore``'s ``among``), not by a scan of the whole
episodes table: the same lease rows, rowid for rowid, as the scan gives."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from statekit import Store
from statekit.index import leases as leasing
from statekit.index import rebuild as rebuilding
from statekit.index.tables import leases


def lease_rows(store: Store) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(Path(store.root, ".statekit/index.db"))
    try:
        return conn.execute("SELECT rowid, * FROM leases ORDER BY rowid").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_leases_looked_up_by_key_are_the_ones_a_scan_finds(tmp_path: Path, workers: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.init(tmp_path / "store")
    for i in range(12):
        store.create(f"s{i % 2}", f"e{i:03d}")
    runs = [store.run(f"s{i % 2}", f"e{i:03d}", "downloading", owner=f"w{i}", lease_seconds=3600 if i % 3 else 0.001,
                      renew=False).__enter__() for i in range(0, 12, 2)]  # live ones and one long expired
    monkeypatch.setattr(rebuilding, "REBUILD_CHUNK", 3)
    monkeypatch.setattr(leasing, "RESTORE_BATCH", 2)  # many batches, found out of the rows' order
    found = []
    for among in (True, False):
        with store.index.engine.begin() as conn:  # the lease rows are lost (an index restored from elsewhere)
            conn.execute(leases.delete())
        if not among:  # the plain form: the whole table looked at
            monkeypatch.setattr(rebuilding, "restore_leases", lambda conn, rows, local, _among: leasing.restore(
                conn, rows, local))
        rebuilding.rebuild(store.writer, workers=workers)
        found.append(lease_rows(store))
    assert found[0] == found[1]
    assert {r[2] for r in found[0]} == {f"e{i:03d}" for i in range(0, 12, 2) if i % 3}
    for i, run in zip(range(0, 12, 2), runs):
        if i % 3:  # (the expired one's end is refused)
            run.__exit__(None, None, None)
