"""Locks: an exclusive lock file held with ``flock`` (filelock's native lock).

``hold_lock`` is the primitive; ``Locks`` names the store's locks (one per
episode, one per show, one per bucket of unique values, the index's) and
where their files live (``.statekit/locks/``, folders walked from the root);
``Gate``: one held for a moment many times over (the index's writers).
"""

from __future__ import annotations

import errno
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from .errors import LockTimeoutError
from .files import O_CLOEXEC, O_NOFOLLOW, Disk, process_id, storage_error, unsafe_path
from .folders import Folders
from .objects import objects_lock

try:
    import fcntl
except ImportError:  # no flock() on this platform: locks are polled
    fcntl = None  # type: ignore[assignment]

LOCKS = (".statekit", "locks")


class Locks:
    """The store's named locks; ``timeout``: seconds to wait for one by default."""

    def __init__(self, folders: Folders, timeout: float) -> None:
        self.folders = folders
        self.timeout = timeout

    def hold(self, parts: tuple[str, ...], name: str, what: str, timeout: float | None = None) -> _Hold:
        """The lock file ``<root>/<parts...>/<name>``, its folder made if missing
        (not fsynced: a lock needs no durable folder entry), held for a ``with`` block."""
        return _Hold(self, parts, name, what, self.timeout if timeout is None else timeout)

    def fence(self) -> None:
        """Right before a commit's rename: a file lock cannot be lost while held."""

    def episode(self, show: str, ep: str) -> Any:
        return self.hold((*LOCKS, "episodes", show), ep + ".lock", f"episode {show}/{ep}")

    def show(self, show: str) -> Any:
        return self.hold((*LOCKS, "shows"), show + ".lock", f"show {show}")

    def unique(self, bucket: str) -> Any:
        return self.hold((*LOCKS, "unique"), bucket + ".lock", f"the unique values of bucket {bucket}")

    def index(self, timeout: float) -> Any:
        return self.hold(LOCKS, "index.lock", "the index (another rebuild is running)", timeout)

    def gate(self, name: str, what: str) -> Gate:
        """A lock held many times for a moment each (``Gate``), its file in ``.statekit/locks/``."""
        return Gate(self, name, what)

    def objects(self, *, exclusive: bool, timeout: float) -> Any:
        """The object folder's lock (``objects.objects_lock``): shared by ``add_asset``, exclusive for ``gc``."""
        folders = self.folders
        return objects_lock(folders.disk, folders.root, root_fd=folders.root_fd, exclusive=exclusive,
                            timeout=timeout)


class _Hold:
    """``Locks.hold``'s ``with`` block: ``hold_lock`` without its generator (every write
    takes one); the folder is open only while the lock file is opened."""

    __slots__ = ("_locks", "_parts", "_name", "_what", "_wait", "_taken")

    def __init__(self, locks: Locks, parts: tuple[str, ...], name: str, what: str, wait: float) -> None:
        self._locks = locks
        self._parts = parts
        self._name = name
        self._what = what
        self._wait = wait
        self._taken: tuple[int, _LockWaiter | None] | None = None

    def __enter__(self) -> None:
        folders = self._locks.folders
        folder = folders.walk(self._parts, create=True, durable=False)
        try:
            self._taken = _take(folders.disk, "/".join((folders.root, *self._parts, self._name)), self._wait,
                                self._what, dir_fd=folder)
        finally:
            os.close(folder)

    def __exit__(self, *_exc: object) -> None:
        taken, self._taken = self._taken, None
        if taken is not None:
            _let_go(*taken)


