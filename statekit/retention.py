"""Retention: compress what finished episodes no longer change (``statekit compact``).

An episode in a terminal stage whose files nobody touched for ``older_than``
(``retention: {older_than: 30d}``) has its ``events.jsonl`` and its
``checkpoints/<stage>.json`` replaced by gzip files (``packed``: durable,
and a crash at any point leaves every file readable). Nothing else changes:
the episode file, its version, the index, and the hash chain, which is over
the uncompressed lines (``verify`` reads them back). Every reader takes either
form (``eventlog``, ``parsing.read_checkpoint``); a later write makes the log
plain again first (``eventlog.append_event``), under the episode's lock, so
the uncommitted-tail rule keeps working on byte offsets, and a revived episode
is compacted again once it is old again.

"Untouched" is judged by the files' modification times (the episode file, the
log, the checkpoints): every write and every hand edit moves them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from . import packed
from .errors import StatekitError, ValidationError
from .index.scan import walk
from .layout import checkpoint_stages
from .writes import Writer

Progress = Callable[[int, int], None]

DEFAULT_OLDER_THAN = timedelta(days=30)


@dataclass
class Compacted:
    """One episode whose files were (or, in a dry run, would be) compressed."""

    show_id: str
    episode_id: str
    files: list[str]
    """Paths relative to the store, as they were before (``.../events.jsonl``)."""
    bytes_before: int
    bytes_after: int


@dataclass
class CompactReport:
    dry_run: bool
    older_than_seconds: float
    checked: int = 0
    """Episodes looked at."""
    compacted: list[Compacted] = field(default_factory=list)
    already: int = 0
    """Episodes old enough whose files were compressed before."""
    problems: list[str] = field(default_factory=list)
    """Episodes left as they were, with the reason (a damaged or hard-linked file)."""

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.compacted)

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.compacted)

    @property
    def saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def as_dict(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "older_than_seconds": self.older_than_seconds, "checked": self.checked,
                "episodes": len(self.compacted), "files": sum(len(c.files) for c in self.compacted),
                "already_compressed": self.already, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "bytes_saved": self.saved,
                "compacted": [{"show_id": c.show_id, "episode_id": c.episode_id, "files": c.files,
                               "bytes_before": c.bytes_before, "bytes_after": c.bytes_after}
                              for c in self.compacted],
                "problems": self.problems}


class Retention:
    """Compaction of one store's finished episodes, under each episode's lock."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def compact(self, older_than: timedelta, *, dry_run: bool = False, now: float | None = None,
                progress: Progress | None = None) -> CompactReport:
        """Compress the logs and checkpoints of every episode in a terminal stage whose
        files are all older than ``older_than`` (at ``now``, seconds since the epoch;
        default: the store's clock). ``dry_run``: measure what it would save, change nothing."""
        if not isinstance(older_than, timedelta) or older_than.total_seconds() <= 0:
            raise ValidationError(f"older_than must be a positive age, got {older_than!r}",
                                  hint="e.g. 30d (retention: {older_than: 30d} in statekit.yaml)")
        moment = now if now is not None else self.writer.clock().timestamp()
        cutoff = moment - older_than.total_seconds()
        report = CompactReport(dry_run=dry_run, older_than_seconds=older_than.total_seconds())
        found = list(walk(self.writer.root))
        terminal = set(self.writer.pipeline.terminal)
        for done, (show, ep, path, st) in enumerate(found):
            if progress is not None:
                progress(done, len(found))
            report.checked += 1
            if st.st_mtime > cutoff:
                continue  # written lately: not a candidate (the cheap looks, before the lock)
            if not self._has_plain(show, ep):
                report.already += 1  # compressed before (or nothing to compress): not read again
                continue
            try:
                self._compact_one(show, ep, path, cutoff, terminal, report)
            except StatekitError as exc:
                report.problems.append(f"{show}/{ep}: {exc.one_line()}; left as it was")
        if progress is not None:
            progress(len(found), len(found))
        return report

    def _has_plain(self, show: str, ep: str) -> bool:
        paths = self.writer.paths(show, ep)
        return os.path.lexists(paths.events) or any(
            os.path.lexists(paths.checkpoint(s)) for s in checkpoint_stages(paths.dir))

    def _compact_one(self, show: str, ep: str, path: str, cutoff: float, terminal: set[str],
                     report: CompactReport) -> None:
        writer = self.writer
        paths = writer.paths(show, ep)
        with writer.locks.episode(show, ep), writer.episode_folder(show, ep) as folder:
            _path, parsed = writer.load(show, ep, folder)
            if parsed.model.stage not in terminal:
                return
            stages = checkpoint_stages(paths.dir)
            plain = ["events.jsonl"] if os.path.lexists(paths.events) else []
            plain += [f"checkpoints/{s}.json" for s in stages if os.path.lexists(paths.checkpoint(s))]
            newest = max([os.lstat(path).st_mtime] + [_mtime(os.path.join(paths.dir, name)) for name in plain])
            if newest > cutoff:
                return
            if not plain:
                return  # compressed meanwhile
            before = after = 0
            done: list[str] = []
            if plain[0] == "events.jsonl":
                sizes = packed.compress(writer.disk, paths.events, dir_fd=folder, dry_run=report.dry_run)
                if sizes is not None:
                    before, after = before + sizes[0], after + sizes[1]
                    done.append(os.path.relpath(paths.events, writer.root))
            if any(name.startswith("checkpoints/") for name in plain):
                with writer.folders.open_existing(("shows", show, "episodes", ep, "checkpoints")) as checkpoints:
                    for name in plain:
                        if not name.startswith("checkpoints/") or checkpoints is None:
                            continue
                        cp = os.path.join(paths.dir, name)
                        sizes = packed.compress(writer.disk, cp, dir_fd=checkpoints, dry_run=report.dry_run)
                        if sizes is not None:
                            before, after = before + sizes[0], after + sizes[1]
                            done.append(os.path.relpath(cp, writer.root))
            if done:
                report.compacted.append(Compacted(show, ep, done, before, after))


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def older_than_of(writer: Writer) -> timedelta:
    """The store's ``retention: {older_than}`` (30 days when not set)."""
    retention = writer.config.retention
    return retention.age if retention is not None else DEFAULT_OLDER_THAN

