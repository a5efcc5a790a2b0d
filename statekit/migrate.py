"""Schema migration of episode files, and import of legacy (schema-0) files.

``migrate`` rewrites files of an older schema at the current one through the
write path, each first copied to ``.statekit/backups/migrate-<time>/``;
``import_legacy`` brings the state-management document's YAML files into a
show as new episodes, each bad file reported with why and none stopping it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from . import files as diskio
from .codecs import YAML_CODEC
from .config import upgrade_store_format
from .episodes import Episodes
from .errors import CorruptFileError, EpisodeExistsError, StatekitError, UnsafePathError, ValidationError
from .ids import check_id
from .layout import show_file
from .models import EPISODE_SCHEMA, SHOW_SCHEMA, STORE_SCHEMA, Episode
from .parsing import invalid, stamp
from .schema import legacy_id, schema_of, upgrade_episode
from .shows import Shows
from .writes import Writer

Progress = Callable[[int, int], None]


@dataclass
class MigrationReport:
    """What ``migrate`` found (dry run) or rewrote: one entry per file."""

    dry_run: bool
    files: list[dict[str, Any]] = field(default_factory=list)
    backup_dir: str | None = None
    sealed: list[str] = field(default_factory=list)
    """Episodes whose log is (or, in a dry run, would be) sealed: the store moves to the ledger."""
    store_format: tuple[int, int] | None = None
    """``statekit.yaml``'s format before and after, when it changes."""


@dataclass
class ImportReport:
    """What ``import_legacy`` did, file by file (``file`` is relative to the
    folder imported from): ``imported`` and ``skipped`` name the episode,
    ``skipped`` and ``rejected`` say why."""

    imported: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {"imported": len(self.imported), "skipped": len(self.skipped), "rejected": len(self.rejected)}