class Gate:
    """An exclusive lock taken for a moment, many times over (the index's writers: one
    transaction each). Its file stays open in each thread that used it, so an
    uncontended hold costs two ``flock`` calls; a waiter blocks in ``flock`` and is woken
    the moment the holder lets go (SQLite's own wait for its write lock sleeps 1, 2, 5,
    10 ms... between tries, long after a holder of a fraction of a millisecond is gone).
    ``LockTimeoutError`` after the store's lock timeout; ``StorageError`` (or
    ``UnsafePathError``) if its file cannot be opened."""

    def __init__(self, locks: Locks, name: str, what: str) -> None:
        self.locks = locks
        self.name = name
        self.what = what
        self._local = threading.local()
        self._open: list[int] = []
        self._open_lock = threading.Lock()
        self._generation = 0
        # a store dropped without close(): its files close with it (SQLite's connections do too)
        weakref.finalize(self, _close_all, self._open, self._open_lock, os.getpid())

    def close(self) -> None:
        """Close the file in every thread (each opens it again on its next hold)."""
        with self._open_lock:
            self._generation += 1
        _close_all(self._open, self._open_lock, os.getpid())

    def _fd(self) -> int:
        local = self._local
        fd = getattr(local, "fd", None)
        if fd is None or local.pid != process_id() or local.generation != self._generation:
            # a forked child opens its own (flock belongs to an open file); so does a thread after close()
            folders = self.locks.folders
            path = "/".join((folders.root, *LOCKS, self.name))
            with folders.open(LOCKS, create=True, durable=False) as folder:
                try:
                    fd = folders.disk.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666,
                                           dir_fd=folder)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise unsafe_path(path) from None
                    raise storage_error(exc, path, "open lock file") from exc
            with self._open_lock:
                self._open.append(fd)
                local.fd, local.pid, local.generation = fd, os.getpid(), self._generation
        return fd  # type: ignore[no-any-return]

    @contextmanager
    def held(self) -> Iterator[None]:
        fd = self.take()
        try:
            yield
        finally:
            unlock_descriptor(fd)

    def take(self) -> int:
        """Take the gate (``held`` without its generator); give it back with ``let_go(fd)``."""
        fd = self._fd()
        if not lock_descriptor(fd, blocking=False):
            timeout = self.locks.timeout
            path = "/".join((self.locks.folders.root, *LOCKS, self.name))
            if fcntl is None:
                _poll_lock(fd, path, timeout, self.what)
            else:
                waiter = _LockWaiter(fd)
                if not waiter.wait(timeout):
                    self._local.fd = None  # the waiter owns the descriptor now (closes it once it locks)
                    with self._open_lock:
                        if fd in self._open:
                            self._open.remove(fd)
                    raise LockTimeoutError(f"could not lock {self.what} within {timeout:g} s", path=path,
                                           timeout=timeout)
        return fd

    @staticmethod
    def let_go(fd: int) -> None:
        unlock_descriptor(fd)


def _close_all(fds: list[int], lock: threading.Lock, pid: int) -> None:
    """Close the descriptors in ``fds`` (emptied) if this is still process ``pid``."""
    with lock:
        taken = list(fds)
        fds.clear()
    if os.getpid() != pid:
        return  # a forked child's copies: left to it (closed at its exit)
    for fd in taken:
        try:
            os.close(fd)
        except OSError:
            pass


@contextmanager
def hold_lock(disk: Disk, path: str, timeout: float, what: str, *, dir_fd: int | None = None) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if missing, never deleted;
    in the folder ``dir_fd``, if given).

    Uses filelock's native lock on a descriptor we open ourselves: the same
    flock ``filelock.FileLock`` takes, without its per-call bookkeeping.
    Raises ``LockTimeoutError`` after ``timeout`` seconds.
    """
    fd, waiter = _take(disk, path, timeout, what, dir_fd=dir_fd)
    try:
        yield
    finally:
        _let_go(fd, waiter)


def _take(disk: Disk, path: str, timeout: float, what: str, *, dir_fd: int | None) -> tuple[int, _LockWaiter | None]:
    """``hold_lock``'s first half: the lock file opened and locked (its descriptor, and the
    waiter that got the lock, if one had to wait); nothing is left open if it raises."""
    try:
        fd = disk.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe_path(path) from None
        raise storage_error(exc, path, "open lock file") from exc
    waiter: _LockWaiter | None = None
    try:
        if not lock_descriptor(fd, blocking=False):
            if fcntl is None:  # no blocking flock() here: poll
                _poll_lock(fd, path, timeout, what)
            else:
                waiter = _LockWaiter(fd)
                if not waiter.wait(timeout):
                    raise LockTimeoutError(f"could not lock {what} within {timeout:g} s", path=path, timeout=timeout)
    except BaseException:
        if waiter is None or not waiter.abandoned:
            os.close(fd)
        raise
    return fd, waiter


def _let_go(fd: int, waiter: _LockWaiter | None) -> None:
    """``hold_lock``'s second half: unlock, then close (unless an abandoned waiter owns the descriptor)."""
    try:
        unlock_descriptor(fd)
    finally:
        if waiter is None or not waiter.abandoned:
            os.close(fd)


