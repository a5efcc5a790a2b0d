"""Compositions of Store calls that a command needs as one call: each reads
and writes only through the Store's public methods, and each is meant to
become a Store method (the CLI calls it, then renders what it returns).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import CorruptFileError
from .history import Change
from .models import Episode, Event
from .objects import Removed
from .schema import legacy_id

if TYPE_CHECKING:
    from .gcs import GCSUploader
    from .store import Store


def advance_setting_metadata(store: Store, show: str, ep: str, stage: str, *, set_meta: dict[str, Any],
                             message: str | None = None, cost: float | None = None,
                             expected_version: int | None = None) -> tuple[str, Episode]:
    """Move the episode to ``stage``, setting the keys of ``set_meta`` in the
    same write; returns the stage it left and the episode now. The other
    metadata keys are kept as read, and the write is refused if someone wrote
    in between (unless ``expected_version`` names the version to expect)."""
    current = store.get(show, ep)
    metadata = None
    if set_meta:
        metadata = {**current.metadata, **set_meta}
        if expected_version is None:
            expected_version = current.version
    moved = store.advance(show, ep, stage, message=message, cost=cost, expected_version=expected_version,
                          metadata=metadata)
    return current.stage, moved


@dataclass
class EpisodeOverview:
    """An episode, its event history, and the stage a run would resume from."""

    episode: Episode
    events: list[Event]
    resume_stage: str | None
    pending_changes: list[Change] | None = None
    """What a pending hand edit of the file changes, field by field (None: no readable pending edit)."""


def episode_overview(store: Store, show: str, ep: str, at: int | None = None) -> EpisodeOverview:
    """The episode (committed; ``at``: that committed version), its event log up to it,
    its checkpoints, and what a pending hand edit changes."""
    if at is not None:
        episode = store.version(show, ep, at)
        return EpisodeOverview(episode, [e for e in store.events(show, ep) if e.version <= at], None)
    episode = store.get(show, ep)
    events = store.events(show, ep)
    changes = None
    if episode.pending is not None and episode.pending.get("fields") is not None:
        changes = store.diff(show, ep)
    return EpisodeOverview(episode, events, store.resume_stage(show, ep), changes)


def add_asset_file(store: Store, show: str, ep: str, file: str, kind: str, name: str | None = None, *,
                   media_type: str | None = None) -> tuple[str, Episode]:
    """Store ``file`` as an asset of the episode, named ``name`` or else after
    the file (made an id); returns the name and the episode now."""
    added = name or legacy_id(os.path.basename(file))
    return added, store.add_asset(show, ep, file, kind, added, media_type=media_type)


@dataclass
class AssetCheck:
    """One asset hashed: its path when intact, else what is wrong."""

    name: str
    path: str | None
    problem: str | None


def verify_assets(store: Store, show: str, ep: str, name: str | None = None) -> Iterator[AssetCheck]:
    """Hash the episode's assets (or only ``name``) in name order, one as each
    is asked for; a missing or changed one is reported, not raised."""
    names = [name] if name else sorted(store.get(show, ep).assets)
    for n in names:
        try:
            path = store.verify_asset(show, ep, n)
        except CorruptFileError as exc:
            yield AssetCheck(n, None, exc.message)
        else:
            yield AssetCheck(n, path, None)


def upload_asset_once(store: Store, show: str, ep: str, name: str, uploader: GCSUploader, *,
                      thumbnail: str | None = None) -> tuple[Episode, bool]:
    """``gcs.upload_asset``, and whether it wrote the episode (False: the
    objects were already uploaded and recorded)."""
    from .gcs import upload_asset  # google-cloud-storage is an optional extra: imported only to upload

    before = store.get(show, ep).version
    episode = upload_asset(store, show, ep, name, uploader, thumbnail=thumbnail)
    return episode, episode.version != before


def collect_garbage(store: Store, *, backups_older_than: timedelta, dry_run: bool) -> dict[str, list[Removed]]:
    """What nothing needs, by part: episode backups older than the cutoff,
    stored assets no episode refers to, temp files of interrupted runs, and
    the cache's expired and damaged entries."""
    parts: dict[str, list[Removed]] = {}
    # backups first: an object only an old backup named is then collected in the same run
    parts["backups"] = store.gc_backups(backups_older_than=backups_older_than, dry_run=dry_run)
    gone = {os.path.join(store.root, r.path) for r in parts["backups"]} if dry_run else set()
    parts["assets"] = store.gc_objects(dry_run=dry_run, ignoring=gone).removed
    parts["temp"] = store.gc_run_temp(dry_run=dry_run)
    parts["cache"] = gc_cache(store, dry_run)
    return parts


def gc_cache(store: Store, dry_run: bool) -> list[Removed]:
    """The cache's expired and damaged entries (and LRU ones past its cap),
    and files of interrupted cache writes, as gc lines."""
    from .cache import Cache  # most commands never open the cache: imported on use

    if not os.path.exists(os.path.join(store.root, ".statekit", "cache", "cache.db")):
        return []  # no cache yet: nothing to collect, and none made
    with Cache.for_store(store) as cache:
        report = cache.gc(dry_run=dry_run)
    return ([Removed(f".statekit/cache/{r.kind}/{r.key}", r.size, f"cache entry, {r.reason}") for r in report.removed]
            + [Removed(f.path, f.size, f"cache {f.reason} file") for f in report.strays])
