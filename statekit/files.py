"""The only module that writes store files.

Atomic durable writes (temp file in the same directory, fsync, rename, fsync
of the directory), the append-only event log with its uncommitted-tail rule,
per-episode locks (filelock's native lock), and directory creation that never
follows a symlink. Every system call that changes the disk goes through a
``Disk`` object, so tests can inject I/O errors and crashes at any step.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from typing import Any

import orjson
from filelock import lock_descriptor, unlock_descriptor

from .codecs import compact_json, int64, no_duplicates
from .errors import (
    CorruptFileError,
    LockTimeoutError,
    StatekitError,
    StorageError,
    UnsafePathError,
)

try:
    import fcntl
except ImportError:  # no flock() on this platform: locks are polled
    fcntl = None  # type: ignore[assignment]

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
"""For opening a file to read: a FIFO planted where a file should be must not block the open."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest state file read (a bigger one is damage or a mistake, not state)."""

TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"

_file_mode: int | None = None
_umask_lock = threading.Lock()


def file_mode() -> int:
    """The mode a file made with ``open()`` gets: 0666 minus the umask (read
    once per process), so a store shared by a team's accounts stays writable
    by the group when their umask says so."""
    global _file_mode
    if _file_mode is None:
        _file_mode = 0o666 & ~_read_umask()
    return _file_mode


def _read_umask() -> int:
    # /proc shows it without changing it; os.umask can only read it by setting
    # it, and a file another thread creates meanwhile would get the wrong mode
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


class Disk:
    """The system calls that change the store. Subclass to inject faults.

    ``overlap_syncs``: sync the event log on a helper thread while the file
    syncs (faster; both are durable before the rename either way). A disk
    that injects faults at numbered steps sets it False, so the steps of a
    write always come in the same order.
    """

    overlap_syncs = True

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        return os.open(path, flags, mode)

    def mkstemp(self, directory: str, prefix: str, suffix: str) -> tuple[int, str]:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        try:
            os.fchmod(fd, file_mode())  # mkstemp's 0600 would survive the rename into place
        except OSError:
            discard_temp(fd, path)
            raise
        return fd, path

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def copy_range(self, src: int, dst: int, count: int) -> int:
        """Copy up to ``count`` bytes from ``src``'s offset to ``dst``'s, in
        the kernel (no trip through Python); 0 at the end of ``src``."""
        return os.copy_file_range(src, dst, count)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o777)  # less the umask, as for any folder

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst, follow_symlinks=False)


DISK = Disk()


def storage_error(exc: OSError, path: str, action: str) -> StorageError:
    name = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    return StorageError(
        f"could not {action} {path}: {reason}" + (f" ({name})" if name else ""), path=path, errno=exc.errno
    )


def _unsafe(path: str) -> UnsafePathError:
    return UnsafePathError(f"refusing to follow a symlink at {path}", path=path)


# --- reading ---------------------------------------------------------------


def read_file(path: str, limit: int | None = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of a regular file, or None if it does not exist.

    Never follows a symlink at ``path``; a directory or device where a file
    should be is reported as damage, and so is a file over ``limit`` bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(path) from None
        if exc.errno == errno.ENOTDIR:
            return None
        if exc.errno == errno.ENXIO:  # a socket
            raise CorruptFileError(f"{path}: is not a regular file, expected a file", path=path) from None
        raise storage_error(exc, path, "read") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise CorruptFileError(f"{path}: is {kind}, expected a file", path=path)
        if limit is not None and st.st_size > limit:
            raise CorruptFileError(f"{path}: {st.st_size} bytes is too large for a state file", path=path)
        chunks = []
        while True:
            chunk = os.read(fd, max(st.st_size + 1, 65536))
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]
    except OSError as exc:
        raise storage_error(exc, path, "read") from exc
    finally:
        os.close(fd)


# --- durable writes ----------------------------------------------------------