class _LockWaiter:
    """Waits for the lock on ``fd`` in a helper thread blocked in ``flock()``.

    The kernel wakes a blocked waiter the moment the lock is released, so
    the lock passes to a waiting process. Waiters that poll instead sleep
    through most releases, and a process that releases the lock and takes it
    again at once (a worker writing in a loop) kept it for hundreds of
    writes: 16 processes writing one episode starved each other into
    ``LockTimeoutError`` after 5 s while each write held the lock for
    milliseconds (tests/reliability/test_concurrency.py).

    ``wait`` gives up after the timeout; the thread then owns ``fd`` and
    closes it (releasing the lock) as soon as it gets the lock.

    The helper threads are kept for the next wait (up to ``KEEP`` idle ones a process,
    each blocked on its inbox): the index's writers in several processes wait for their
    gate again and again, and starting a thread for each wait cost about 100 us of CPU,
    three times the handing over (``benchmarks/bench_lock_wait.py``).
    """

    KEEP = 4
    _idle: list[queue.SimpleQueue[_LockWaiter]] = []  # inboxes of the helpers waiting for a job
    _idle_lock = threading.Lock()

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.abandoned = False
        self._finished = False
        self._error: OSError | None = None
        self._mutex = threading.Lock()
        self._done = threading.Lock()  # held until the helper has the lock (or failed): a one-shot signal
        self._done.acquire()
        with _LockWaiter._idle_lock:
            inbox = _LockWaiter._idle.pop() if _LockWaiter._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=_LockWaiter._serve, args=(inbox,), name="statekit-lock-wait",
                             daemon=True).start()
        inbox.put(self)

    @staticmethod
    def _serve(inbox: queue.SimpleQueue[_LockWaiter]) -> None:
        """A helper's life: take a lock for each waiter handed to it; end when enough others are idle."""
        while True:
            waiter: _LockWaiter | None = inbox.get()
            waiter._block()  # type: ignore[union-attr]
            waiter = None  # an idle helper keeps nothing of its last wait alive
            with _LockWaiter._idle_lock:
                if len(_LockWaiter._idle) >= _LockWaiter.KEEP:
                    return
                _LockWaiter._idle.append(inbox)

    @staticmethod
    def _forked() -> None:
        """In a forked child: the parent's helpers are not there (nor the holder of their lock)."""
        _LockWaiter._idle = []
        _LockWaiter._idle_lock = threading.Lock()

    def _block(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._error = exc
        with self._mutex:
            if self.abandoned:
                os.close(self.fd)  # releases the lock nobody waits for any more
                return
            self._finished = True
        self._done.release()

    def wait(self, timeout: float) -> bool:
        """True once the lock is held on ``fd``; False after ``timeout`` seconds."""
        try:
            self._done.acquire(timeout=min(max(timeout, 0.0), threading.TIMEOUT_MAX))
        finally:  # also on KeyboardInterrupt: either the lock is ours, or the thread keeps fd
            with self._mutex:
                if not self._finished:
                    self.abandoned = True
        if self.abandoned:
            return False
        if self._error is not None:
            raise self._error
        return True


os.register_at_fork(after_in_child=_LockWaiter._forked)


def _poll_lock(fd: int, path: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not lock_descriptor(fd, blocking=False):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeoutError(f"could not lock {what} within {timeout:g} s", path=path, timeout=timeout)
        time.sleep(min(delay * random.uniform(0.5, 1.5), remaining))
        delay = min(delay * 2, 0.02)
