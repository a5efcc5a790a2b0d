"""Content-addressed media: each distinct content is stored once.

``ROOT/objects/<sha256[:2]>/<sha256>`` holds the bytes, and
``<sha256>.json`` beside it a sidecar (size, hash, media type, source,
created time). An episode's ``assets`` map names to hashes; the same bytes
added to two episodes are one object. An object is written like every other
file: to a temp file, fsynced, renamed into place, its folder fsynced, so a
crash leaves the old state or the whole object, never part of one; a
temp file an interrupted write leaves is removed by the write itself
(``finally``) or, after ``kill -9``, by ``statekit gc``.

Objects nothing refers to are removed by ``gc``. ``add_asset`` holds a
shared lock on ``.statekit/locks/objects.lock`` from storing the object
until the episode records it, and ``gc`` holds it exclusively, so ``gc``
never removes an object a concurrent ``add_asset`` is about to record.
"""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from . import files as diskio
from . import folders
from .errors import CorruptFileError, LockTimeoutError, StatekitError, StorageError, ValidationError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

OBJECTS = "objects"
SIDECAR_SCHEMA = 1
CHUNK = 1 << 20
HEX64 = re.compile(rb"[0-9a-f]{64}")
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass
class StoredObject:
    sha256: str
    size: int
    path: str
    new: bool
    """False when the content was already stored (by this or another episode)."""


def object_path(root: str, sha256: str) -> str:
    return f"{root}/{OBJECTS}/{sha256[:2]}/{sha256}"


def sidecar_path(root: str, sha256: str) -> str:
    return object_path(root, sha256) + ".json"


def guess_media_type(name: str | None) -> str:
    if name:
        guessed, _ = mimetypes.guess_type(name, strict=False)
        if guessed:
            return guessed
    return "application/octet-stream"


# --- the objects lock -----------------------------------------------------------------


@contextmanager
def objects_lock(disk: diskio.Disk, root: str, *, root_fd: int, exclusive: bool, timeout: float) -> Iterator[None]:
    """Shared (``add_asset``) or exclusive (``gc``) hold on the object folder
    (``root_fd``: the store's root, held open; see ``files.open_dir``)."""
    path = f"{root}/.statekit/locks/objects.lock"
    with folders.open_dir(disk, root_fd, root, (".statekit", "locks"), create=True) as folder:
        try:
            fd = disk.open(path, os.O_RDWR | os.O_CREAT | diskio.O_NOFOLLOW | diskio.O_CLOEXEC, 0o666, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise diskio.unsafe_path(path) from None
            raise diskio.storage_error(exc, path, "open lock file") from exc
    try:
        if fcntl is not None:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"could not lock the object folder within {timeout:g} s "
                            f"({'a gc is running' if not exclusive else 'assets are being added'})",
                            path=path, timeout=timeout) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- storing ----------------------------------------------------------------------------


