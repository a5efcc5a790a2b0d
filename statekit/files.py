"""File primitives: the ``Disk`` seam and atomic durable writes.

Atomic durable writes (temp file in the same directory, fsync, rename, fsync
of the directory), reading with limits, temp-file sweeping. Every system call
that changes the disk goes through a ``Disk`` object, so tests can inject I/O
errors and crashes at any step. Folders are reached through ``folders``
(never through a symlink), locks are ``locks``, the event log is ``eventlog``.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import (
    CorruptFileError,
    ReadOnlyStoreError,
    StatekitError,
    StorageError,
    UnsafePathError,
)

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
"""For opening a file to read: a FIFO planted where a file should be must not block the open."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest state file read (a bigger one is damage or a mistake, not state)."""

DIR_FLAGS = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
"""A folder opened to walk through, list or fsync: never through a symlink."""

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

    ``dir_fd``: the folder the call acts in, held open (see ``folders.open_dir``);
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
        return os.open(path if dir_fd is None else path[path.rfind("/") + 1:], flags, mode, dir_fd=dir_fd)

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
        os.replace(src if src_dir_fd is None else src[src.rfind("/") + 1:],  # (name_at, inline: every write)
                   dst if dst_dir_fd is None else dst[dst.rfind("/") + 1:], src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def rename(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        os.rename(src if src_dir_fd is None else src[src.rfind("/") + 1:],
                  dst if dst_dir_fd is None else dst[dst.rfind("/") + 1:], src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        os.unlink(name_at(path, dir_fd), dir_fd=dir_fd)

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        os.mkdir(name_at(path, dir_fd), 0o777, dir_fd=dir_fd)  # less the umask, as for any folder

    def link(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        os.link(src if src_dir_fd is None else src[src.rfind("/") + 1:],
                dst if dst_dir_fd is None else dst[dst.rfind("/") + 1:], src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                follow_symlinks=False)


def name_at(path: str, dir_fd: int | None) -> str:
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

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class ReadOnlyDisk(Disk):
    """A ``Disk`` that refuses every call that would change a file or folder
    (``ReadOnlyStoreError``, before anything changes): a store opened read-only
    cannot write, not even a lock file."""

    def _refuse(self, path: str, what: str) -> ReadOnlyStoreError:
        return ReadOnlyStoreError(f"the store is open read-only: refusing to {what} {path}", path=path)

    def open(self, path: str, flags: int, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
        if flags & _WRITING:
            raise self._refuse(path, "open for writing")
        return super().open(path, flags, mode, dir_fd=dir_fd)

    def mkstemp(self, directory: str, prefix: str, suffix: str, *, dir_fd: int | None = None) -> tuple[int, str]:
        raise self._refuse(directory, "make a temporary file in")

    def replace(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        raise self._refuse(dst, "replace")

    def rename(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        raise self._refuse(dst, "rename onto")

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        raise self._refuse(path, "remove")

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        raise self._refuse(path, "make the folder")

    def link(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        raise self._refuse(dst, "link")


READ_ONLY_DISK = ReadOnlyDisk()


def storage_error(exc: OSError, path: str, action: str) -> StorageError:
    name = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    return StorageError(
        f"could not {action} {path}: {reason}" + (f" ({name})" if name else ""), path=path, errno=exc.errno
    )


def unsafe_path(path: str) -> UnsafePathError:
    """The error for a symlink found where statekit never follows one."""
    return UnsafePathError(f"refusing to follow a symlink at {path}", path=path)


# --- reading ---------------------------------------------------------------


def read_file(path: str, limit: int | None = MAX_FILE_BYTES, *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of a regular file, or None if it does not exist.

    Never follows a symlink at ``path``; a directory or device where a file
    should be is reported as damage, and so is a file over ``limit`` bytes.
    ``dir_fd``: the folder holding it, held open (``path`` names it in messages).
    """
    try:
        fd = os.open(name_at(path, dir_fd), os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe_path(path) from None
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
            want = max(st.st_size + 1, 65536)
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < want:  # a regular file reads short only at its end: no second read to say so
                break
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


def sync_folder(disk: Disk, dir_fd: int, directory: str) -> None:
    """fsync the folder ``directory``, held open as ``dir_fd``; ``StorageError`` ("sync directory") if it fails."""
    try:
        disk.fsync(dir_fd)
    except OSError as exc:
        raise storage_error(exc, directory, "sync directory") from exc


def _sync_folder(disk: Disk, directory: str, dir_fd: int | None) -> None:
    """fsync a folder: through ``dir_fd`` if it is held open, else opened by its path."""
    if dir_fd is None:
        fsync_dir(disk, directory)
    else:
        disk.fsync(dir_fd)


def atomic_write(disk: Disk, path: str, data: bytes, *, dir_fd: int | None = None,
                 alongside: Callable[[], None] | None = None, keep: str | None = None,
                 keep_dir_fd: int | None = None, previous: bytes | None = None,
                 created: bool = False, fence: Callable[[], None] | None = None,
                 recycle: str | None = None, recycled: list[str] | None = None) -> os.stat_result:
    """Replace ``path`` with ``data``: readers and crashes see old or new, never a mix.

    Temp file in the same directory, write, fsync, close (checked), rename,
    fsync the directory. The temp file is removed on any failure. Returns the
    new file's stat (size, mtime and inode survive the rename).

    ``dir_fd``: the folder holding ``path``, held open (``folders.open_dir``); every
    step acts in it, so a symlink planted on the way is never followed.
    Without it the folder is opened by its path (a file the caller names,
    such as a report's output, not a store file).

    ``alongside``: other work that must be durable before the rename (the
    fsync of the event line the caller wrote). It runs on a helper thread,
    started once the temp file is written, while the temp file is synced: the
    two fsyncs are issued together, and the file system commits them in one
    journal commit (a log fsync started earlier commits alone, and the file's
    then needs a second one). Its error aborts the write, and it has always
    finished when this returns or raises; if the temp file fails first it is
    not run (the line it would sync is an uncommitted tail). Keep it to system
    calls: Python beside the writer's own costs the GIL's handoffs.

    ``fence``: called (on the caller's thread) right before the rename, once
    everything else is durable; its error aborts the write (a lock or lease
    that was lost meanwhile).

    ``keep``: where to hard-link the file being replaced (a backup: the old
    bytes, durable already, cost no copy), in the folder ``keep_dir_fd``. If
    the directory fsync after the rename fails, the write is undone, so a
    write that raises leaves ``path`` as it was: the kept link is renamed
    back, or else the file's ``previous`` bytes are written back, or
    (``created``: there was no file) the new file is removed.

    ``recycle``: a spare file in ``keep_dir_fd`` that is about to be deleted anyway (the
    backup that rotation drops): it is renamed in as the temp file and overwritten, so the
    write neither allocates a new file nor frees the old one (both wait on the file
    system's journal). Only a regular file with no other link is reused; otherwise, or if
    it is gone, a new temp file is made as usual. ``recycled``: a list that gets ``recycle``
    appended when it was taken (it is then gone from its folder: rotation need not remove it).
    """
    cut = path.rfind("/") + 1  # (os.path.split, for a path that does not end in "/")
    directory, name = path[:cut].rstrip("/") or path[:cut], path[cut:]
    if dir_fd is None:
        try:
            folder = os.open(directory or ".", os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, path, "write") from exc
        try:
            return atomic_write(disk, path, data, dir_fd=folder, alongside=alongside, keep=keep,
                                keep_dir_fd=keep_dir_fd, previous=previous, created=created, fence=fence,
                                recycle=recycle, recycled=recycled)
        finally:
            os.close(folder)
    fd: int | None = None
    tmp: str | None = None
    kept: str | None = None
    job = None
    later = None  # the helper's job, started when the temp file is ready for its own fsync
    if alongside is not None:
        if disk.overlap_syncs:
            later = alongside
        else:
            alongside()
    try:
        reused = None
        if recycle is not None and keep_dir_fd is not None:
            reused = _recycled_temp(disk, recycle, keep_dir_fd, directory or ".", name, dir_fd)
        if reused is not None:
            fd, tmp, spare_size = reused
            if recycled is not None:
                recycled.append(recycle)  # type: ignore[arg-type]
            write_all(disk, fd, data)
            if spare_size > len(data):
                disk.truncate(fd, len(data))  # the spare's own bytes run longer
        else:
            fd, tmp = disk.mkstemp(directory or ".", f"{TEMP_PREFIX}{name}.", TEMP_SUFFIX, dir_fd=dir_fd)
            write_all(disk, fd, data)
        if later is not None:  # both fsyncs issued together: the file system commits them as one
            job = _Syncer.take()
            if job is not None:
                job.start(later)
            else:
                later()
            later = None
        disk.fsync(fd)
        written = os.fstat(fd)
        closing, fd = fd, None
        disk.close(closing)  # on some file systems close() reports the write error
        if job is not None:
            done, job = job, None
            done.finish()  # the event is durable, or its error stops the rename
        if fence is not None:
            fence()
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
                os.unlink(name_at(kept, keep_dir_fd), dir_fd=keep_dir_fd)
            except OSError:
                pass
        if job is not None:  # the temp file failed: still let the append finish under our lock
            job.wait()
        discard_temp(fd, tmp, dir_fd)


def _recycled_temp(disk: Disk, spare: str, spare_dir_fd: int, directory: str, name: str,
                   dir_fd: int) -> tuple[int, str, int] | None:
    """``spare`` (in the folder ``spare_dir_fd``) renamed to a new temp name next to ``name``
    and opened for writing at its start, with a new file's mode (set only if it has another),
    and its size; None (nothing changed, or the renamed spare removed again) if it is gone or
    cannot be reused."""
    tmp = f"{directory}/{TEMP_PREFIX}{name}.{random.getrandbits(48):012x}{TEMP_SUFFIX}"
    try:
        st = os.stat(name_at(spare, spare_dir_fd), dir_fd=spare_dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None  # left where it is (rotation deals with it)
        disk.rename(spare, tmp, src_dir_fd=spare_dir_fd, dst_dir_fd=dir_fd)
    except OSError:  # gone (a version that jumped), or another file system: a new temp file
        return None
    fd = None
    try:
        fd = disk.open(tmp, os.O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, dir_fd=dir_fd)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:  # never write through another link to it
            if stat.S_IMODE(st.st_mode) != file_mode():
                os.fchmod(fd, file_mode())
            return fd, tmp, st.st_size
    except OSError:
        pass
    discard_temp(fd, tmp, dir_fd)
    return None


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
            os.unlink(name_at(tmp, dir_fd), dir_fd=dir_fd)
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
    """Threads for other fsyncs that overlap a caller's work (``in_background``: an
    object's copy, a new episode folder's name; one pool per process: a forked child
    starts its own). The event log's fsync beside a write's own has ``_Syncer``."""

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


class _Syncer:
    """A helper thread that runs one job at a time: the event log's fsync that
    ``atomic_write`` overlaps with the file's own. Handed over with two
    plain locks (a ``ThreadPoolExecutor`` job costs a ``Future``, its
    ``Condition`` and a queue item: about 8 us more CPU per write); the idle
    ones wait in ``_IDLE`` (per process: a forked child starts its own)."""

    __slots__ = ("_go", "_done", "_work", "_error")
    LIMIT = 16
    """Helper threads a process keeps at most; a write finding none idle past that runs its append inline."""

    _IDLE: list[_Syncer] = []
    _made = 0

    def __init__(self) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._work: Callable[[], None] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name="statekit-sync", daemon=True).start()

    @classmethod
    def take(cls) -> _Syncer | None:
        """An idle helper (a new one if none is idle and fewer than ``LIMIT`` exist), or None."""
        try:
            return cls._IDLE.pop()
        except IndexError:
            pass
        with _SYNCERS_LOCK:
            if cls._made >= cls.LIMIT:
                return None
            cls._made += 1
        try:
            return cls()
        except RuntimeError:  # no thread could be started (the interpreter is shutting down)
            with _SYNCERS_LOCK:
                cls._made -= 1
            return None

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            work, self._work = self._work, None
            try:
                work()  # type: ignore[misc]
            except BaseException as exc:  # handed to the writer, which raises it
                self._error = exc
            work = None  # an idle helper keeps nothing of its last job alive (its writer, its store)
            self._done.release()

    def start(self, work: Callable[[], None]) -> None:
        self._work = work
        self._go.release()

    def wait(self) -> BaseException | None:
        """Wait for the job; the helper goes back to the idle ones. The job's error, if it raised."""
        self._done.acquire()
        error, self._error = self._error, None
        _Syncer._IDLE.append(self)
        return error

    def finish(self) -> None:
        """``wait``, raising the job's error."""
        error = self.wait()
        if error is not None:
            try:
                raise error
            finally:
                error = None


_SYNCERS_LOCK = threading.Lock()


class Background:
    """``work`` (system calls: an fsync) on an idle helper thread (``_Syncer``: cheaper than
    ``in_background``'s pool), or done at once when ``_Syncer.LIMIT`` are busy. ``result()``
    waits and raises its error; ``wait()`` only waits. Waited once: later calls return at once
    (call them from one thread at a time)."""

    __slots__ = ("_job", "_error")

    def __init__(self, work: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._job = _Syncer.take()
        if self._job is not None:
            self._job.start(work)
        else:
            try:
                work()
            except BaseException as exc:  # (told by ``result``, as a helper's would be)
                self._error = exc

    def wait(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            self._error = job.wait()

    def result(self) -> None:
        self.wait()
        error, self._error = self._error, None
        if error is not None:
            try:
                raise error
            finally:
                error = None


_PID = os.getpid()


def process_id() -> int:
    """``os.getpid()`` without its system call (kept by a fork hook): the write path asks it
    of each per-process thing it reuses (the index's connection, the writers' gate)."""
    return _PID


def _forked() -> None:
    """In a forked child: its own id; the parent's helper threads are not there (nor its lock's holder)."""
    global _SYNCERS_LOCK, _PID
    _PID = os.getpid()
    _SYNCERS_LOCK = threading.Lock()
    _Syncer._IDLE = []
    _Syncer._made = 0


os.register_at_fork(after_in_child=_forked)


def in_background(work: Callable[[], None]) -> Future[None]:
    """Run ``work`` on a helper thread (for an fsync that can overlap other work)."""
    return _HELPER.submit(work)


def lexists(path: str, *, dir_fd: int | None = None) -> bool:
    """``os.path.lexists``, in the folder ``dir_fd`` if given."""
    try:
        os.stat(name_at(path, dir_fd), dir_fd=dir_fd, follow_symlinks=False)
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
        if name == nested:
            path = os.path.join(directory, name)
            found += _in_subfolder(dir_fd, name, lambda sub: _sweep(path, None, sub, disk))  # noqa: B023 - called at once
        elif name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            path = os.path.join(directory, name)  # only for what is swept: most names are not
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
