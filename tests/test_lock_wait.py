"""A lock that is held elsewhere is waited for by a helper thread blocked in ``flock()``
(``locks._LockWaiter``), and the helpers are kept for the next wait: a process's writers wait
for the index's gate again and again, and a thread started for each wait cost about 100 us of
CPU (``benchmarks/bench_lock_wait.py``). Each wait still gets the lock the moment it is let go,
gives up after its timeout (its helper then lets go of the lock as soon as it gets it), and a
forked child starts its own helpers."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from statekit import LockTimeoutError
from statekit.files import DISK
from statekit.locks import _LockWaiter, hold_lock


def helpers() -> set[int]:
    return {t.native_id for t in threading.enumerate() if t.name == "statekit-lock-wait" and t.native_id}


def hold_then_let_go(path: Path, seconds: float, seen: list[set[int]] | None = None) -> threading.Event:
    """Hold ``path``'s lock on another descriptor (flock belongs to an open file) for ``seconds``;
    the event is set once it is held. ``seen``: the helper threads alive just before letting go."""
    holding = threading.Event()

    def hold() -> None:
        with hold_lock(DISK, str(path), 5, "the test's lock"):
            holding.set()
            time.sleep(seconds)
            if seen is not None:
                seen.append(helpers())

    threading.Thread(target=hold, daemon=True).start()
    assert holding.wait(5)
    return holding


def test_waits_one_after_another_reuse_one_helper_thread(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    seen: list[set[int]] = []
    for _ in range(8):
        hold_then_let_go(path, 0.03, seen)
        with hold_lock(DISK, str(path), 5, "the test's lock"):  # waits for the holder, through a helper
            pass
    assert len(seen) == 8 and all(seen)
    assert len(set().union(*seen)) == 1, seen  # the same helper each time, not a new thread for each wait


def test_a_wait_that_times_out_lets_go_once_its_helper_gets_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    hold_then_let_go(path, 0.5)
    start = time.monotonic()
    with pytest.raises(LockTimeoutError), hold_lock(DISK, str(path), 0.1, "the test's lock"):
        pass  # pragma: no cover - never held
    assert time.monotonic() - start < 0.45
    # the holder lets go; the abandoned helper gets the lock and closes its descriptor at once
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the abandoned helper kept the lock"
                time.sleep(0.01)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    hold_then_let_go(path, 0.03)  # and helpers still serve the next wait
    with hold_lock(DISK, str(path), 5, "the test's lock"):
        pass


def test_several_threads_waiting_at_once_each_get_the_lock_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    inside = 0
    most = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal inside, most
        try:
            for _ in range(5):
                with hold_lock(DISK, str(path), 10, "the test's lock"):
                    with guard:
                        inside += 1
                        most = max(most, inside)
                    time.sleep(0.002)
                    with guard:
                        inside -= 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and most == 1
    assert len(helpers()) <= _LockWaiter.KEEP  # the helpers left idle are few


def test_a_forked_child_waits_through_its_own_helpers(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    hold_then_let_go(path, 0.03)
    with hold_lock(DISK, str(path), 5, "the test's lock"):
        pass
    assert helpers()  # an idle helper in this process, which a child does not have
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            hold_then_let_go(path, 0.05)
            with hold_lock(DISK, str(path), 3, "the test's lock"):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