def _existing_size(path: str, folder: int) -> int | None:
    """The size of the object at ``path`` (in ``folder``, held open), or None
    if there is none (or something that is not a regular file is in its place)."""
    try:
        st = os.stat(os.path.basename(path), dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise diskio.unsafe_path(path) if stat.S_ISLNK(st.st_mode) else CorruptFileError(
            f"{path}: expected a stored object, found something else", path=path)
    return st.st_size


def _place(disk: diskio.Disk, root: str, root_fd: int, tmp: str, objects: int, sha: str,
           size: int) -> StoredObject:
    """Rename the fsynced temp file ``tmp`` (in the folder ``objects``, held
    open) into place as object ``sha`` (or drop it if that object is already
    there, whole)."""
    path = object_path(root, sha)
    with folders.open_dir(disk, root_fd, root, (OBJECTS, sha[:2]), create=True) as folder:
        if _existing_size(path, folder) == size:
            return StoredObject(sha, size, path, new=False)
        # none yet, or a damaged one (wrong size): this copy is known good
        disk.replace(tmp, path, src_dir_fd=objects, dst_dir_fd=folder)
        disk.fsync(folder)
    return StoredObject(sha, size, path, new=True)


def put_bytes(disk: diskio.Disk, root: str, data: bytes, *, root_fd: int) -> StoredObject:
    """Store ``data`` as an object (``root_fd``: the store's root, held open)."""
    sha = hashlib.sha256(data).hexdigest()
    path = object_path(root, sha)
    with folders.open_dir(disk, root_fd, root, (OBJECTS, sha[:2]), create=True) as folder:
        if _existing_size(path, folder) == len(data):
            return StoredObject(sha, len(data), path, new=False)
        diskio.atomic_write(disk, path, data, dir_fd=folder)
    return StoredObject(sha, len(data), path, new=True)


COPY_CHUNK = 8 << 20
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def _copy(disk: diskio.Disk, src: int, dst: int, buf: memoryview) -> None:
    """Copy all of ``src`` to ``dst``: in the kernel where it can, else
    through ``buf`` (never the whole file in memory)."""
    first = True
    while True:
        try:
            if not disk.copy_range(src, dst, COPY_CHUNK):
                return
        except OSError as exc:
            if not (first and exc.errno in _NO_KERNEL_COPY):
                raise
            break  # this file system (or source) cannot: copy by hand from the start
        first = False
    with open(src, "rb", buffering=0, closefd=False) as reader:
        while n := reader.readinto(buf):  # type: ignore[attr-defined]
            diskio.write_all(disk, dst, buf[:n])  # type: ignore[arg-type]


def _hash_fd(fd: int, buf: memoryview) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while n := os.preadv(fd, [buf], size):
        digest.update(buf[:n])
        size += n
    return digest.hexdigest(), size


def put_file(disk: diskio.Disk, root: str, source: str, *, root_fd: int) -> StoredObject:
    """Copy ``source`` into the object folder, then hash the copy.

    The copy is made in the kernel (``copy_file_range``) and hashed from
    the page cache, ``CHUNK`` bytes at a time: a large file is never loaded
    whole, and the hash is of exactly the bytes stored, even if the source
    changes meanwhile. Two passes, the first without a trip through Python,
    beat one pass that hashes as it writes (measured in bench_assets.py);
    the fsync runs on a helper thread while the copy is hashed. ``root_fd``:
    the store's root, held open."""
    try:
        src = os.open(source, os.O_RDONLY | diskio.O_CLOEXEC)
    except FileNotFoundError:
        raise ValidationError(f"asset source {source} does not exist", path=source,
                              hint="check the path; nothing was stored") from None
    except OSError as exc:
        raise diskio.storage_error(exc, source, "read asset source") from exc
    fd: int | None = None
    tmp: str | None = None
    objects: int | None = None
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise ValidationError(f"asset source {source} is not a regular file", path=source,
                                  hint="give the path of a file; nothing was stored")
        objects = folders.walk_dir(disk, root_fd, root, (OBJECTS,), create=True)
        fd, tmp = disk.mkstemp(f"{root}/{OBJECTS}", f"{diskio.TEMP_PREFIX}incoming.", diskio.TEMP_SUFFIX,
                               dir_fd=objects)
        buf = memoryview(bytearray(CHUNK))
        _copy(disk, src, fd, buf)
        copy = fd
        if disk.overlap_syncs:  # the data goes to disk while it is hashed from the page cache
            sync = diskio.in_background(lambda: disk.fsync(copy))
            try:
                sha, size = _hash_fd(fd, buf)
            finally:
                sync.result()
        else:
            sha, size = _hash_fd(fd, buf)
            disk.fsync(fd)
        closing, fd = fd, None
        disk.close(closing)
        stored = _place(disk, root, root_fd, tmp, objects, sha, size)
        if stored.new:
            tmp = None
        return stored
    except StatekitError:
        raise
    except OSError as exc:
        raise diskio.storage_error(exc, tmp or source, "store asset") from exc
    finally:  # whatever happened: no temp file stays behind
        os.close(src)
        diskio.discard_temp(fd, tmp, objects)
        if objects is not None:
            os.close(objects)


def write_sidecar(disk: diskio.Disk, root: str, stored: StoredObject, *, root_fd: int, media_type: str,
                  source: str | None, now: datetime) -> None:
    """The object's description, written once (the first add describes it)."""
    path = sidecar_path(root, stored.sha256)
    try:
        current = read_sidecar(path)
    except CorruptFileError:
        current = None  # damaged: written again below
    if current is not None and current.get("sha256") == stored.sha256 and current.get("size") == stored.size:
        return
    body = {"schema_version": SIDECAR_SCHEMA, "sha256": stored.sha256, "size": stored.size,
            "media_type": media_type, "source": source, "created_at": now.isoformat()}
    with folders.open_dir(disk, root_fd, root, (OBJECTS, stored.sha256[:2]), create=True) as folder:
        diskio.atomic_write(disk, path, orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n", dir_fd=folder)


def read_sidecar(path: str) -> dict[str, Any] | None:
    raw = diskio.read_file(path)
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})", path=path) from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: not a JSON object", path=path)
    return data


