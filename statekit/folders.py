"""Folders of a store, reached from its root's descriptor, never through a symlink.

``walk_dir`` opens ``root/parts...`` one component at a time (or in one
``openat2`` call where the kernel has it), so a symlink swapped in at any
moment is refused or never reached. ``Folders`` binds a store's root (path,
descriptor, ``Disk``) so callers say only which folder they want.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from .errors import CorruptFileError, StorageError
from .files import DIR_FLAGS, DISK, O_CLOEXEC, O_DIRECTORY, Disk, storage_error, sync_folder, unsafe_path


class Folders:
    """The folders of one store root: every call walks from the root's
    descriptor (held open for the life of this object)."""

    def __init__(self, root: str, disk: Disk = DISK) -> None:
        self.root = root
        self.disk = disk
        self.root_fd = open_root(root)
        weakref.finalize(self, os.close, self.root_fd)

    def open(self, parts: tuple[str, ...], *, create: bool = False, durable: bool = True
             ) -> AbstractContextManager[int]:
        """The folder ``<root>/<parts...>``, held open while the block runs.
        Write in it with ``dir_fd=``; ``FileNotFoundError`` if it is missing and not ``create``."""
        return open_dir(self.disk, self.root_fd, self.root, parts, create=create, durable=durable)

    def walk(self, parts: tuple[str, ...], *, create: bool = False, durable: bool = True) -> int:
        """``open`` without the block: a new descriptor the caller closes."""
        return walk_dir(self.disk, self.root_fd, self.root, parts, create=create, durable=durable)

    def make(self, parts: tuple[str, ...]) -> None:
        """Make ``<root>/<parts...>`` (durably) if it is missing."""
        os.close(self.walk(parts, create=True))

    def open_existing(self, parts: tuple[str, ...]) -> AbstractContextManager[int | None]:
        """``open`` for a folder that may be missing: None while it is."""
        return open_existing_dir(self.root_fd, self.root, parts)

    def exists(self, parts: tuple[str, ...]) -> bool:
        """True if ``<root>/<parts...>`` are all real folders (``UnsafePathError`` on a symlink)."""
        return check_dirs(self.root, parts)

    def path(self, parts: tuple[str, ...]) -> str:
        return "/".join((self.root, *parts))


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


def openat2_available() -> bool:
    """True if this kernel walks folders in one ``openat2`` call (probed once)."""
    return (_beneath if _beneath is not _UNPROBED else _probe_beneath()) is not None


def use_openat2(enabled: bool) -> bool:
    """Walk folders with ``openat2`` (where available) or component by
    component alone (tests compare both ways); returns whether it was in use."""
    global _beneath
    was = openat2_available()
    _beneath = _kernel_beneath() if enabled else None
    return was


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
                raise unsafe_path(path) from None
            if not stat.S_ISDIR(st.st_mode):
                if not create:
                    raise FileNotFoundError(errno.ENOTDIR, "not a folder", path) from None
                raise CorruptFileError(f"{path}: expected a directory, found a file", path=path) from None
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP, getattr(errno, "EMLINK", 0)):
                raise storage_error(exc, path, "open directory") from exc
            continue  # a folder again by now: swapped meanwhile, look again
        if not _mkdir(disk, parent, path):
            continue
        if durable:
            sync_folder(disk, parent, os.path.dirname(path))
    raise StorageError(f"could not open directory {path}: it keeps changing", path=path)


def make_folder(disk: Disk, parent: int, path: str) -> tuple[int, bool]:
    """The folder ``path`` in ``parent`` (held open), made if it is missing, its entry not
    synced (the caller syncs ``parent``): (a new descriptor the caller closes, whether this
    call made it: then it is empty, unless a writer that takes the caller's locks wrote in it)."""
    name = path[path.rfind("/") + 1:]
    if _mkdir(disk, parent, path):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent), True
        except OSError:
            pass  # swapped for something else meanwhile: looked at as any folder there is
    return _open_child(disk, parent, path, name, True, False), False


def _mkdir(disk: Disk, parent: int, path: str) -> bool:
    """Make the folder ``path`` in ``parent``: True if this call made it, False if it was there."""
    try:
        disk.mkdir(path, dir_fd=parent)
    except FileExistsError:
        return False
    except OSError as exc:
        raise storage_error(exc, path, "create directory") from exc
    return True


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
            raise unsafe_path(path)
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True