def write_all(disk: Disk, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = disk.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def fsync_dir(disk: Disk, directory: str) -> None:
    fd = disk.open(directory, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    try:
        disk.fsync(fd)
    finally:
        disk.close(fd)


def atomic_write(disk: Disk, path: str, data: bytes, *, alongside: Callable[[], None] | None = None,
                 keep: str | None = None, previous: bytes | None = None, created: bool = False) -> os.stat_result:
    """Replace ``path`` with ``data``: readers and crashes see old or new, never a mix.

    Temp file in the same directory, write, fsync, close (checked), rename,
    fsync the directory. The temp file is removed on any failure. Returns the
    new file's stat (size, mtime and inode survive the rename).

    ``alongside``: other work that must be durable before the rename (the
    event append). It runs on a helper thread while the temp file is written
    and synced, so the two fsyncs overlap; its error aborts the write, and it
    has always finished when this returns or raises.

    ``keep``: where to hard-link the file being replaced (a backup: the old
    bytes, durable already, cost no copy). If the directory fsync after the
    rename fails, the write is undone, so a write that raises leaves
    ``path`` as it was: the kept link is renamed back, or else the file's
    ``previous`` bytes are written back, or (``created``: there was no file)
    the new file is removed.
    """
    directory, name = os.path.split(path)
    fd: int | None = None
    tmp: str | None = None
    kept: str | None = None
    job = None
    if alongside is not None:
        if disk.overlap_syncs:
            job = _HELPER.submit(alongside)
        else:
            alongside()
    try:
        fd, tmp = disk.mkstemp(directory, f"{TEMP_PREFIX}{name}.", TEMP_SUFFIX)
        write_all(disk, fd, data)
        disk.fsync(fd)
        written = os.fstat(fd)
        closing, fd = fd, None
        disk.close(closing)  # on some file systems close() reports the write error
        if job is not None:
            done, job = job, None
            done.result()  # the event is durable, or its error stops the rename
        if keep is not None:
            kept = _link_old(disk, path, keep)
        disk.replace(tmp, path)
        tmp = None
        try:
            fsync_dir(disk, directory)
        except OSError:
            if kept is not None:  # the rename may not be durable: put the old file back
                _undo_replace(disk, kept, path, directory)
                kept = None
            elif previous is not None:
                _write_back(disk, path, previous)
            elif created:
                try:
                    os.unlink(path)
                    fsync_dir(disk, directory)
                except OSError:
                    pass
            raise
        kept = None
        return written
    except StatekitError:
        raise
    except OSError as exc:
        raise storage_error(exc, path, "write") from exc
    finally:
        if kept is not None:  # the write failed before the rename: the backup must not share the live file
            try:
                os.unlink(kept)
            except OSError:
                pass
        if job is not None:  # the temp file failed: still let the append finish under our lock
            futures_wait([job])
        discard_temp(fd, tmp)


def discard_temp(fd: int | None, tmp: str | None) -> None:
    """Close ``fd`` and remove ``tmp``, what a failed write leaves, ignoring errors."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _link_old(disk: Disk, path: str, keep: str) -> str | None:
    """Hard-link ``path`` (the file about to be replaced) at ``keep``; None if
    there is no such file (a first write)."""
    try:
        disk.link(path, keep)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return None
        raise
    except FileExistsError:  # left by an interrupted write of the same version: replace it
        disk.unlink(keep)
        disk.link(path, keep)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        # a file system without hard links (some network and FAT mounts): the write goes on unbacked
        logging.getLogger("statekit").warning(
            "statekit: no backup of %s: this file system cannot hard-link it (%s); set 'backups: 0' in "
            "statekit.yaml to silence this", path, errno.errorcode.get(exc.errno or 0, exc))
        return None
    return keep


NO_HARD_LINKS = frozenset(
    getattr(errno, name) for name in ("EPERM", "EMLINK", "ENOTSUP", "EOPNOTSUPP", "EXDEV") if hasattr(errno, name))
"""What ``link`` raises where a file system does not do hard links (not a failure of the write)."""


def _undo_replace(disk: Disk, kept: str, path: str, directory: str) -> None:
    """Best effort: the old inode (linked at ``kept``) becomes ``path`` again."""
    try:
        disk.replace(kept, path)
        fsync_dir(disk, directory)
    except OSError:
        pass


def _write_back(disk: Disk, path: str, previous: bytes) -> None:
    """Best effort: ``path`` holds ``previous`` again (a new temp file, renamed over it)."""
    try:
        atomic_write(disk, path, previous)
    except (OSError, StatekitError):
        pass


class _Helper:
    """Threads that sync the event log while the caller syncs the file
    (one pool per process: a forked child starts its own)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], None]) -> Future[None]:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="statekit-sync")
                self._pid = os.getpid()
            return self._pool.submit(work)


