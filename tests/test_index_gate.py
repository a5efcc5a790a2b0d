"""The index's writers wait for each other on a lock file (``locks.Gate``), not in SQLite's
sleeps: a write waits while another holds it, goes on the moment it is let go, and a gate
held past the store's lock timeout only makes the index miss the write (logged; the file
is written; ``sync`` mends the index)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from statekit import Store


def stage_in_index(store: Store, ep: str) -> str:
    return {e.episode_id: e.stage for e in store.list()}[ep]


def hold_gate(store: Store, release: threading.Event, holding: threading.Event) -> threading.Thread:
    gate = store.writer.locks.gate("index-writers.lock", "the index's writers")  # another thread: its own file

    def hold() -> None:
        with gate.held():
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    return thread


def test_an_index_write_waits_for_the_gate_and_goes_on_when_it_is_let_go(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "a")
    assert store.index.write_gate is not None
    release, holding = threading.Event(), threading.Event()
    holder = hold_gate(store, release, holding)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (store.advance("s", "a", "downloading"), done.set()))
    writer.start()
    deadline = time.monotonic() + 10
    while store.writer.load("s", "a")[1].model.stage != "downloading" and time.monotonic() < deadline:
        time.sleep(0.01)  # the file is durable before the index write begins
    time.sleep(0.2)
    assert not done.is_set() and stage_in_index(store, "a") == "discovered"  # waiting for the gate
    release.set()
    holder.join()
    writer.join(10)
    assert done.is_set() and stage_in_index(store, "a") == "downloading"
    assert store.verify().clean


def test_a_gate_held_past_the_lock_timeout_only_makes_the_index_miss_the_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.init(tmp_path / "s", lock_timeout=0.2)
    store.create("s", "a")
    release, holding = threading.Event(), threading.Event()
    holder = hold_gate(store, release, holding)
    try:
        with caplog.at_level(logging.WARNING, logger="statekit"):
            assert store.advance("s", "a", "downloading").stage == "downloading"
        assert "the index missed s/a version 2" in caplog.text and "the index's writers" in caplog.text
        assert store.get("s", "a").stage == "downloading" and stage_in_index(store, "a") == "discovered"
    finally:
        release.set()
        holder.join()
    store.advance("s", "a", "downloaded")  # the gate is free again: this process's next write gets it
    assert stage_in_index(store, "a") == "downloaded"
    store.sync()
    assert store.verify().clean


def test_a_forked_child_opens_its_own_gate_file(tmp_path: Path) -> None:
    # flock belongs to an open file: a child using its parent's descriptor would pass a gate its parent holds
    store = Store.init(tmp_path / "s", lock_timeout=0.3)
    store.create("s", "a")
    store.advance("s", "a", "downloading")  # this thread has the gate file open
    gate = store.index.write_gate
    assert gate is not None
    with gate.held():
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                store.advance("s", "a", "downloaded")
                code = 0 if stage_in_index(store, "a") == "downloading" else 3  # the index missed it
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.sync()
    assert stage_in_index(store, "a") == "downloaded"


def test_closing_the_store_closes_the_gate_files(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "a")
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    for _ in range(20):
        again = Store.open(store.root)
        again.advance("s", "a", "downloading" if again.get("s", "a").stage != "downloading" else "failed")
        again.close()
    assert fds() <= before + 2  # not one descriptor per store opened
    store.close()


def test_a_store_dropped_without_close_lets_go_of_its_gate_files(tmp_path: Path) -> None:
    import gc

    store = Store.init(tmp_path / "s")
    store.create("s", "a")
    store.close()
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    gc.collect()
    before = fds()
    for i in range(20):
        Store.open(store.root).advance("s", "a", "downloading" if i % 2 == 0 else "failed")
    gc.collect()
    assert fds() <= before + 2
