"""The value files under blobs/: writing one to a temp file beside its place
(named with the writer's pid), moving it in, reading it back whole (with its
CRC-32 when asked), and finding files no entry owns. Knows nothing of
cache.db: callers pair each move with its row."""

from __future__ import annotations

import errno
import os
import re
import stat
import time
import zlib
from collections.abc import Callable, Collection
from pathlib import PurePath

from .. import files as diskio
from .. import folders
from ..errors import ValidationError
from ..files import Disk
from .records import KEY, StrayFile

STALE_TEMP_SECONDS = 3600.0
"""A temp file of a live process is left alone by ``gc`` for this long."""
COPY_CHUNK = 1 << 20

_TEMP = re.compile(r"\.([0-9a-f]{64})\.(\d+)\..*\.tmp")


class ValueFiles:
    """The value files of the cache in ``directory`` (under the store
    ``root``). ``fsync``: each temp file is fsynced before it is closed
    (where no boot id tells a file written before a crash)."""

    def __init__(self, root: str, directory: str, disk: Disk, *, fsync: bool) -> None:
        self.root = root
        self.directory = directory
        self.folder = directory + "/blobs"
        self.fsync = fsync
        self._disk = disk
        self._made: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.folder}/{key[:2]}/{key}"

    def _folder(self, key: str) -> str:
        directory = f"{self.folder}/{key[:2]}"
        if directory not in self._made:
            folders.ensure_dirs(self._disk, self.directory, ("blobs", key[:2]), durable=False)
            self._made.add(directory)
        return directory

    # --- writing -------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> str:
        """A temp file beside the value's file holding ``data``."""
        fd, tmp = self._temp(key)
        try:
            diskio.write_all(self._disk, fd, data)
            self._finish_temp(fd)
        except OSError as exc:
            self._discard_temp(fd, tmp)
            raise diskio.storage_error(exc, tmp, "write") from exc
        except BaseException:
            self._discard_temp(fd, tmp)
            raise
        return tmp

    def copy(self, key: str, source: PurePath, check_size: Callable[[int], None]) -> tuple[str, int, int]:
        """A temp file beside the value's file holding a copy of the file at
        ``source``, its size and CRC-32. ``check_size`` refuses a size
        (before and after the copy: the file may grow meanwhile)."""
        try:
            src = os.open(source, os.O_RDONLY | diskio.O_CLOEXEC | diskio.O_NONBLOCK)
        except OSError as exc:
            raise ValidationError(f"cannot read the value file {source}: {exc.strerror or exc}",
                                  field="value") from None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise ValidationError(f"the value file {source} is not a regular file", field="value")
            check_size(st.st_size)
            fd, tmp = self._temp(key)
            size, crc = 0, 0
            try:
                while chunk := os.read(src, COPY_CHUNK):
                    diskio.write_all(self._disk, fd, chunk)
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
                check_size(size)  # it grew while we copied it
                self._finish_temp(fd)
            except OSError as exc:
                self._discard_temp(fd, tmp)
                raise diskio.storage_error(exc, tmp, "write") from exc
            except BaseException:
                self._discard_temp(fd, tmp)
                raise
            return tmp, size, crc
        finally:
            os.close(src)

    def _temp(self, key: str) -> tuple[int, str]:
        prefix = f".{key}.{os.getpid()}."
        try:
            return self._disk.mkstemp(self._folder(key), prefix, diskio.TEMP_SUFFIX)
        except FileNotFoundError:  # the folder was removed by hand: make it again
            self._made.discard(f"{self.folder}/{key[:2]}")
            try:
                return self._disk.mkstemp(self._folder(key), prefix, diskio.TEMP_SUFFIX)
            except OSError as exc:
                raise diskio.storage_error(exc, self.path(key), "create a temp file for") from exc
        except OSError as exc:
            raise diskio.storage_error(exc, self.path(key), "create a temp file for") from exc

    def _finish_temp(self, fd: int) -> None:
        if self.fsync:
            self._disk.fsync(fd)
        self._disk.close(fd)  # some file systems report a write error only here

    def _discard_temp(self, fd: int, tmp: str) -> None:
        for undo in (lambda: os.close(fd), lambda: os.unlink(tmp)):
            try:
                undo()
            except OSError:
                pass

    def move_in(self, tmp: str, key: str) -> None:
        """Rename a temp file into the value's place (the caller holds the
        write transaction that commits its row)."""
        blob = self.path(key)
        # out of the way first: ext4 flushes a file renamed over another
        # (auto_da_alloc), 1.5 ms for 64 KiB; a reader meanwhile rechecks under the write lock
        self.remove(blob)
        try:
            self._disk.replace(tmp, blob)
        except OSError as exc:
            raise diskio.storage_error(exc, blob, "write") from exc

    def discard(self, tmp: str) -> None:
        """Remove a temp file that was not moved in; quietly."""
        try:
            os.unlink(tmp)
        except OSError:
            pass

    def remove(self, path: str, quiet: bool = False) -> None:
        """Remove a file under blobs/, if it is there."""
        try:
            self._disk.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not quiet:
                raise diskio.storage_error(exc, path, "remove") from exc

    # --- reading -------------------------------------------------------------------

    def read(self, key: str, size: int, want_path: bool, crc: int | None = None) -> bytes | str | None:
        """The value file's bytes (or its path) if it is a regular file of
        ``size`` bytes (with CRC-32 ``crc``, if given); else None."""
        path = self.path(key)
        try:
            if want_path and crc is None:
                st = os.lstat(path)
                return path if stat.S_ISREG(st.st_mode) and st.st_size == size else None
            data = _read_exact(path, size)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a symlink, socket or folder put there
                return None
            raise diskio.storage_error(exc, path, "read") from exc
        if data is None:
            return None
        if crc is not None and zlib.crc32(data) != crc:
            return None
        return path if want_path else data

    def whole(self, key: str, size: int) -> bool:
        """The value file is there, a regular file of ``size`` bytes."""
        try:
            st = os.lstat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def strays(self, owned: Collection[str]) -> list[StrayFile]:
        """Files in blobs/ no entry owns (``owned``: the keys of file-backed
        entries): a value file without its row (a writer stopped between
        rename and commit), a temp file of a writer that is dead (or older
        than STALE_TEMP_SECONDS). Other names are not ours."""
        found: list[StrayFile] = []
        try:
            folders = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except FileNotFoundError:
            return found
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False) or len(folder.name) != 2:
                continue
            for item in sorted(os.scandir(folder.path), key=lambda e: e.name):
                if not item.is_file(follow_symlinks=False):
                    continue
                st = item.stat(follow_symlinks=False)
                if KEY.fullmatch(item.name):
                    if item.name not in owned:
                        found.append(StrayFile(os.path.relpath(item.path, self.root), st.st_size, "orphan"))
                    continue
                temp = _TEMP.fullmatch(item.name)
                if temp and (not _alive(int(temp[2])) or time.time() - st.st_mtime > STALE_TEMP_SECONDS):
                    found.append(StrayFile(os.path.relpath(item.path, self.root), st.st_size, "temp"))
        return found

    def remove_strays(self, strays: list[StrayFile]) -> None:
        for stray in strays:
            self.remove(os.path.join(self.root, stray.path))


def _read_exact(path: str, size: int) -> bytes | None:
    """The bytes of the regular file at ``path`` if it has exactly ``size``
    of them, else None. Never follows a symlink. (One read of the known
    size: reading "to the end" costs a buffer resize, 10x slower at 1 MB.)"""
    fd = os.open(path, os.O_RDONLY | diskio.O_NOFOLLOW | diskio.O_CLOEXEC | diskio.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        data = os.read(fd, size)
        if len(data) < size:  # a short read: rare, but allowed
            parts = [data]
            got = len(data)
            while got < size and (chunk := os.read(fd, size - got)):
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        return data if len(data) == size else None
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:  # EPERM: alive, someone else's
        return exc.errno == errno.EPERM
    return True