def printable(text: str) -> str:
    """A file name as text that can be stored and printed (bytes that are not
    UTF-8 shown as ``\\udcxx`` escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def legacy_files(top: str, report: ImportReport) -> list[str]:
    """Every entry named ``*.yaml`` or ``*.yml`` under ``top``, sorted, without
    following symlinks; a folder that cannot be listed is reported as rejected."""
    found: list[str] = []

    def unlisted(exc: OSError) -> None:
        where = printable(os.path.relpath(exc.filename or top, top))
        report.rejected.append({"file": where + os.sep, "reason": f"could not list the folder: {exc.strerror or exc}"})

    for folder, dirs, names in os.walk(top, onerror=unlisted):
        dirs.sort()
        found += [os.path.join(folder, n) for n in (*dirs, *names) if n.endswith((".yaml", ".yml"))]
    return sorted(found)


class Migration:
    """Migration and import over the store's ``writer``, ``shows`` and ``episodes``."""

    def __init__(self, writer: Writer, shows: Shows, episodes: Episodes) -> None:
        self.writer = writer
        self.shows = shows
        self.episodes = episodes

    def migrate(self, *, dry_run: bool = False, progress: Progress | None = None, ledger: bool = False
                ) -> MigrationReport:
        """Rewrite episode files of an older schema at the current one (see ``Store.migrate``)."""
        writer = self.writer
        report = MigrationReport(dry_run=dry_run)
        stale = []
        found_eps = [(show, ep) for show in self.shows.ids() for ep in self.shows.episode_ids_on_disk(show)]
        for done, (show, ep) in enumerate(found_eps):
            if progress is not None:
                progress(done, len(found_eps))
            path, parsed = writer.load(show, ep)
            found = schema_of(parsed.data, path, current=EPISODE_SCHEMA, legacy_ok=True)
            if found < EPISODE_SCHEMA:
                stale.append((show, ep, path, found))
                report.files.append({"path": os.path.relpath(path, writer.root), "episode": f"{show}/{ep}",
                                     "from": found, "to": EPISODE_SCHEMA})
        old_shows = []
        for show in self.shows.ids():
            try:
                found = self.shows.schema(show)
            except StatekitError:
                continue  # a damaged show.yaml: verify and rebuild report it; migrate leaves it
            if found is not None and found < SHOW_SCHEMA:
                old_shows.append(show)
                report.files.append({"path": os.path.relpath(show_file(writer.root, show), writer.root),
                                     "show": show, "from": found, "to": SHOW_SCHEMA})
        if ledger and not writer.chained:  # the store's logs are sealed, then the store moves to the ledger's format
            report.store_format = (writer.config.schema_version, STORE_SCHEMA)
            stale_keys = {(show, ep) for show, ep, _path, _found in stale}
            report.sealed = [f"{show}/{ep}" for show, ep in found_eps if (show, ep) not in stale_keys]
            report.sealed += [f"{show}/{ep}" for show, ep, _path, _found in stale]
        if dry_run:
            return report
        if ledger and not writer.chained:
            self._seal(found_eps, {(show, ep) for show, ep, _path, _found in stale}, progress)
        if not (stale or old_shows):
            return report
        backup = os.path.join(".statekit", "backups", f"migrate-{stamp(writer.clock())}")
        report.backup_dir = os.path.join(writer.root, backup)

        def keep(path: str, raw: bytes) -> None:
            parts = tuple(os.path.join(backup, os.path.relpath(os.path.dirname(path), writer.root)).split(os.sep))
            writer.folders.make(parts)
            with writer.folders.open(parts) as folder:
                diskio.atomic_write(writer.disk, "/".join((writer.root, *parts, os.path.basename(path))), raw,
                                    dir_fd=folder)

        for show in old_shows:
            self.shows.upgrade(show, keep)
        for done, (show, ep, path, found) in enumerate(stale):
            if progress is not None:
                progress(done, len(stale))
            rel = os.path.relpath(os.path.dirname(path), writer.root)
            parts = tuple(os.path.join(backup, rel).split(os.sep))
            writer.folders.make(parts)

            def copy_first(new: Episode, path: str = path, parts: tuple[str, ...] = parts) -> None:
                raw = diskio.read_file(path)  # under the episode lock: the bytes about to be replaced
                if raw is not None:
                    with writer.folders.open(parts) as folder:
                        diskio.atomic_write(writer.disk, "/".join((writer.root, *parts, os.path.basename(path))),
                                            raw, dir_fd=folder)

            def change(m: Episode, now: datetime, found: int = found) -> tuple[Episode, dict[str, Any]]:
                new = m.model_copy(update={"version": m.version + 1, "updated_at": now})
                return new, {"kind": "migrate", "message": f"schema {found} -> {EPISODE_SCHEMA}"}

            writer.write(show, ep, change, before_commit=copy_first)
        return report

    def _seal(self, found_eps: list[tuple[str, str]], also_migrated: set[tuple[str, str]],
              progress: Progress | None) -> None:
        """Seal every episode's log (one ``seal`` event carrying the whole current data, the
        hash of the log's last line and of the whole log so far: everything after is chained),
        then move ``statekit.yaml`` to the ledger's format, after which statekit releases that
        know no ledger refuse the store. An episode whose file is migrated too is sealed by
        that write (the store is chained by then)."""
        writer = self.writer
        for done, (show, ep) in enumerate(found_eps):
            if progress is not None:
                progress(done, len(found_eps))
            if (show, ep) in also_migrated:
                continue

            def change(m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
                new = m.model_copy(update={"version": m.version + 1, "updated_at": now})
                return new, {"kind": "seal", "message": "the log before this line is sealed (statekit migrate)"}

            writer.write(show, ep, change, seal=True)
        upgrade_store_format(writer.folders, STORE_SCHEMA)
        writer.config = writer.config.model_copy(update={"schema_version": STORE_SCHEMA})

    def import_legacy(self, legacy_dir: str | os.PathLike[str], show: str,
                      progress: Progress | None = None) -> ImportReport:
        """Bring schema-0 episode YAML files into ``show`` (see ``Store.import_legacy``)."""
        check_id(show, "show id")
        top = os.fspath(legacy_dir)
        if not os.path.isdir(top):
            raise ValidationError(f"{top} is not a directory", hint="give the folder holding the legacy YAML files")
        report = ImportReport()
        found = legacy_files(top, report)
        taken: dict[str, str] = {}  # episode id -> the file that has it
        for done, path in enumerate(found):
            if progress is not None:
                progress(done, len(found))
            rel = printable(os.path.relpath(path, top))
            try:
                ep, created = self._import_one(path, rel, show, taken)
            except EpisodeExistsError as exc:  # created meanwhile by someone else
                report.skipped.append({"file": rel, "episode": f"{show}/{exc.episode_id}", "reason": exc.message})
            except StatekitError as exc:
                report.rejected.append({"file": rel, "reason": exc.one_line()})
            else:
                taken[ep] = rel
                entry = {"file": rel, "episode": f"{show}/{ep}"}
                if created:
                    report.imported.append(entry)
                else:
                    report.skipped.append({**entry, "reason": "already in the store"})
        return report

    def _import_one(self, path: str, rel: str, show: str, taken: dict[str, str]) -> tuple[str, bool]:
        """Import one legacy file: its episode id, and False if that episode
        was already in the store (nothing written). Raises why the file is
        rejected; ``taken``: ids earlier files of this import gave."""
        writer = self.writer
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise diskio.storage_error(exc, path, "read") from exc
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"{rel} is a symbolic link", path=path,
                                  hint="statekit does not follow links: copy the file itself in")
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise CorruptFileError(f"{rel} is {kind}, not a YAML file", path=path,
                                   hint="only files are imported; rename it if it is not one")
        data = YAML_CODEC.load(diskio.read_file(path) or b"", path)
        if "schema_version" in data:
            raise ValidationError(f"{path}: has schema_version, so it is not a schema-0 file",
                                  hint="import reads the state-management document's files; "
                                       "copy a statekit episode folder in instead")
        source = data.get("episode_id") or Path(path).stem
        ep = legacy_id(str(source))
        if ep in taken:
            raise ValidationError(f"{path}: episode id {ep!r} is also used by {taken[ep]}",
                                  hint="give one of them another episode_id; nothing was imported from this file")
        if writer.exists(show, ep):
            return ep, False
        upgraded, _ = upgrade_episode(data, path=path, show_id=show, episode_id=ep, now=writer.clock())
        upgraded["version"] = 1
        try:
            model = Episode.model_validate(upgraded)
        except PydanticValidationError as exc:
            raise invalid(exc, None, path, "episode") from None
        if model.stage not in writer.pipeline.stages:
            raise ValidationError(
                f"{path}: stage {model.stage!r} is not a stage of pipeline {writer.pipeline.name!r}",
                field="stage", hint="stages: " + ", ".join(writer.pipeline.stages))
        self.episodes.create_from(model, {"kind": "import", "to_stage": model.stage,
                                          "message": f"imported from {rel}"})
        return ep, True
