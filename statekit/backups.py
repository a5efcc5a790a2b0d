"""Backup keeping: the rotating copies of an episode file, and the trash.

Before the write path replaces an episode file, the old file is hard-linked
as ``.statekit/backups/episodes/<show>/<ep>/episode.v<version>.<ext>``
(``keep_path``), and the newest ``keep`` versions are kept (``rotate``).
``listing`` checks each backup (``problem`` says why one cannot be
restored); the trash (``.statekit/trash/<show>/``) receives what is never
erased: a file about to be replaced that could not be read, a deleted
episode's backups.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from . import files as diskio
from .codecs import Parsed
from .errors import CorruptFileError, SchemaVersionError, StatekitError, UnsafePathError, ValidationError
from .folders import Folders
from .layout import EpisodePaths, backup_parts, backup_versions, trash_parts

log = logging.getLogger("statekit")

Check = Callable[[str, bytes, str, str], Parsed]
"""Parses and checks an episode file's bytes (path, raw, show, episode)."""


@dataclass
class Backup:
    """One kept version of an episode file."""

    number: int
    """1 for the newest (what ``restore --backup N`` takes)."""
    version: int
    path: str
    size: int
    saved_at: datetime
    problem: str | None = None
    """Why it cannot be restored (damaged, invalid), or None."""


