"""Files kept gzip-compressed (``events.jsonl.gz``, ``checkpoints/<stage>.json.gz``).

Retention (``statekit compact``) compresses the event log and checkpoints of
an episode nobody has touched for a while; everything that reads them reads
either form. The rules that make every moment of it safe:

- **The plain file wins.** While ``NAME`` exists, ``NAME.gz`` is ignored (it is
  the leftover of a compaction or an inflation that stopped half way, and holds
  the same bytes, or older ones). ``NAME.gz`` is read only when ``NAME`` is gone.
- **Compress**: write ``NAME.gz`` (temp file, fsync, rename, fsync the folder),
  then remove ``NAME`` and fsync the folder. A crash before the rename leaves a
  temp file (swept by the next write); after it, both names, with equal content.
- **Inflate** (before a write changes the file): write ``NAME`` the same way,
  then remove ``NAME.gz``. A crash leaves ``NAME.gz`` alone, or both names.

Callers that change files hold the episode's lock.
"""

from __future__ import annotations

import gzip
import os
import zlib

from .errors import CorruptFileError, UnsafePathError
from .files import Disk, atomic_write, lexists, read_file, remove_file, storage_error, sync_folder

GZ = ".gz"

LEVEL = 9
"""Old logs are written once and read rarely: the smallest files."""


def gunzip(packed: bytes, path: str, limit: int | None = None) -> bytes:
    """The bytes a gzip file holds (every member, as ``zcat`` reads them);
    ``CorruptFileError`` naming ``path`` if it is damaged or larger than ``limit``."""
    out: list[bytes] = []
    total = 0
    data = packed
    try:
        while data:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(data, (limit + 1 - total) if limit is not None else 0)
            total += len(chunk)
            out.append(chunk)
            if limit is not None and (total > limit or inflater.unconsumed_tail):
                raise CorruptFileError(f"{path}: holds more than {limit} bytes, too large for a state file",
                                       path=path)
            if not inflater.eof:
                raise CorruptFileError(f"{path}: the compressed file is cut short", path=path,
                                       hint="restore it from a copy, or remove it if the plain file is there")
            data = inflater.unused_data
    except zlib.error as exc:
        raise CorruptFileError(f"{path}: not a readable gzip file ({exc})", path=path,
                               hint="restore it from a copy, or remove it if the plain file is there") from None
    return b"".join(out)


def pack(raw: bytes) -> bytes:
    """``raw`` as one gzip member (no file name, time 0: the same bytes give the same file)."""
    return gzip.compress(raw, compresslevel=LEVEL, mtime=0)


def read_packed(path: str, limit: int | None = None, *, dir_fd: int | None = None) -> bytes | None:
    """What ``path + '.gz'`` holds, uncompressed; None if there is no such file."""
    packed = read_file(path + GZ, limit=None, dir_fd=dir_fd)
    return None if packed is None else gunzip(packed, path + GZ, limit)


def read_either(path: str, limit: int | None = None, *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of ``path``, else of ``path.gz`` uncompressed, else None.
    (A second look at ``path``: an inflation may have renamed it in and removed
    the ``.gz`` between the first two looks.)"""
    for _attempt in range(2):
        raw = read_file(path, limit, dir_fd=dir_fd)
        if raw is not None:
            return raw
        raw = read_packed(path, limit, dir_fd=dir_fd)
        if raw is not None:
            return raw
    return None


def existing(path: str, *, dir_fd: int | None = None) -> str | None:
    """``path`` if it exists, else ``path.gz`` if that does, else None."""
    for name in (path, path + GZ):
        if lexists(name, dir_fd=dir_fd):
            return name
    return None


def _sync(disk: Disk, dir_fd: int, path: str) -> None:
    sync_folder(disk, dir_fd, os.path.dirname(path))


def _plain_file(path: str, dir_fd: int) -> None:
    """Refuse to compress through a second name (a hard link would keep the old bytes)."""
    try:
        st = os.stat(os.path.basename(path), dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise storage_error(exc, path, "read") from exc
    if st.st_nlink > 1:
        raise UnsafePathError(f"{path}: has {st.st_nlink} names (hard links); statekit does not compress it",
                              path=path, hint="replace the other names with copies (cp); nothing was changed")


def compress(disk: Disk, path: str, *, dir_fd: int, dry_run: bool = False) -> tuple[int, int] | None:
    """Replace ``path`` by ``path.gz``, durably (see the module's rules); returns the
    sizes (before, after), or None if there is no plain ``path``. ``dry_run``: only
    measure. The caller holds the lock that guards writes to ``path``."""
    raw = read_file(path, limit=None, dir_fd=dir_fd)
    if raw is None:
        return None
    _plain_file(path, dir_fd)
    packed = pack(raw)
    if gunzip(packed, path + GZ) != raw:  # never trade a file for one that does not give it back
        raise CorruptFileError(f"{path}: compressing it did not give the same bytes back; nothing was changed",
                               path=path)
    if not dry_run:
        atomic_write(disk, path + GZ, packed, dir_fd=dir_fd)
        remove_file(disk, path, "remove the compressed", dir_fd=dir_fd)
        _sync(disk, dir_fd, path)
    return len(raw), len(packed)


def inflate(disk: Disk, path: str, *, dir_fd: int | None) -> bool:
    """Make ``path`` a plain file again before a write changes it: write it from
    ``path.gz``, durably, then remove ``path.gz`` (a stale ``.gz`` beside a plain
    file is removed too). True if it was compressed. The caller holds the lock."""
    if dir_fd is None:
        try:
            folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, path, "open the folder of") from exc
        try:
            return inflate(disk, path, dir_fd=folder)
        finally:
            os.close(folder)
    if lexists(path, dir_fd=dir_fd):
        if lexists(path + GZ, dir_fd=dir_fd) and remove_file(disk, path + GZ, "remove the stale", dir_fd=dir_fd):
            _sync(disk, dir_fd, path)
        return False
    raw = read_packed(path, dir_fd=dir_fd)
    if raw is None:
        return False
    atomic_write(disk, path, raw, dir_fd=dir_fd)
    remove_file(disk, path + GZ, "remove the inflated", dir_fd=dir_fd)
    _sync(disk, dir_fd, path)
    return True


def drop_packed(disk: Disk, path: str, *, dir_fd: int) -> None:
    """Remove a ``path.gz`` that a new plain ``path`` (written already) makes stale."""
    if remove_file(disk, path + GZ, "remove the stale", dir_fd=dir_fd):
        _sync(disk, dir_fd, path)