_HELPER = _Helper()


def in_background(work: Callable[[], None]) -> Future[None]:
    """Run ``work`` on a helper thread (for an fsync that can overlap other work)."""
    return _HELPER.submit(work)


def temp_files(directory: str, nested: str | None = None) -> list[str]:
    """Temp files an interrupted write left in ``directory`` (and in its
    subdirectory ``nested``)."""
    found: list[str] = []
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for name in names:
        path = os.path.join(directory, name)
        if name == nested:
            found += temp_files(path)
        elif name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) and stat.S_ISREG(os.lstat(path).st_mode):
            found.append(path)
    return found


def move(disk: Disk, src: str, dst: str) -> None:
    """Rename a file or a folder durably (both parent folders fsynced)."""
    try:
        disk.rename(src, dst)
        fsync_dir(disk, os.path.dirname(dst))
        fsync_dir(disk, os.path.dirname(src))
    except OSError as exc:
        raise storage_error(exc, src, "move") from exc


def remove_temp_files(disk: Disk, directory: str, nested: str | None = None) -> list[str]:
    """Delete temp files an interrupted write left in ``directory`` (and in
    its subdirectory ``nested``, if present). Call only while holding the
    lock that guards writes into them."""
    return [path for path in temp_files(directory, nested) if remove_file(disk, path, "remove temp file")]


def remove_file(disk: Disk, path: str, action: str) -> bool:
    """Unlink ``path``: True if this call removed it, False if it was gone
    already; any other failure is a ``StorageError`` saying ``action``."""
    try:
        disk.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error(exc, path, action) from exc
    return True


# --- directories ---------------------------------------------------------------


def ensure_dirs(disk: Disk, root: str, parts: tuple[str, ...], *, durable: bool = True) -> str:
    """Create ``root/parts...`` one level at a time, refusing symlinks.

    With ``durable``, each new directory's entry is fsynced into its parent.
    """
    path = root
    for part in parts:
        parent, path = path, os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                disk.mkdir(path)
            except FileExistsError:
                st = os.lstat(path)
            except OSError as exc:
                raise storage_error(exc, path, "create directory") from exc
            else:
                if durable:
                    try:
                        fsync_dir(disk, parent)
                    except OSError as exc:
                        raise storage_error(exc, parent, "sync directory") from exc
                continue
        if stat.S_ISLNK(st.st_mode):
            raise _unsafe(path)
        if not stat.S_ISDIR(st.st_mode):
            raise CorruptFileError(f"{path}: expected a directory, found a file", path=path)
    return path


def check_dirs(root: str, parts: tuple[str, ...]) -> bool:
    """True if ``root/parts...`` all exist as real directories (no symlinks).

    False if one is missing; ``UnsafePathError`` if one is a symlink.
    """
    chain = []
    path = root
    for part in parts:
        path = os.path.join(path, part)
        chain.append(path)
    return real_dirs(chain)


def real_dirs(chain: tuple[str, ...] | list[str]) -> bool:
    """``check_dirs`` for a precomputed chain of nested directory paths."""
    for path in chain:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISLNK(st.st_mode):
            raise _unsafe(path)
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


# --- locks -------------------------------------------------------------------