class Backups:
    """The backups and the trash of one store; ``keep``: versions kept per episode."""

    def __init__(self, folders: Folders, keep: int) -> None:
        self.folders = folders
        self.keep = keep

    @property
    def root(self) -> str:
        return self.folders.root

    def keep_path(self, path: str, current: Parsed | None) -> tuple[str, int] | tuple[None, None]:
        """Where the file about to be replaced is kept: its rotating backup
        (``.statekit/backups/episodes/<show>/<ep>/episode.v<version>.<ext>``),
        and that folder, made if missing and held open (the caller closes
        it); None with ``backups: 0``."""
        if current is None or current.model is None or self.keep == 0:
            return None, None
        model = current.model
        parts = backup_parts(model.show_id, model.episode_id)
        # not fsynced: a backup folder needs no durable entry (the backup is a spare)
        folder = self.folders.walk(parts, create=True, durable=False)
        name = path[path.rfind("/") + 1:]  # (os.path's basename and splitext: episode.<ext>)
        dot = name.rfind(".")
        stem, ext = (name[:dot], name[dot:]) if dot > len(name) - len(name.lstrip(".")) else (name, "")
        return "/".join((self.root, *parts, f"{stem}.v{model.version}{ext}")), folder

    def spare(self, kept: str, version: int, folder: int) -> str | None:
        """The backup that rotation drops once ``kept`` (version ``version``) is kept, in the
        backup ``folder``: the write may reuse its file as its temp file (``files.atomic_write``'s
        ``recycle``). A write that fails after taking it leaves one backup fewer: the oldest one.

        As ``rotate`` decides: the one ``keep`` versions back, by name; on a 16th version,
        where ``rotate`` lists the folder and keeps the newest ``keep``, the oldest of those the
        listing drops (after a version that jumped, the one ``keep`` back may be among the
        newest: taking it lost a backup the listing keeps, and kept one it drops)."""
        if self.keep == 0 or version <= self.keep:
            return None
        if version % 16 == 0:
            cut = kept.rindex("/")
            try:
                names = os.listdir(folder)
            except OSError:
                return None  # (rotate's listing meets the same folder and logs)
            if kept[cut + 1:] not in names:
                names.append(kept[cut + 1:])  # (linked after this, before rotate lists the folder)
            dropped = [name for v, name in self.dropped(names) if v != version]
            return f"{kept[:cut]}/{dropped[-1]}" if dropped else None
        return self.by_name(kept, version)

    def by_name(self, kept: str, version: int) -> str:
        """The backup ``keep`` versions before ``kept`` (version ``version``): the one that falls
        out when versions go up one per write."""
        suffix = kept[kept.rindex("."):]
        return f"{kept[:kept.rindex('.v')]}.v{version - self.keep}{suffix}"

    def dropped(self, names: list[str]) -> list[tuple[int, str]]:
        """(version, name) of the backups among a folder's ``names`` past the newest ``keep``,
        newest first: what ``rotate`` removes on a 16th version (and ``spare`` picks from)."""
        return sorted(backup_versions(names), reverse=True)[self.keep:]

    def rotate(self, kept: str, version: int, folder: int, *, spare_taken: bool = False) -> None:
        """Keep the newest ``keep`` versions (a failure here only logs: the write is done).

        Versions go up one per write, so the backup that falls out is the one
        ``keep`` versions back, removed by name (``spare_taken``: the write took it as its
        temp file, it is gone already). Every 16th version the folder is listed instead,
        which also clears what versions that jumped (a hand edit of ``version``) left behind."""
        keep_n = self.keep
        disk = self.folders.disk
        try:
            if version % 16:
                if version > keep_n and not spare_taken:
                    try:
                        disk.unlink(self.by_name(kept, version), dir_fd=folder)
                    except FileNotFoundError:
                        pass
                return
            directory = os.path.dirname(kept)
            for _version, name in self.dropped(os.listdir(folder)):
                disk.unlink(os.path.join(directory, name), dir_fd=folder)
        except OSError as exc:
            log.warning("statekit: could not rotate the backups next to %s (%s)", kept, exc)

    def listing(self, paths: EpisodePaths, show: str, ep: str, check: Check) -> list[Backup] | None:
        """The episode's backups, newest first, each checked with ``check``;
        None if it has no backup folder."""
        with self.folders.open_existing(backup_parts(show, ep)) as folder:
            if folder is None:
                return None
            return self.listing_in(paths, show, ep, folder, check)

    def listing_in(self, paths: EpisodePaths, show: str, ep: str, folder: int, check: Check) -> list[Backup]:
        """``listing``, read in the backup ``folder`` held open."""
        directory = "/".join((self.root, *backup_parts(show, ep)))
        live = set()  # a write killed between linking the old file and its rename leaves a "backup"
        for p in paths.files:  # that is the live file itself: no copy of anything
            try:
                st = os.lstat(p)
                live.add((st.st_dev, st.st_ino))
            except FileNotFoundError:
                pass
        out: list[Backup] = []
        for version, name in sorted(backup_versions(os.listdir(folder)), reverse=True):
            path = os.path.join(directory, name)
            try:
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in live:
                continue
            problem = None
            try:
                raw = diskio.read_file(path, dir_fd=folder)
                if raw is None:
                    continue
                check(path, raw, show, ep)
            except (CorruptFileError, ValidationError, SchemaVersionError, UnsafePathError) as exc:
                problem = exc.one_line()
            out.append(Backup(number=len(out) + 1, version=version, path=path, size=st.st_size,
                              saved_at=datetime.fromtimestamp(st.st_mtime, timezone.utc), problem=problem))
        return out

    def newest_valid(self, paths: EpisodePaths, show: str, ep: str, check: Check) -> Backup | None:
        try:
            return next((b for b in self.listing(paths, show, ep, check) or [] if b.problem is None), None)
        except (StatekitError, OSError):
            return None

    def drop_live_links(self, show: str, ep: str, path: str, folder: int, kept: int) -> None:
        """Remove "backups" that are the live file itself: a write killed between
        linking the old file and renaming the new one in leaves one, and once the
        file is replaced it would pass for a backup (of damage, if the file was
        damaged in place). The caller holds the episode lock, the episode's
        ``folder`` and its backup folder ``kept``."""
        directory = "/".join((self.root, *backup_parts(show, ep)))
        try:
            st = os.stat(os.path.basename(path), dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return
        for _version, name in backup_versions(os.listdir(kept)):
            link = os.path.join(directory, name)
            try:
                other = os.stat(name, dir_fd=kept, follow_symlinks=False)
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    self.folders.disk.unlink(link, dir_fd=kept)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise diskio.storage_error(exc, link, "remove a leftover backup link") from exc

    def copy_to_trash(self, path: str, show: str, name: str, folder: int) -> str:
        """Keep a file's current bytes (``path``, in ``folder`` held open) in
        ``.statekit/trash/<show>/`` (a hard link, durable) before it is replaced."""
        target = f"{self.root}/.statekit/trash/{show}/{name}"
        disk = self.folders.disk
        with self.folders.open(trash_parts(show), create=True) as trash:
            try:
                disk.link(path, target, src_dir_fd=folder, dst_dir_fd=trash)
                disk.fsync(trash)
            except OSError as exc:
                raise diskio.storage_error(exc, path, "keep a copy in the trash") from exc
        return target

    def to_trash(self, show: str, ep: str, stamp: str) -> None:
        """Move an episode's backup folder into the trash (it was deleted, or
        a new episode takes its id: old backups must not be restored into it)."""
        parts = backup_parts(show, ep)
        with self.folders.open_existing(parts[:-1]) as parent:
            if parent is None:
                return
            try:
                st = os.stat(ep, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            source = "/".join((self.root, *parts))
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePathError(f"refusing to follow a symlink at {source}", path=source)
            if not stat.S_ISDIR(st.st_mode):
                return
            with self.folders.open(trash_parts(show), create=True) as trash:
                diskio.move(self.folders.disk, source, f"{self.root}/.statekit/trash/{show}/{ep}.{stamp}.backups",
                            src_dir_fd=parent, dst_dir_fd=trash)
