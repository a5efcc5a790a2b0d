"""Shows: ``show.yaml`` (title, metadata, the order of its episodes) and the list of shows.

An episode's folder is the truth of what a show holds. ``show.yaml``'s
``order`` lists only the episodes a person put in order by hand; every other
episode follows them in creation order (``created_at``, then id). So a
create never rewrites ``show.yaml`` (its cost does not grow with the show),
two processes creating and deleting at once cannot lose each other's
episodes from the order, and a delete rewrites it only if the episode was
listed. Ids listed there whose folder is gone are skipped when read, and
dropped by ``sync``.
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
from .index.rows import iso, show_row
from .layout import show_file
from .models import SHOW_SCHEMA, Show
from .parsing import invalid, parse_show, sha256
from .writes import Writer

log = logging.getLogger("statekit")


def reconcile(listed: list[str], on_disk: list[str], created: Mapping[str, str] | None = None) -> list[str]:
    """The show's order: the hand-listed ids that exist, then the others by
    ``created`` (an episode's ``created_at`` as UTC text; unknown ones last),
    then id."""
    present = set(on_disk)
    ids = [i for i in dict.fromkeys(listed) if i in present]
    known = set(ids)
    rest = [i for i in on_disk if i not in known]
    if created is not None:
        rest.sort(key=lambda i: (created.get(i, "~"), i))
    else:
        rest.sort()
    return ids + rest


def hand_order(listed: list[str], on_disk: list[str], created: Mapping[str, str]) -> list[str]:
    """What a schema-1 show.yaml's full list (``listed``) keeps as its hand-set
    order in schema 2: the shortest head of it after which the order (the
    rest of the list, then the unlisted episodes by id, as schema 1 read
    it) is creation order, so that the show's order does not change. A show
    whose episodes were all created by statekit one after another keeps none."""
    present = set(on_disk)
    listed = [i for i in dict.fromkeys(listed) if i in present]
    known = set(listed)
    was = listed + sorted(i for i in on_disk if i not in known)
    start = len(was)
    while start > 0 and (start == len(was) or (created.get(was[start - 1], "~"), was[start - 1])
                         < (created.get(was[start], "~"), was[start])):
        start -= 1
    return listed[:start]


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
        """Update show.yaml's hand-set order after an episode came or went. The
        episode's own write is done and durable by then, and show.yaml only
        orders what the folders hold, so a failure here is logged, not raised:
        the caller's change stands."""
        try:
            self.edit(show, edit)
        except StorageError as exc:
            log.warning("statekit: could not update the episode order in show %s (%s); it is put right on the "
                        "next change to the show", show, exc.one_line())

    def edit(self, show: str, edit: Callable[[list[str]], list[str]]) -> Show:
        """Rewrite show.yaml's hand-set order (caller holds the show lock); a
        show without show.yaml gets one. Writes nothing if nothing changed."""
        writer = self.writer
        parsed, current = self.read(show)
        now = writer.clock()
        if current is None:
            current = Show(show_id=show, title=show, created_at=now, updated_at=now)
        order = list(dict.fromkeys(edit(list(current.order))))
        if order == current.order and parsed is not None:
            return current
        new = current.model_copy(update={"order": order, "updated_at": now})
        data = new.file_data()
        stored = YAML_CODEC.dump(data, parsed)
        path = show_file(self.root, show)
        try:
            with writer.folders.open(("shows", show)) as folder:
                st = diskio.atomic_write(writer.disk, path, stored.raw, dir_fd=folder)
        except FileNotFoundError as exc:  # the show's folder is gone
            raise diskio.storage_error(exc, path, "write") from exc
        stored.model = new
        writer.remember(path, stored)
        self.index_show(new, stored.raw, st)
        if order != current.order:
            writer.index_quietly(f"the order of show {show}", positions=(show, order))
        return new

    def index_show(self, show: Show, raw: bytes, st: os.stat_result) -> None:
        row = show_row(show.file_data(), path=os.path.relpath(show_file(self.root, show.show_id), self.root),
                       size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256(raw), checked_at_ns=time.time_ns())
        self.writer.index_quietly(f"show {show.show_id}", show_rows=[row])

    def reconcile_file(self, show: str, on_disk: list[str]) -> list[str]:
        """Drop from show.yaml's hand-set order the ids whose folder is gone
        (a show without show.yaml gets one); its index row follows. Returns
        the hand-set order."""
        present = set(on_disk)
        with self.writer.locks.show(show):
            parsed, current = self.read(show)
            order = [i for i in dict.fromkeys(current.order if current else []) if i in present]
            if current is None or order != current.order:
                return self.edit(show, lambda _listed: order).order
            st = os.stat(show_file(self.root, show))
            self.index_show(current, parsed.raw if parsed else b"", st)
            return order

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
            raw = YAML_CODEC.dump_plain(model.file_data())
            with writer.folders.open(("shows", show)) as folder:
                self.index_show(model, raw, diskio.atomic_write(writer.disk, show_file(self.root, show), raw,
                                                                dir_fd=folder))
        return model

    def schema(self, show: str) -> int | None:
        """The ``schema_version`` of the show's show.yaml (None without one)."""
        _, model = self.read(show)
        return None if model is None else model.schema_version

    def upgrade(self, show: str, backup: Callable[[str, bytes], None]) -> bool:
        """Rewrite a schema-1 show.yaml at the current schema, its full list
        cut to the hand-set head (``hand_order``: the show's order stays the
        same); ``backup(path, raw)`` keeps the old bytes first. Comments stay."""
        writer = self.writer
        with writer.locks.show(show):
            parsed, current = self.read(show)
            if parsed is None or current is None or current.schema_version >= SHOW_SCHEMA:
                return False
            on_disk = self.episode_ids_on_disk(show)
            created = self.created(show, on_disk)
            order = hand_order(current.order, on_disk, created)
            path = show_file(self.root, show)
            backup(path, parsed.raw)
            new = current.model_copy(update={"schema_version": SHOW_SCHEMA, "order": order,
                                             "updated_at": writer.clock()})
            stored = YAML_CODEC.dump(new.file_data(), parsed)
            with writer.folders.open(("shows", show)) as folder:
                st = diskio.atomic_write(writer.disk, path, stored.raw, dir_fd=folder)
            stored.model = new
            writer.remember(path, stored)
            self.index_show(new, stored.raw, st)
            writer.index_quietly(f"the order of show {show}", positions=(show, order))
            return True

    def created(self, show: str, on_disk: list[str]) -> dict[str, str]:
        """``created_at`` (UTC text) of the show's episodes: as the index holds
        it, or the file says for one the index does not know yet."""
        created = self.writer.index.created(show)
        for ep in on_disk:
            if ep not in created:
                try:
                    created[ep] = iso(self.writer.load(show, ep)[1].model.created_at)
                except StatekitError:
                    continue  # a damaged file: last, by id
        return created

    def get(self, show: str) -> Show:
        """The show, its ``episodes`` every episode on disk in order: the
        hand-set ones, then the rest by creation (``created_at`` as the index
        holds it, or the file says for one the index does not know yet)."""
        check_id(show, "show id")
        if not self.writer.folders.exists(("shows", show)):
            raise ShowNotFoundError(f"show {show!r} not found", show_id=show)
        _, model = self.read(show)
        on_disk = self.episode_ids_on_disk(show)
        if model is None:
            now = self.writer.clock()
            model = Show(show_id=show, title=show, created_at=now, updated_at=now)
        return model.model_copy(update={"episodes": reconcile(model.order, on_disk, self.created(show, on_disk))})

    def known(self, show: str | None) -> None:
        """``ShowNotFoundError`` unless ``show`` is None or a show of the store."""
        if show is not None:
            check_id(show, "show id")
            if not self.writer.folders.exists(("shows", show)):
                raise ShowNotFoundError(f"show {show!r} not found", show_id=show)