@contextmanager
def hold_lock(disk: Disk, path: str, timeout: float, what: str) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if missing, never deleted).

    Uses filelock's native lock on a descriptor we open ourselves: the same
    flock ``filelock.FileLock`` takes, without its per-call bookkeeping.
    Raises ``LockTimeoutError`` after ``timeout`` seconds.
    """
    try:
        fd = disk.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(path) from None
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
        try:
            yield
        finally:
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
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.abandoned = False
        self._finished = False
        self._error: OSError | None = None
        self._mutex = threading.Lock()
        self._done = threading.Event()
        threading.Thread(target=self._block, name="statekit-lock-wait", daemon=True).start()

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
        self._done.set()

    def wait(self, timeout: float) -> bool:
        """True once the lock is held on ``fd``; False after ``timeout`` seconds."""
        try:
            self._done.wait(timeout)
        finally:  # also on KeyboardInterrupt: either the lock is ours, or the thread keeps fd
            with self._mutex:
                if not self._finished:
                    self.abandoned = True
        if self.abandoned:
            return False
        if self._error is not None:
            raise self._error
        return True


def _poll_lock(fd: int, path: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not lock_descriptor(fd, blocking=False):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeoutError(f"could not lock {what} within {timeout:g} s", path=path, timeout=timeout)
        time.sleep(min(delay * random.uniform(0.5, 1.5), remaining))
        delay = min(delay * 2, 0.02)


# --- the event log -------------------------------------------------------------


_EVENT_TEXT = ("at", "kind", "show_id", "episode_id")
_EVENT_OPTIONAL_TEXT = ("from_stage", "to_stage", "message", "sha256", "stage")


def _parse_event_line(line: bytes, strict: bool = True) -> dict[str, Any] | None:
    """One event line, or None if it is not one. Both modes refuse what the
    fast parser refuses (NaN, infinity, numbers out of range, a BOM) and
    fields of the wrong JSON type (the index stores them in typed columns);
    ``strict`` also refuses duplicate keys and integers beyond 64 bits (which
    the fast parser reads as floats), and returns the exact reading."""
    try:
        event = orjson.loads(line)
        if strict:
            event = json.loads(line, object_pairs_hook=no_duplicates, parse_int=int64)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or type(event.get("version")) is not int:
        return None
    get = event.get
    if not all(type(get(k)) is str for k in _EVENT_TEXT) or not all(
            type(get(k)) in (str, type(None)) for k in _EVENT_OPTIONAL_TEXT) or type(get("cost")) not in (
            int, float, type(None)):
        return None
    return event


def _committed_end(fd: int, size: int, committed: int, path: str) -> int:
    """Offset just past the last committed event; everything after is an
    uncommitted tail (a torn line, or the one event of a write that crashed
    before its file was replaced). Each write drops the tail before it
    appends, so a tail holds at most one event: more events beyond the file's
    version mean the file went back (edited by hand, or restored), and then
    nothing is dropped."""
    end = size
    block = 8192
    garbage = False
    beyond = 0
    while end > 0:
        start = max(0, end - block)
        data = os.pread(fd, end - start, start)
        if not data.endswith(b"\n"):  # a torn append: never committed
            cut = data.rfind(b"\n")
            if cut < 0 and start > 0:
                block *= 2
                continue
            end = start + cut + 1
            continue
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut < 0 and start > 0:
            block *= 2
            continue
        line_start = start + cut + 1
        event = _parse_event_line(data[cut + 1 :], strict=False)
        if event is None or event["version"] > committed:
            garbage = garbage or event is None
            if event is not None and (event["version"] > committed + 1 or beyond):
                raise CorruptFileError(
                    f"{path}: the log has events beyond version {committed + 1} while the episode file is at "
                    f"version {committed} (was 'version' edited by hand, or the file restored from an old copy?)",
                    path=path, hint="run 'statekit sync' to adopt the file as it is; no event was dropped",
                )
            beyond += event is not None
            end = line_start
            continue
        if garbage and event["version"] < committed:
            raise CorruptFileError(
                f"{path}: unreadable events after version {event['version']} (the file is at {committed})",
                path=path, hint="run 'statekit repair' or restore events.jsonl from a backup",
            )
        return end
    return 0


def append_event(disk: Disk, path: str, line: bytes, committed: int, known_size: int | None = None) -> tuple[int, int]:
    """Append one event line durably, first dropping any uncommitted tail.

    ``committed`` is the version the episode file holds now; the new event
    carries ``committed + 1`` and becomes committed once the file is renamed.
    ``known_size``: the log's size right after this process committed the
    file's current version; if the log still has that size it has no tail
    to look for. Returns the log's size before and after (a size of 0 before
    means a new log, whose directory entry needs an fsync).
    """
    try:
        fd = disk.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(path) from None
        raise storage_error(exc, path, "open") from exc
    keep = None
    try:
        size = os.fstat(fd).st_size
        keep = size if size == known_size else _committed_end(fd, size, committed, path) if size else 0
        if keep < size:
            disk.truncate(fd, keep)
        write_all(disk, fd, line)
        disk.fsync(fd)
        return size, keep + len(line)
    except OSError as exc:
        if keep is not None:
            try:  # best effort: a failed append leaves no partial line behind
                os.ftruncate(fd, keep)
            except OSError:
                pass
        raise storage_error(exc, path, "append to") from exc
    finally:
        os.close(fd)


def uncommitted_tail(path: str, committed: int) -> int:
    """How many bytes at the end of a log are not committed (a torn line, or
    the event of a write that stopped before its file was replaced); 0 if none.
    ``CorruptFileError`` if the log is damaged in a way that is not a tail."""
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(path) from None
        if exc.errno == errno.ENXIO:  # a socket
            raise CorruptFileError(f"{path}: is not a regular file, expected an event log", path=path) from None
        raise storage_error(exc, path, "read") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(f"{path}: is not a regular file, expected an event log", path=path)
        size = st.st_size
        return size - _committed_end(fd, size, committed, path) if size else 0
    finally:
        os.close(fd)


def drop_tail(disk: Disk, path: str, size: int) -> None:
    """Cut a log back to ``size`` bytes, durably."""
    try:
        fd = disk.open(path, os.O_RDWR | O_NOFOLLOW | O_CLOEXEC)
    except OSError as exc:
        raise storage_error(exc, path, "open") from exc
    try:
        disk.truncate(fd, size)
        disk.fsync(fd)
    except OSError as exc:
        raise storage_error(exc, path, "truncate") from exc
    finally:
        os.close(fd)


def read_events(path: str, committed: int, *, strict: bool = True) -> list[dict[str, Any]]:
    """The committed events of a log, oldest first (the uncommitted tail is
    never shown). A damaged line before the tail raises ``CorruptFileError``.
    ``strict=False`` reads with the fastest parser, which does not look for
    duplicate keys (rebuilding the index; ``verify`` reads strictly)."""
    raw = read_file(path, limit=None)  # a log grows with the episode's history
    if not raw:
        return []
    lines = raw.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn append
    events: list[dict[str, Any]] = []
    bad: int | None = None
    for number, line in enumerate(lines, 1):
        event = _parse_event_line(line, strict)
        if event is None:
            bad = bad or number
            continue
        if event["version"] > committed:
            continue
        if bad is not None:
            raise CorruptFileError(f"{path}:{bad}: unreadable event line", path=path, line=bad)
        if events and event["version"] <= events[-1]["version"]:
            raise CorruptFileError(f"{path}:{number}: event version {event['version']} comes after version "
                                   f"{events[-1]['version']} (a repeated or misplaced line)", path=path, line=number)
        events.append(event)
    if bad is not None and committed and (not events or events[-1]["version"] < committed):
        raise CorruptFileError(f"{path}:{bad}: unreadable event line", path=path, line=bad)
    return events


def last_logged_version(path: str) -> int:
    """The highest version in a log (0 for none), committed or not."""
    return max((e["version"] for e in read_events(path, 1 << 62)), default=0)


def event_line(event: dict[str, Any]) -> bytes:
    return compact_json(event) + b"\n"
