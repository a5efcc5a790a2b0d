"""The only module that writes store files.

Atomic durable writes (temp file in the same directory, fsync, rename, fsync
of the directory), the append-only event log with its uncommitted-tail rule,
per-episode locks (filelock's native lock), and folders reached from the
store's root descriptor on every call, never through a symlink (``open_dir``).
Every system call that changes the disk goes through a ``Disk`` object, so
tests can inject I/O errors and crashes at any step.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import stat
import sys
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

    ``dir_fd``: the folder the call acts in, held open (see ``open_dir``);
    ``path`` is then still the whole path, for messages and for the tests
    that inject faults by path, and the call acts on its last component
    inside ``dir_fd``, so a symlink planted on the way is never followed.

    ``overlap_syncs``: sync the event log on a helper thread while the file
    syncs (faster; both are durable before the rename either way). A disk
    that injects faults at numbered steps sets it False, so the steps of a
    write always come in the same order.
    """

    overlap_syncs = True

    def open(self, path: str, flags: int, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
        return os.open(_at(path, dir_fd), flags, mode, dir_fd=dir_fd)

    def mkstemp(self, directory: str, prefix: str, suffix: str, *, dir_fd: int | None = None) -> tuple[int, str]:
        if dir_fd is None:
            fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        else:
            fd, path = mkstemp_at(dir_fd, directory, prefix, suffix)
        try:
            os.fchmod(fd, file_mode())  # mkstemp's 0600 would survive the rename into place
        except OSError:
            discard_temp(fd, path, dir_fd)
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

    def replace(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        os.replace(_at(src, src_dir_fd), _at(dst, dst_dir_fd), src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def rename(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        os.rename(_at(src, src_dir_fd), _at(dst, dst_dir_fd), src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        os.unlink(_at(path, dir_fd), dir_fd=dir_fd)

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        os.mkdir(_at(path, dir_fd), 0o777, dir_fd=dir_fd)  # less the umask, as for any folder

    def link(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        os.link(_at(src, src_dir_fd), _at(dst, dst_dir_fd), src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                follow_symlinks=False)


def _at(path: str, dir_fd: int | None) -> str:
    """What a call with ``dir_fd`` acts on: the last component of ``path``."""
    return path if dir_fd is None else path[path.rfind("/") + 1:]


def mkstemp_at(dir_fd: int, directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` in the folder ``dir_fd`` (whose path is ``directory``):
    a new file (mode 0600, as tempfile makes it) open for writing, and its path."""
    for _ in range(100):
        name = f"{prefix}{random.getrandbits(48):012x}{suffix}"  # O_EXCL makes a clash harmless
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        return fd, f"{directory}/{name}"
    raise FileExistsError(errno.EEXIST, "no unused temporary name", directory)


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


def read_file(path: str, limit: int | None = MAX_FILE_BYTES, *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of a regular file, or None if it does not exist.

    Never follows a symlink at ``path``; a directory or device where a file
    should be is reported as damage, and so is a file over ``limit`` bytes.
    ``dir_fd``: the folder holding it, held open (``path`` names it in messages).
    """
    try:
        fd = os.open(_at(path, dir_fd), os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, dir_fd=dir_fd)
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


def _sync_folder(disk: Disk, directory: str, dir_fd: int | None) -> None:
    """fsync a folder: through ``dir_fd`` if it is held open, else opened by its path."""
    if dir_fd is None:
        fsync_dir(disk, directory)
    else:
        disk.fsync(dir_fd)


def atomic_write(disk: Disk, path: str, data: bytes, *, dir_fd: int | None = None,
                 alongside: Callable[[], None] | None = None, keep: str | None = None,
                 keep_dir_fd: int | None = None, previous: bytes | None = None,
                 created: bool = False) -> os.stat_result:
    """Replace ``path`` with ``data``: readers and crashes see old or new, never a mix.

    Temp file in the same directory, write, fsync, close (checked), rename,
    fsync the directory. The temp file is removed on any failure. Returns the
    new file's stat (size, mtime and inode survive the rename).

    ``dir_fd``: the folder holding ``path``, held open (``open_dir``); every
    step acts in it, so a symlink planted on the way is never followed.
    Without it the folder is opened by its path (a file the caller names,
    such as a report's output, not a store file).

    ``alongside``: other work that must be durable before the rename (the
    event append). It runs on a helper thread while the temp file is written
    and synced, so the two fsyncs overlap; its error aborts the write, and it
    has always finished when this returns or raises.

    ``keep``: where to hard-link the file being replaced (a backup: the old
    bytes, durable already, cost no copy), in the folder ``keep_dir_fd``. If
    the directory fsync after the rename fails, the write is undone, so a
    write that raises leaves ``path`` as it was: the kept link is renamed
    back, or else the file's ``previous`` bytes are written back, or
    (``created``: there was no file) the new file is removed.
    """
    directory, name = os.path.split(path)
    if dir_fd is None:
        try:
            folder = os.open(directory or ".", os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, path, "write") from exc
        try:
            return atomic_write(disk, path, data, dir_fd=folder, alongside=alongside, keep=keep,
                                keep_dir_fd=keep_dir_fd, previous=previous, created=created)
        finally:
            os.close(folder)
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
        fd, tmp = disk.mkstemp(directory or ".", f"{TEMP_PREFIX}{name}.", TEMP_SUFFIX, dir_fd=dir_fd)
        write_all(disk, fd, data)
        disk.fsync(fd)
        written = os.fstat(fd)
        closing, fd = fd, None
        disk.close(closing)  # on some file systems close() reports the write error
        if job is not None:
            done, job = job, None
            done.result()  # the event is durable, or its error stops the rename
        if keep is not None:
            kept = _link_old(disk, path, keep, dir_fd, keep_dir_fd)
        disk.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = None
        try:
            disk.fsync(dir_fd)
        except OSError:
            if kept is not None:  # the rename may not be durable: put the old file back
                _undo_replace(disk, kept, path, dir_fd, keep_dir_fd)
                kept = None
            elif previous is not None:
                _write_back(disk, path, previous, dir_fd)
            elif created:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                    disk.fsync(dir_fd)
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
                os.unlink(_at(kept, keep_dir_fd), dir_fd=keep_dir_fd)
            except OSError:
                pass
        if job is not None:  # the temp file failed: still let the append finish under our lock
            futures_wait([job])
        discard_temp(fd, tmp, dir_fd)


def discard_temp(fd: int | None, tmp: str | None, dir_fd: int | None = None) -> None:
    """Close ``fd`` and remove ``tmp`` (in the folder ``dir_fd``, if given),
    what a failed write leaves, ignoring errors."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    if tmp is not None:
        try:
            os.unlink(_at(tmp, dir_fd), dir_fd=dir_fd)
        except OSError:
            pass


def _link_old(disk: Disk, path: str, keep: str, dir_fd: int | None = None,
              keep_dir_fd: int | None = None) -> str | None:
    """Hard-link ``path`` (the file about to be replaced) at ``keep``; None if
    there is no such file (a first write)."""
    try:
        disk.link(path, keep, src_dir_fd=dir_fd, dst_dir_fd=keep_dir_fd)
    except FileNotFoundError:
        if not lexists(path, dir_fd=dir_fd):
            return None
        raise
    except FileExistsError:  # left by an interrupted write of the same version: replace it
        disk.unlink(keep, dir_fd=keep_dir_fd)
        disk.link(path, keep, src_dir_fd=dir_fd, dst_dir_fd=keep_dir_fd)
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


def _undo_replace(disk: Disk, kept: str, path: str, dir_fd: int, keep_dir_fd: int | None) -> None:
    """Best effort: the old inode (linked at ``kept``) becomes ``path`` again."""
    try:
        disk.replace(kept, path, src_dir_fd=keep_dir_fd, dst_dir_fd=dir_fd)
        disk.fsync(dir_fd)
    except OSError:
        pass


def _write_back(disk: Disk, path: str, previous: bytes, dir_fd: int) -> None:
    """Best effort: ``path`` holds ``previous`` again (a new temp file, renamed over it)."""
    try:
        atomic_write(disk, path, previous, dir_fd=dir_fd)
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


def lexists(path: str, *, dir_fd: int | None = None) -> bool:
    """``os.path.lexists``, in the folder ``dir_fd`` if given."""
    try:
        os.stat(_at(path, dir_fd), dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def temp_files(directory: str, nested: str | None = None, *, dir_fd: int | None = None) -> list[str]:
    """Temp files an interrupted write left in ``directory`` (and in its
    subdirectory ``nested``; a symlink there is not looked into).
    ``dir_fd``: the folder, held open."""
    if dir_fd is None:
        try:
            folder = os.open(directory, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            return _sweep(directory, nested, folder, None)
        finally:
            os.close(folder)
    return _sweep(directory, nested, dir_fd, None)


def _sweep(directory: str, nested: str | None, dir_fd: int, disk: Disk | None) -> list[str]:
    """The temp files in the folder ``dir_fd`` (and in ``nested``), listed
    once; with ``disk``, removed, and only those this call removed returned."""
    found: list[str] = []
    for name in sorted(os.listdir(dir_fd)):
        path = os.path.join(directory, name)
        if name == nested:
            found += _in_subfolder(dir_fd, name, lambda sub: _sweep(path, None, sub, disk))  # noqa: B023 - called at once
        elif name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    continue
            except FileNotFoundError:
                continue
            if disk is None or remove_file(disk, path, "remove temp file", dir_fd=dir_fd):
                found.append(path)
    return found


def _in_subfolder(dir_fd: int, name: str, work: Callable[[int], list[str]]) -> list[str]:
    """``work(fd)`` on the real folder ``name`` in ``dir_fd``; [] if it is not one (gone, a file, a symlink)."""
    try:
        sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return []
    try:
        return work(sub)
    finally:
        os.close(sub)


def move(disk: Disk, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
    """Rename a file or a folder durably (both parent folders fsynced); the
    ``*_dir_fd`` are the parent folders, held open."""
    try:
        disk.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        _sync_folder(disk, os.path.dirname(dst), dst_dir_fd)
        _sync_folder(disk, os.path.dirname(src), src_dir_fd)
    except OSError as exc:
        raise storage_error(exc, src, "move") from exc


def remove_temp_files(disk: Disk, directory: str, nested: str | None = None, *, dir_fd: int) -> list[str]:
    """Delete temp files an interrupted write left in ``directory`` (held
    open as ``dir_fd``) and in its subdirectory ``nested``, if that is a real
    folder. Call only while holding the lock that guards writes into them."""
    return _sweep(directory, nested, dir_fd, disk)


def remove_file(disk: Disk, path: str, action: str, *, dir_fd: int | None = None) -> bool:
    """Unlink ``path`` (in the folder ``dir_fd``, if given): True if this call
    removed it, False if it was gone already; any other failure is a
    ``StorageError`` saying ``action``."""
    try:
        disk.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error(exc, path, action) from exc
    return True


# --- directories ---------------------------------------------------------------

DIR_FLAGS = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
"""A folder opened to walk through, list or fsync: never through a symlink."""


def open_root(path: str) -> int:
    """A descriptor of a store's root folder (its path resolved as given: the
    root is where trust starts). Everything below it is reached from it
    (``open_dir``), so no other path is resolved by name."""
    try:
        return os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except OSError as exc:
        raise storage_error(exc, path, "open directory") from exc


def walk_dir(disk: Disk, base_fd: int, base: str, parts: tuple[str, ...] | list[str], *, create: bool = False,
             durable: bool = True) -> int:
    """A new descriptor of the folder ``base/parts...``, each component
    opened from the one before with ``O_NOFOLLOW | O_DIRECTORY``
    (``base_fd`` is ``base``, held open). The caller closes it.

    What is checked is what is used: a symlink swapped in at any moment is
    either refused here (``UnsafePathError`` naming it) or never reached,
    which no check made before a call by path can promise.

    ``create``: missing folders are made (``mkdir`` in their parent's
    descriptor; with ``durable``, each new entry is fsynced into its parent)
    and a file in the way is ``CorruptFileError``. Without ``create``, a
    missing folder or a file in its place raises ``FileNotFoundError``.

    Where the kernel offers it, the walk of an existing folder is one
    ``openat2`` call that refuses a symlink at any component; anything it
    refuses is walked again here, which names the symlink or makes the folder.
    """
    beneath = _beneath if _beneath is not _UNPROBED else _probe_beneath()
    if beneath is not None and parts:
        try:
            return beneath(base_fd, "/".join(parts))
        except OSError:
            pass  # missing, a symlink or a file on the way: the walk says which, or makes the folder
    fd = base_fd
    path = base
    try:
        for part in parts:
            path = f"{path}/{part}"
            child = _open_child(disk, fd, path, part, create, durable)
            if fd != base_fd:
                os.close(fd)
            fd = child
    except BaseException:
        if fd != base_fd:
            os.close(fd)
        raise
    return os.dup(fd) if fd == base_fd else fd


def _probe_beneath() -> Callable[[int, str], int] | None:
    """``_kernel_beneath``, probed once, on first use."""
    global _beneath
    _beneath = _kernel_beneath()
    return _beneath


def _kernel_beneath() -> Callable[[int, str], int] | None:
    """Linux's ``openat2`` with ``RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`` (no
    binding in ``os``): a folder below ``base_fd`` opened in one system call,
    the kernel refusing a symlink, or a way out, at every component. Three
    walks a write cost ``advance`` about 35 us of CPU one component at a
    time, and about nothing this way (benchmarks/bench_writes.py). None
    where there is none (another system, a kernel before 5.6, a sandbox that
    blocks it): the walk alone is as safe, only slower."""
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"):
        return None
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    how = OpenHow(DIR_FLAGS, 0, 0x04 | 0x08)  # RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH
    how_ref, how_size = ctypes.byref(how), ctypes.sizeof(how)
    sys_openat2 = 437  # the same number on both architectures (the generic table)

    def resolve(base_fd: int, relative: str) -> int:
        fd: int = syscall(sys_openat2, base_fd, os.fsencode(relative), how_ref, how_size)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), relative)
        return fd

    try:
        probe = os.open("/", DIR_FLAGS)
        try:
            os.close(resolve(probe, "."))
        finally:
            os.close(probe)
    except OSError:
        return None
    return resolve


_UNPROBED: Any = object()
_beneath: Any = _UNPROBED


@contextmanager
def open_dir(disk: Disk, base_fd: int, base: str, parts: tuple[str, ...] | list[str], *, create: bool = False,
             durable: bool = True) -> Iterator[int]:
    """``walk_dir``, closed when the block ends."""
    fd = walk_dir(disk, base_fd, base, parts, create=create, durable=durable)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def open_existing_dir(base_fd: int, base: str, parts: tuple[str, ...] | list[str]) -> Iterator[int | None]:
    """``open_dir`` for a folder that may be missing: None while it is (or
    while a file is in its place); ``UnsafePathError`` on a symlink."""
    try:
        fd = walk_dir(DISK, base_fd, base, parts)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _open_child(disk: Disk, parent: int, path: str, name: str, create: bool, durable: bool) -> int:
    for _ in range(16):  # made by another process meanwhile, then moved away again: look again
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no such folder", path) from None
        except OSError as exc:
            try:  # what is there: a symlink or a file refuse the open (ENOTDIR, or ELOOP elsewhere)
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                raise storage_error(exc, path, "open directory") from exc
            if stat.S_ISLNK(st.st_mode):
                raise _unsafe(path) from None
            if not stat.S_ISDIR(st.st_mode):
                if not create:
                    raise FileNotFoundError(errno.ENOTDIR, "not a folder", path) from None
                raise CorruptFileError(f"{path}: expected a directory, found a file", path=path) from None
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP, getattr(errno, "EMLINK", 0)):
                raise storage_error(exc, path, "open directory") from exc
            continue  # a folder again by now: swapped meanwhile, look again
        try:
            disk.mkdir(path, dir_fd=parent)
        except FileExistsError:
            continue
        except OSError as exc:
            raise storage_error(exc, path, "create directory") from exc
        if durable:
            try:
                disk.fsync(parent)
            except OSError as exc:
                raise storage_error(exc, os.path.dirname(path), "sync directory") from exc
    raise StorageError(f"could not open directory {path}: it keeps changing", path=path)


def ensure_dirs(disk: Disk, root: str, parts: tuple[str, ...], *, durable: bool = True) -> str:
    """Create ``root/parts...`` one level at a time, refusing symlinks (see
    ``walk_dir``); returns the path. For folders written by path afterwards
    (the cache); store files are written through ``open_dir``'s descriptor.

    With ``durable``, each new directory's entry is fsynced into its parent.
    """
    base = open_root(root)
    try:
        os.close(walk_dir(disk, base, root, parts, create=True, durable=durable))
    finally:
        os.close(base)
    return os.path.join(root, *parts)


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
def hold_lock(disk: Disk, path: str, timeout: float, what: str, *, dir_fd: int | None = None) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if missing, never deleted;
    in the folder ``dir_fd``, if given).

    Uses filelock's native lock on a descriptor we open ourselves: the same
    flock ``filelock.FileLock`` takes, without its per-call bookkeeping.
    Raises ``LockTimeoutError`` after ``timeout`` seconds.
    """
    try:
        fd = disk.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666, dir_fd=dir_fd)
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


def append_event(disk: Disk, path: str, line: bytes, committed: int, known_size: int | None = None, *,
                 dir_fd: int | None = None) -> tuple[int, int]:
    """Append one event line durably, first dropping any uncommitted tail.

    ``committed`` is the version the episode file holds now; the new event
    carries ``committed + 1`` and becomes committed once the file is renamed.
    ``known_size``: the log's size right after this process committed the
    file's current version; if the log still has that size it has no tail
    to look for. Returns the log's size before and after (a size of 0 before
    means a new log, whose directory entry needs an fsync). ``dir_fd``: its
    folder, held open.
    """
    try:
        fd = disk.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666, dir_fd=dir_fd)
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


def uncommitted_tail(path: str, committed: int, *, dir_fd: int | None = None) -> int:
    """How many bytes at the end of a log are not committed (a torn line, or
    the event of a write that stopped before its file was replaced); 0 if none.
    ``CorruptFileError`` if the log is damaged in a way that is not a tail."""
    try:
        fd = os.open(_at(path, dir_fd), os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, dir_fd=dir_fd)
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


def drop_tail(disk: Disk, path: str, size: int, *, dir_fd: int | None = None) -> None:
    """Cut a log back to ``size`` bytes, durably."""
    try:
        fd = disk.open(path, os.O_RDWR | O_NOFOLLOW | O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise storage_error(exc, path, "open") from exc
    try:
        disk.truncate(fd, size)
        disk.fsync(fd)
    except OSError as exc:
        raise storage_error(exc, path, "truncate") from exc
    finally:
        os.close(fd)


def read_events(path: str, committed: int, *, strict: bool = True, dir_fd: int | None = None) -> list[dict[str, Any]]:
    """The committed events of a log, oldest first (the uncommitted tail is
    never shown). A damaged line before the tail raises ``CorruptFileError``.
    ``strict=False`` reads with the fastest parser, which does not look for
    duplicate keys (rebuilding the index; ``verify`` reads strictly)."""
    raw = read_file(path, limit=None, dir_fd=dir_fd)  # a log grows with the episode's history
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


def last_logged_version(path: str, *, dir_fd: int | None = None) -> int:
    """The highest version in a log (0 for none), committed or not."""
    return max((e["version"] for e in read_events(path, 1 << 62, dir_fd=dir_fd)), default=0)


def event_line(event: dict[str, Any]) -> bytes:
    return compact_json(event) + b"\n"
