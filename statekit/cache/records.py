"""What the cache takes in and hands out: keys, the checks on a call's
arguments, and the results (an entry, what was removed, the stats). Pure: no
file, database or clock."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from ..errors import InvalidIdError, ValidationError
from ..ids import check_id

MAX_META_BYTES = 64 * 1024

Reason = Literal["lru", "expired", "cleared", "damaged", "deleted"]
REASONS: tuple[Reason, ...] = ("lru", "expired", "cleared", "damaged", "deleted")

Keys = set[str]
Episodes = set[tuple[str, str]]
"""Aliases: inside ``Cache`` the name ``set`` is the method."""

KEY = re.compile(r"[0-9a-f]{64}")
"""A cache key: sha256 hex (also the name of its value file)."""


def cache_key(request: Any) -> str:
    """The key of a request: sha256 (hex) of its canonical JSON (keys
    sorted, no spaces, UTF-8). ``ValidationError`` if it is not plain JSON."""
    try:
        text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"a cache request must be plain JSON data: {' '.join(str(exc).split())}",
                              field="request", hint="use str, int, float, bool, None, lists and dicts with str keys") from None
    return hashlib.sha256(text.encode()).hexdigest()


def when(seconds: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, timezone.utc)


# --- results -----------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """What the cache knows about one entry (``Cache.entry``)."""

    key: str
    kind: str
    size: int
    stored: Literal["inline", "file"]
    created_at: datetime
    last_used: datetime
    expires_at: datetime
    uses: int
    episodes: list[tuple[str, str]]
    meta: dict[str, Any] | None


@dataclass(frozen=True)
class Removed:
    """One entry a ``gc``, ``clear``, ``delete`` or eviction removed (or would remove)."""

    key: str
    kind: str
    size: int
    reason: Reason
    last_used: datetime
    uses: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "size": self.size, "reason": self.reason,
                "last_used": self.last_used.isoformat(), "uses": self.uses}


@dataclass(frozen=True)
class StrayFile:
    """A file in blobs/ that no entry owns, removed (or to be removed) by ``gc`` or ``clear``."""

    path: str
    """Relative to the store root."""
    size: int
    reason: Literal["orphan", "temp"]
    """``orphan``: a value file without its row; ``temp``: a dead writer's temp file."""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "reason": self.reason}


@dataclass
class CacheReport:
    """What ``gc`` or ``clear`` removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    removed: list[Removed] = field(default_factory=list)
    strays: list[StrayFile] = field(default_factory=list)
    freed: int = 0
    """Bytes of the removed values and stray files."""
    pinned_over_cap: bool = False
    """The cache is still over its cap: everything left is pinned."""

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": [r.to_json() for r in self.removed],
                "strays": [f.to_json() for f in self.strays],
                "freed": self.freed, "pinned_over_cap": self.pinned_over_cap}


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    max_size: int
    kinds: dict[str, dict[str, int]]
    """kind -> {"entries": n, "bytes": b}."""
    pinned_entries: int
    pinned_bytes: int
    hits: int
    misses: int
    evictions: dict[str, int]
    """reason -> entries removed for it, since the cache was made."""

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "bytes": self.bytes, "max_size": self.max_size, "kinds": self.kinds,
                "pinned": {"entries": self.pinned_entries, "bytes": self.pinned_bytes},
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


# --- input checks -------------------------------------------------------------


def check_key(key: object) -> str:
    if type(key) is str and KEY.fullmatch(key):
        return key
    shown = repr(key) if len(repr(key)) <= 70 else repr(key)[:67] + "..."
    raise ValidationError(f"invalid cache key {shown}: expected 64 lowercase hex digits",
                          field="key", hint="make keys with statekit.cache.cache_key(request)")


def check_kind(kind: object) -> str:
    try:
        return check_id(kind, "cache kind")
    except InvalidIdError as exc:
        raise ValidationError(exc.message, field="kind", hint="a kind is an id such as 'tts' or 'media'") from None


def check_episode(episode: object) -> tuple[str, str]:
    if not isinstance(episode, tuple) or len(episode) != 2:
        raise ValidationError(f"episode must be a (show, episode) pair, got {episode!r:.60}", field="episode")
    try:
        return check_id(episode[0], "show id"), check_id(episode[1], "episode id")
    except InvalidIdError as exc:
        raise ValidationError(exc.message, field="episode", hint=exc.hint) from None


def check_meta(meta: object) -> str | None:
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise ValidationError(f"meta must be a dict with str keys, got {type(meta).__name__}", field="meta")
    try:
        text = json.dumps(meta, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"meta must be plain JSON data: {' '.join(str(exc).split())}", field="meta") from None
    if len(text) > MAX_META_BYTES:
        raise ValidationError(f"meta is {len(text)} bytes of JSON; at most {MAX_META_BYTES} are kept", field="meta")
    return text