# --- checking ---------------------------------------------------------------------------


def hash_file(path: str) -> tuple[str, int]:
    """sha256 and size of the file at ``path``, read ``CHUNK`` bytes at a time."""
    fd = os.open(path, os.O_RDONLY | diskio.O_NOFOLLOW | diskio.O_CLOEXEC)
    try:
        digest = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        size = 0
        with open(fd, "rb", buffering=0, closefd=False) as reader:
            while n := reader.readinto(view):  # type: ignore[attr-defined]
                digest.update(view[:n])
                size += n
        return digest.hexdigest(), size
    finally:
        os.close(fd)


def check_object(root: str, sha256: str, size: int, *, what: str, **context: Any) -> str:
    """Hash the object ``sha256`` and return its path; ``CorruptFileError``
    naming the path if it is missing, or its size or hash differ."""
    path = object_path(root, sha256)
    hint = "add the asset again from its source (store.add_asset / 'statekit asset add'), or re-run the stage"
    try:
        found, found_size = hash_file(path)
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: {what} is missing", path=path, hint=hint, **context) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise diskio.unsafe_path(path) from None
        raise StorageError(f"cannot read {path} ({exc.strerror or exc})", path=path, errno=exc.errno,
                           **context) from exc
    if found_size != size:
        raise CorruptFileError(f"{path}: {what} is damaged: {found_size} bytes, expected {size}", path=path,
                               hint=hint, **context)
    if found != sha256:
        raise CorruptFileError(f"{path}: {what} is damaged: its content no longer matches sha256 {sha256[:12]}…",
                               path=path, hint=hint, **context)
    return path


# --- garbage ----------------------------------------------------------------------------


@dataclass
class Removed:
    path: str
    """Relative to the store root."""
    size: int
    reason: str


@dataclass
class ObjectsReport:
    objects: int = 0
    referenced: int = 0
    removed: list[Removed] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(r.size for r in self.removed)


def referenced_hashes(raw: bytes) -> set[str]:
    """Every sha256 a file's text mentions. Deliberately generous: a damaged
    file, a backup, a file in the trash all keep what they name."""
    return {m.decode() for m in HEX64.findall(raw)}


def stored_objects(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(sha256, path, stat) of every object, and ("", path, stat) of every
    other regular file in the object folders (sidecars are yielded with the
    sha they describe and a ``.json`` path)."""
    top = os.path.join(root, OBJECTS)
    try:
        prefixes = sorted(os.listdir(top))
    except FileNotFoundError:
        return
    for prefix in prefixes:
        directory = os.path.join(top, prefix)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode):
            continue
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            base = name[:-5] if name.endswith(".json") else name
            yield (base if _SHA.fullmatch(base) else ""), path, st
