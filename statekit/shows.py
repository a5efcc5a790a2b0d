"""Shows: ``show.yaml`` (title, metadata, the order of its episodes) and the list of shows.

An episode's folder is the truth of what a show holds; ``show.yaml`` only
orders it, and is reconciled with the folders whenever it is read
(``reconcile``) or an episode comes or goes (``list_in``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from . import files as diskio
from .codecs import YAML_CODEC, Parsed
from .errors import InvalidIdError, ShowNotFoundError, StatekitError, StorageError
from .ids import check_id
from .index.rows import show_row
from .layout import show_file
from .models import Show
from .parsing import invalid, parse_show, sha256
from .writes import Writer

log = logging.getLogger("statekit")


def reconcile(listed: list[str], on_disk: list[str]) -> list[str]:
    """The show's order: listed ids that exist, then unlisted ones by name
    (an episode directory is the truth; show.yaml only orders them)."""
    present = set(on_disk)
    ids = [i for i in dict.fromkeys(listed) if i in present]
    known = set(ids)
    return ids + [i for i in on_disk if i not in known]


class Shows:
    """The shows of one store, written through its ``writer``'s folders and locks."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.root = writer.root

    def ids(self) -> list[str]:
        """Ids of the shows in the store, sorted."""
        try:
            entries = os.scandir(os.path.join(self.root, "shows"))
        except FileNotFoundError:
            return []
        with entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        out = []
        for name in sorted(names):
            try:
                out.append(check_id(name, "show id"))
            except InvalidIdError:
                continue  # not ours (e.g. a stray folder someone made)
        return out

    def episode_ids_on_disk(self, show: str) -> list[str]:
        """The episodes whose folder holds an episode file, by name."""
        directory = os.path.join(self.root, "shows", show, "episodes")
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and any(
                os.path.isfile(os.path.join(entry.path, "episode" + s)) for s in (".yaml", ".json")
            ):
                found.append(entry.name)
        return found

    def read(self, show: str) -> tuple[Parsed | None, Show | None]:
        """show.yaml parsed (cached by its bytes), or (None, None) if there is none."""
        path = show_file(self.root, show)
        raw = diskio.read_file(path)
        if raw is None:
            return None, None
        parsed = self.writer.cached(path, raw)
        if parsed is None:
            parsed = parse_show(path, raw)
            self.writer.remember(path, parsed)
        return parsed, parsed.model

    def list_in(self, show: str, edit: Callable[[list[str]], list[str]]) -> None:
        """Update show.yaml's order after an episode came or went. The episode's
        own write is done and durable by then, and show.yaml only orders what
        the folders hold (it is reconciled on every read), so a failure here is
        logged, not raised: the caller's change stands."""
        try:
            self.edit(show, edit)
        except StorageError as exc:
            log.warning("statekit: could not update the episode order in show %s (%s); it is put right on the "
                        "next change to the show", show, exc.one_line())

    def edit(self, show: str, edit: Callable[[list[str]], list[str]]) -> Show:
        """Rewrite show.yaml's episode list (caller holds the show lock)."""
        writer = self.writer
        parsed, current = self.read(show)
        now = writer.clock()
        if current is None:
            current = Show(show_id=show, title=show, created_at=now, updated_at=now)
        ids = reconcile(edit(list(current.episodes)), self.episode_ids_on_disk(show))
        if ids == current.episodes and parsed is not None:
            return current
        new = current.model_copy(update={"episodes": ids, "updated_at": now})
        stored = YAML_CODEC.dump(new.model_dump(mode="json"), parsed)
        path = show_file(self.root, show)
        try:
            with writer.folders.open(("shows", show)) as folder:
                st = diskio.atomic_write(writer.disk, path, stored.raw, dir_fd=folder)
        except FileNotFoundError as exc:  # the show's folder is gone
            raise diskio.storage_error(exc, path, "write") from exc
        stored.model = new
        writer.remember(path, stored)
        self.index_show(new, stored.raw, st)
        if ids[: len(current.episodes)] != current.episodes:  # not a plain append: renumber the order
            writer.index_quietly(f"the order of show {show}", positions=(show, ids))
        return new

    def index_show(self, show: Show, raw: bytes, st: os.stat_result) -> None:
        row = show_row(show.model_dump(mode="json"), path=os.path.relpath(show_file(self.root, show.show_id), self.root),
                       size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256(raw), checked_at_ns=time.time_ns())
        self.writer.index_quietly(f"show {show.show_id}", show_rows=[row])

    def reconcile_file(self, show: str, on_disk: list[str]) -> list[str]:
        """Make show.yaml list exactly the episodes in its folder (listed ones
        first, in their order); its index row follows. Returns the order."""
        with self.writer.locks.show(show):
            parsed, current = self.read(show)
            ids = reconcile(list(current.episodes) if current else [], sorted(on_disk))
            if current is None or ids != current.episodes:
                return self.edit(show, lambda _listed: ids).episodes
            st = os.stat(show_file(self.root, show))
            self.index_show(current, parsed.raw if parsed else b"", st)
            return ids

    def create(self, show: str, *, title: str | None = None, metadata: Mapping[str, Any] | None = None) -> Show:
        """Create a show with a title and metadata (creating an episode also creates its show)."""
        check_id(show, "show id")
        writer = self.writer
        with writer.locks.show(show):
            if self.read(show)[1] is not None:
                raise StatekitError(f"show {show!r} already exists", show_id=show, hint="pick another show id")
            now = writer.clock()
            try:
                model = Show.model_validate({"show_id": show, "title": show if title is None else title,
                                             "created_at": now, "updated_at": now,
                                             "metadata": {} if metadata is None else metadata})
            except PydanticValidationError as exc:
                raise invalid(exc, None, None, "show") from None
            writer.folders.make(("shows", show, "episodes"))
            raw = YAML_CODEC.dump_plain(model.model_dump(mode="json"))
            with writer.folders.open(("shows", show)) as folder:
                self.index_show(model, raw, diskio.atomic_write(writer.disk, show_file(self.root, show), raw,
                                                                dir_fd=folder))
        return model

    def get(self, show: str) -> Show:
        """The show, its episode list reconciled with the episodes on disk."""
        check_id(show, "show id")
        if not self.writer.folders.exists(("shows", show)):
            raise ShowNotFoundError(f"show {show!r} not found", show_id=show)
        _, model = self.read(show)
        on_disk = self.episode_ids_on_disk(show)
        if model is None:
            now = self.writer.clock()
            model = Show(show_id=show, title=show, created_at=now, updated_at=now)
        return model.model_copy(update={"episodes": reconcile(model.episodes, on_disk)})

    def known(self, show: str | None) -> None:
        """``ShowNotFoundError`` unless ``show`` is None or a show of the store."""
        if show is not None:
            check_id(show, "show id")
            if not self.writer.folders.exists(("shows", show)):
                raise ShowNotFoundError(f"show {show!r} not found", show_id=show)
