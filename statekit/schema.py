"""In-file schema versions: a chain of pure migrations, version N -> N+1.

Every file carries ``schema_version``. Older data is upgraded in memory on
read (``statekit migrate`` rewrites the files); data newer than this library
is refused, never rewritten. Schema 0 is the per-episode YAML of the original
state-management design (no ``schema_version``; nested ``files``, ``youtube``,
``metrics`` and ``attempts``; ``last_updated``). No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .errors import SchemaVersionError, ValidationError
from .models import EPISODE_SCHEMA

Migration = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def _legacy_time(value: Any, field: str, fallback: datetime) -> str:
    """An ISO timestamp with a timezone; schema 0 wrote naive ones, meant as UTC."""
    if value is None or value == "":
        return fallback.isoformat()
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(
                f"{field}: {value!r} is not an ISO timestamp", field=field, hint="use e.g. 2024-09-15T10:00:00"
            ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.isoformat()


LEGACY_ATTEMPTS = {"download": "downloading", "conversion": "converting", "upload": "uploading"}


def legacy_to_v1(data: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 (state-management YAML) -> schema 1. Nothing is dropped: keys
    without a place of their own are kept under ``metadata``."""
    rest = dict(data)
    meta: dict[str, Any] = {}
    now: datetime = ctx["now"]

    legacy_id = rest.pop("episode_id", None)
    if legacy_id is not None and legacy_id != ctx["episode_id"]:
        meta["legacy_episode_id"] = legacy_id
    updated = _legacy_time(rest.pop("last_updated", None), "last_updated", now)

    stage = rest.pop("stage", None)
    if not isinstance(stage, str) or not stage:
        raise ValidationError("stage: missing or not a string in a schema-0 file", field="stage")

    attempts: dict[str, int] = {}
    legacy_attempts = rest.pop("attempts", None) or {}
    if isinstance(legacy_attempts, dict):
        extra = {}
        for key, n in legacy_attempts.items():
            if key in LEGACY_ATTEMPTS and isinstance(n, int) and not isinstance(n, bool):
                if n:
                    attempts[LEGACY_ATTEMPTS[key]] = n
            else:
                extra[key] = n
        if extra:
            meta["attempts"] = extra
    else:
        meta["attempts"] = legacy_attempts

    files: dict[str, str] = {}
    legacy_files = rest.pop("files", None) or {}
    if isinstance(legacy_files, dict):
        extra = {}
        for key, value in legacy_files.items():
            if isinstance(value, str):
                files[str(key)] = value
            elif value is not None:
                extra[key] = value
        if extra:
            meta["files"] = extra
    else:
        meta["files"] = legacy_files

    errors = []
    for i, entry in enumerate(rest.pop("error_history", None) or []):
        if not isinstance(entry, dict):
            meta.setdefault("error_history", []).append(entry)
            continue
        entry = dict(entry)
        record = {
            "at": _legacy_time(entry.pop("timestamp", None), f"error_history[{i}].timestamp", now),
            "stage": entry.pop("stage", None),
            "kind": str(entry.pop("kind", "unknown")),
            "message": str(entry.pop("error", "") or ""),
            "traceback": entry.pop("traceback", None),
        }
        record.update(entry)
        errors.append(record)

    # a schema-0 failure names its stage in the error history: retry there
    previous = errors[-1]["stage"] if stage.lower() == "failed" and errors and errors[-1]["stage"] else None
    title = rest.pop("title", "")
    message = rest.pop("status_message", None)
    meta.update(rest)  # archive_identifier, date, youtube, metrics, and anything unknown
    return {
        "schema_version": 1,
        "show_id": ctx["show_id"],
        "episode_id": ctx["episode_id"],
        "title": "" if title is None else str(title),
        "stage": stage.lower(),
        "previous_stage": previous,
        "version": 0,
        "created_at": updated,
        "updated_at": updated,
        "stage_entered_at": updated,
        "message": None if message is None else str(message),
        "costs": {},
        "attempts": attempts,
        "error_history": errors,
        "metadata": meta,
        "files": files,
    }


def v1_to_v2(data: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: the run fields (``lease``, ``due_at``, ``hold``,
    ``stage_done``) are new and start empty, so only the number changes."""
    return {**data, "schema_version": 2}


def v2_to_v3(data: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 -> 3: ``assets`` and ``uploads`` are new and start empty."""
    return {**data, "schema_version": 3}


EPISODE_MIGRATIONS: dict[int, Migration] = {0: legacy_to_v1, 1: v1_to_v2, 2: v2_to_v3}


def schema_of(data: dict[str, Any], path: str | None, *, current: int, legacy_ok: bool) -> int:
    """The ``schema_version`` of ``data``, checked: an int, not newer than ``current``."""
    where = f"{path}: " if path else ""
    if "schema_version" not in data:
        if legacy_ok and not ({"show_id", "version"} <= data.keys()):
            return 0
        raise SchemaVersionError(
            f"{where}schema_version is missing", path=path, found=None, supported=current,
            hint=f"add 'schema_version: {current}' at the top of the file",
        )
    found = data["schema_version"]
    if type(found) is not int:
        raise SchemaVersionError(
            f"{where}schema_version must be an integer, got {found!r}", path=path, found=found, supported=current,
            hint=f"set 'schema_version: {current}'",
        )
    if found > current:
        raise SchemaVersionError(
            f"{where}schema_version {found} is newer than this statekit supports ({current}); the file was left untouched",
            path=path, found=found, supported=current,
            hint="upgrade statekit to read this store",
        )
    if found < 0:
        raise SchemaVersionError(
            f"{where}schema_version {found} is not a valid version", path=path, found=found, supported=current,
            hint=f"set 'schema_version: {current}'",
        )
    return found


def upgrade_episode(data: dict[str, Any], *, path: str | None, show_id: str, episode_id: str,
                    now: datetime) -> tuple[dict[str, Any], int]:
    """Bring episode ``data`` to the current schema in memory.

    Returns the upgraded data and the version it was found at.
    """
    found = schema_of(data, path, current=EPISODE_SCHEMA, legacy_ok=True)
    ctx = {"show_id": show_id, "episode_id": episode_id, "now": now, "path": path}
    version = found
    while version < EPISODE_SCHEMA:
        data = EPISODE_MIGRATIONS[version](data, ctx)
        version += 1
    return data, found


def legacy_id(value: str) -> str:
    """An id that matches the id pattern, made from a schema-0 episode id
    (e.g. ``hy0_hooting_yard_2004-04-14`` -> ``hy0-hooting-yard-2004-04-14``)."""
    text = re.sub(r"[^a-z0-9._-]+", "-", value.strip().lower())
    text = re.sub(r"^[^a-z0-9]+", "", text)
    return text[:128].rstrip("-.") or "episode"
