"""Episode assets and uploads: media stored once by content, named by episodes.

``add`` stores the content (``objects``) and records it in the episode
through the write path (one ``asset`` event); ``record_uploads`` records
where assets went; ``gc_objects`` removes content nothing names any more,
``gc_run_temp`` the temp folders of stopped runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from . import files as diskio
from . import objects
from .errors import AssetNotFoundError, StatekitError, ValidationError
from .ids import check_id
from .layout import RUN_TEMP, subdirs
from .models import AssetRecord, Episode, UploadRecord, check_text
from .objects import ObjectsReport, Removed
from .schema import legacy_id
from .writes import Writer

log = logging.getLogger("statekit")

Extra = Callable[[Episode, datetime], dict[str, Any]]


class Assets:
    """The assets of one store's episodes, recorded through its ``writer``."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.root = writer.root

    def add(self, show: str, ep: str, source: bytes | str | os.PathLike[str], kind: str = "audio",
            name: str | None = None, *, media_type: str | None = None, label: str | None = None,
            extra: Extra | None = None, event_extra: Mapping[str, Any] | None = None) -> Episode:
        """Store ``source`` once by its sha256 and record it as ``assets[name]``
        (see ``Store.add_asset``); ``extra``/``event_extra``: a run's lease fields."""
        check_id(show, "show id")
        check_id(ep, "episode id")
        check_id(kind, "asset kind")
        if isinstance(source, (bytes, bytearray, memoryview)):
            data: bytes | None = bytes(source)
            path = None
        elif isinstance(source, (str, os.PathLike)):
            data = None
            path = os.fspath(source)
            if not isinstance(path, str) or not path:
                raise ValidationError(f"asset source must be a file path or bytes, got {source!r}")
        else:
            raise ValidationError(f"asset source must be a file path or bytes, got {type(source).__name__}")
        if name is None:
            name = legacy_id(os.path.basename(path)) if path else kind
        check_id(name, "asset name")
        if media_type is None:
            media_type = objects.guess_media_type(path or name)
        elif not isinstance(media_type, str) or not re.fullmatch(r"[\w.+-]+/[\w.+-]+", media_type):
            raise ValidationError(f"media_type must look like 'audio/wav', got {media_type!r}")
        if label is None:  # a file name need not be UTF-8; what is recorded must be
            label = os.path.abspath(path).encode("utf-8", "backslashreplace").decode("utf-8") if path else None
        elif not isinstance(label, str) or len(label) > 4096:
            raise ValidationError("label must be text of at most 4096 characters",
                                  hint="leave it out to record the source path; nothing was changed")
        check_text(label, "label")
        writer = self.writer
        writer.require_folders(show, ep)
        disk, root_fd = writer.disk, writer.folders.root_fd
        with writer.locks.objects(exclusive=False, timeout=writer.config.lock_timeout):
            stored = (objects.put_bytes(disk, self.root, data, root_fd=root_fd) if data is not None
                      else objects.put_file(disk, self.root, path, root_fd=root_fd))  # type: ignore[arg-type]
            objects.write_sidecar(disk, self.root, stored, root_fd=root_fd, media_type=media_type,
                                  source=label, now=writer.clock())

            def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
                more = extra(m, now) if extra is not None else {}
                old = m.assets.get(name)
                if old is not None and old.sha256 == stored.sha256 and old.kind == kind and not more:
                    return None  # already recorded: nothing to write
                record = AssetRecord(sha256=stored.sha256, size=stored.size, kind=kind, media_type=media_type,
                                     source=label, added_at=now)
                uploads = m.uploads
                if name in uploads and uploads[name].sha256 != stored.sha256:
                    uploads = {k: v for k, v in uploads.items() if k != name}
                new = m.model_copy(update={**more, "version": m.version + 1, "updated_at": now,
                                           "assets": {**m.assets, name: record}, "uploads": uploads})
                return new, {"kind": "asset", "asset": name, "content_sha256": stored.sha256, "size": stored.size,
                             "replaced": old.sha256 if old is not None and old.sha256 != stored.sha256 else None,
                             **(event_extra or {})}

            episode = writer.write(show, ep, change)
        self._link(show, ep, name, stored.sha256)
        return episode

    def _link(self, show: str, ep: str, name: str, sha: str) -> None:
        """``episodes/<ep>/assets/<name>``: a hard link to the object ``sha`` (no copy),
        for people; best effort (the episode file is what counts)."""
        target = objects.object_path(self.root, sha)
        writer = self.writer
        try:
            with writer.folders.open(("shows", show, "episodes", ep, "assets"), create=True) as folder, \
                    writer.folders.open((objects.OBJECTS, sha[:2])) as store_folder:
                directory = f"{writer.paths(show, ep).dir}/assets"
                link = os.path.join(directory, name)
                try:
                    if os.path.samestat(os.stat(name, dir_fd=folder, follow_symlinks=False),
                                        os.stat(sha, dir_fd=store_folder, follow_symlinks=False)):
                        return
                except FileNotFoundError:
                    pass
                tmp = os.path.join(directory, f"{diskio.TEMP_PREFIX}{name}.{os.getpid()}{diskio.TEMP_SUFFIX}")
                try:
                    writer.disk.link(target, tmp, src_dir_fd=store_folder, dst_dir_fd=folder)
                    writer.disk.replace(tmp, link, src_dir_fd=folder, dst_dir_fd=folder)
                finally:
                    if diskio.lexists(tmp, dir_fd=folder):
                        os.unlink(os.path.basename(tmp), dir_fd=folder)
                writer.disk.fsync(folder)
        except (StatekitError, OSError) as exc:
            log.info("statekit: no link to asset %s in %s/%s (%s); the asset is in %s", name, show, ep, exc,
                     os.path.relpath(target, self.root))

    def record(self, show: str, ep: str, name: str) -> AssetRecord:
        """The episode's record of asset ``name`` (``AssetNotFoundError`` if none)."""
        check_id(name, "asset name")
        record = self.writer.get(show, ep).assets.get(name)
        if record is None:
            raise AssetNotFoundError(f"{show}/{ep} has no asset {name!r}", show_id=show, episode_id=ep,
                                     hint=f"see its assets with 'statekit asset list {show}/{ep}'")
        return record

    def path(self, show: str, ep: str, name: str) -> str:
        """Where asset ``name``'s content is (read it, never write it)."""
        return objects.object_path(self.root, self.record(show, ep, name).sha256)

    def verify(self, show: str, ep: str, name: str) -> str:
        """Hash asset ``name`` and return its path; ``CorruptFileError`` if it changed."""
        record = self.record(show, ep, name)
        return objects.check_object(self.root, record.sha256, record.size, what=f"asset {name!r} of {show}/{ep}",
                                    show_id=show, episode_id=ep)

    def remove(self, show: str, ep: str, name: str) -> Episode:
        """Forget asset ``name`` (one ``asset_removed`` event)."""
        check_id(name, "asset name")

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
            if name not in m.assets:
                raise AssetNotFoundError(f"{m.key} has no asset {name!r}", show_id=show, episode_id=ep)
            new = m.model_copy(update={
                "version": m.version + 1, "updated_at": now,
                "assets": {k: v for k, v in m.assets.items() if k != name},
                "uploads": {k: v for k, v in m.uploads.items() if k != name}})
            return new, {"kind": "asset_removed", "asset": name}

        writer = self.writer
        episode = writer.write(show, ep, change)
        link = os.path.join(writer.paths(show, ep).dir, "assets", name)
        try:
            with writer.folders.open_existing(("shows", show, "episodes", ep, "assets")) as folder:
                if folder is not None and diskio.lexists(link, dir_fd=folder):
                    writer.disk.unlink(link, dir_fd=folder)
        except (StatekitError, OSError) as exc:
            log.info("statekit: could not remove %s (%s)", link, exc)
        return episode

    def record_uploads(self, show: str, ep: str, uploads: Mapping[str, UploadRecord | Mapping[str, Any]], *,
                       extra: Extra | None = None, event_extra: Mapping[str, Any] | None = None) -> Episode:
        """Record where assets were uploaded (see ``Store.record_uploads``)."""
        if not isinstance(uploads, Mapping) or not uploads:
            raise ValidationError("uploads must be a non-empty mapping of asset name to upload record")
        records: dict[str, UploadRecord] = {}
        for name, value in uploads.items():
            check_id(name, "asset name")
            try:
                records[name] = value if isinstance(value, UploadRecord) else UploadRecord.model_validate(value)
            except PydanticValidationError as exc:
                raise ValidationError(f"upload record for {name!r}: {exc.errors()[0]['msg']}") from None

        def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]] | None:
            more = extra(m, now) if extra is not None else {}
            for name, record in records.items():
                asset = m.assets.get(name)
                if asset is None:
                    raise AssetNotFoundError(f"{m.key} has no asset {name!r}", show_id=show, episode_id=ep)
                if asset.sha256 != record.sha256:
                    raise ValidationError(
                        f"asset {name!r} of {m.key} is not the content that was uploaded (sha256 "
                        f"{record.sha256[:12]}…, the asset is now {asset.sha256[:12]}…); the upload record was refused",
                        show_id=show, episode_id=ep, hint="upload the asset's current content again")
            if all(m.uploads.get(n) == r for n, r in records.items()) and not more:
                return None
            new = m.model_copy(update={**more, "version": m.version + 1, "updated_at": now,
                                       "uploads": {**m.uploads, **records}})
            return new, {"kind": "upload", "assets": sorted(records),
                         "urls": [records[n].url for n in sorted(records)], **(event_extra or {})}

        return self.writer.write(show, ep, change)

    def gc_objects(self, *, dry_run: bool = False, ignoring: set[str] | frozenset[str] = frozenset()
                   ) -> ObjectsReport:
        """Remove stored objects no file refers to (see ``Store.gc_objects``)."""
        report = ObjectsReport()
        writer = self.writer
        if not writer.folders.exists((objects.OBJECTS,)):
            return report
        with writer.locks.objects(exclusive=True, timeout=max(writer.config.lock_timeout, 30.0)):
            referenced = self._referenced(ignoring)
            top = os.path.join(self.root, objects.OBJECTS)
            with writer.folders.open((objects.OBJECTS,)) as store_folder:
                doomed: list[tuple[str, int, str]] = [
                    (p, os.stat(os.path.basename(p), dir_fd=store_folder, follow_symlinks=False).st_size,
                     "interrupted write") for p in diskio.temp_files(top, dir_fd=store_folder)]
            for sha, path, st in objects.stored_objects(self.root):
                if sha and not path.endswith(".json"):
                    report.objects += 1
                if sha and sha in referenced:
                    if not path.endswith(".json"):
                        report.referenced += 1
                    continue
                if sha:
                    doomed.append((path, st.st_size, "unreferenced" if not path.endswith(".json")
                                   else "sidecar of an unreferenced object"))
                elif diskio.TEMP_SUFFIX in path:
                    doomed.append((path, st.st_size, "interrupted write"))
            for path, size, reason in doomed:
                if not dry_run:
                    # the folder is walked again from the root: it may have been swapped for a symlink meanwhile
                    parts = tuple(os.path.relpath(os.path.dirname(path), self.root).split(os.sep))
                    with writer.folders.open_existing(parts) as folder:
                        if folder is None or not diskio.remove_file(writer.disk, path, "remove object",
                                                                    dir_fd=folder):
                            continue
                report.removed.append(Removed(os.path.relpath(path, self.root), size, reason))
        return report

    def gc_run_temp(self, live: Iterable[str], *, dry_run: bool = False) -> list[Removed]:
        """Remove the temp folders of runs not in ``live`` (run ids whose lease has not expired)."""
        top = os.path.join(self.root, *RUN_TEMP)
        writer = self.writer
        if not writer.folders.exists(RUN_TEMP):
            return []
        keep = set(live)
        removed = []
        with writer.folders.open_existing(RUN_TEMP) as runs:
            for run_id in subdirs(runs) if runs is not None else []:
                if run_id in keep:
                    continue
                path = os.path.join(top, run_id)
                size = 0
                for _directory, _dirs, names, fd in os.fwalk(run_id, dir_fd=runs):  # never follows a symlink
                    size += sum(os.stat(n, dir_fd=fd, follow_symlinks=False).st_size for n in names)
                if not dry_run:
                    shutil.rmtree(run_id, ignore_errors=True, dir_fd=runs)
                removed.append(Removed(os.path.relpath(path, self.root), size, "temp files of a stopped run"))
        return removed

    def _referenced(self, ignoring: set[str] | frozenset[str] = frozenset()) -> set[str]:
        """Every sha256 named by an episode file, a backup or anything in the
        trash (read as text: a damaged file still keeps its objects)."""
        found: set[str] = set()
        places = [os.path.join(self.root, "shows"), os.path.join(self.root, ".statekit", "backups"),
                  os.path.join(self.root, ".statekit", "trash")]
        for top in places:
            for directory, dirs, names in os.walk(top):
                dirs[:] = [d for d in dirs if d not in ("assets", "checkpoints")]
                for name in names:
                    path = os.path.join(directory, name)
                    if path in ignoring:
                        continue
                    if name.startswith("episode") and (name.endswith((".yaml", ".json")) or ".v" in name):
                        raw = diskio.read_file(path, limit=None)
                        if raw is not None:
                            found |= objects.referenced_hashes(raw)
        return found
