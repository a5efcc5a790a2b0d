"""Reading a state file into a checked model: one clear error for anything wrong.

``parse_episode`` is what every reader of an episode file calls (the write
path, backups, the index's rebuild and sync, verify): parse, upgrade an older
schema in memory, validate, and check that the file lives where it says and
names a stage of the pipeline. ``invalid`` turns pydantic's list of errors
into one ``ValidationError`` naming file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from .codecs import CODECS, JSON_CODEC, YAML_CODEC, Parsed, compact_json, line_of
from .errors import CorruptFileError, ValidationError
from .files import MAX_FILE_BYTES
from .models import CHECKPOINT_SCHEMA, SHOW_SCHEMA, Episode, Show
from .packed import read_either
from .pipeline import Pipeline
from .schema import schema_of, upgrade_episode


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stamp(now: datetime) -> str:
    """A time as it appears in the names of trash entries and backup folders."""
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def invalid(exc: PydanticValidationError, raw: bytes | None, path: str | None, what: str) -> ValidationError:
    """One clear error (file, line, field) from pydantic's list of errors."""
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    field_name = ".".join(str(p) for p in loc) or what
    line = line_of(raw, loc) if raw is not None and loc else None
    where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    return ValidationError(f"{where}{field_name}: {msg}{more}", path=path, line=line, field=field_name)


def parse_episode(path: str, raw: bytes, show: str, ep: str, pipeline: Pipeline, now: datetime,
                  retired: Callable[[], Collection[str]] | None = None) -> Parsed:
    """An episode file's bytes as a ``Parsed`` whose ``model`` is the checked
    ``Episode`` (``now``: the time an upgrade of a schema-0 file stamps).
    ``retired()``: stages an older graph of the store had (an episode left in
    one is stranded, not invalid: ``graphs``)."""
    codec = CODECS[os.path.splitext(path)[1]]
    parsed = codec.parse(raw, path)
    upgraded, _ = upgrade_episode(parsed.data, path=path, show_id=show, episode_id=ep, now=now)
    try:
        model = Episode.model_validate(upgraded)
    except PydanticValidationError as exc:
        raise invalid(exc, raw, path, "episode") from None
    if (model.show_id, model.episode_id) != (show, ep):
        raise ValidationError(
            f"{path}: the file says {model.show_id}/{model.episode_id} but lives in {show}/{ep}",
            path=path, field="episode_id", line=line_of(raw, ("episode_id",)),
            hint="fix show_id/episode_id in the file, or move it to the matching directory",
        )
    if model.stage not in pipeline.stages and (retired is None or model.stage not in retired()):
        raise ValidationError(
            f"{path}: stage {model.stage!r} is not a stage of pipeline {pipeline.name!r}",
            path=path, field="stage", line=line_of(raw, ("stage",)),
            hint="stages: " + ", ".join(pipeline.stages),
        )
    parsed.model = model
    return parsed


def parse_show(path: str, raw: bytes) -> Parsed:
    """A show.yaml's bytes as a ``Parsed`` whose ``model`` is the checked ``Show``."""
    parsed = YAML_CODEC.parse(raw, path)
    found = schema_of(parsed.data, path, current=SHOW_SCHEMA, legacy_ok=False)
    data = parsed.data
    if isinstance(data, dict):
        if found < 2:  # schema 1: every episode listed, in order; read as the hand-set order
            data = {k: v for k, v in data.items() if k not in ("episodes", "order")}
            data["order"] = parsed.data.get("episodes", [])
        elif "episodes" in data:
            raise ValidationError(
                f"{path}: show.yaml schema {found} has no 'episodes' list", path=path, field="episodes",
                line=line_of(raw, ("episodes",)),
                hint="list the episodes you order by hand under 'order:'; the rest follow in creation order")
    try:
        parsed.model = Show.model_validate(data)
    except PydanticValidationError as exc:
        raise invalid(exc, raw, path, "show") from None
    return parsed


def canonical(data: Any) -> bytes:
    """The bytes a checkpoint's sha256 is taken over (key order does not matter)."""
    json.dumps(data, allow_nan=False)  # refuses NaN/Infinity, which orjson would write as null
    return compact_json(data, sort_keys=True)


def read_checkpoint(path: str) -> dict[str, Any] | None:
    """A checkpoint file's data, checked against its own sha256; None if
    there is no such file; ``CorruptFileError`` if it is damaged. Reads
    ``<stage>.json.gz`` when retention compressed it (``packed``)."""
    raw = read_either(path, MAX_FILE_BYTES)
    if raw is None:
        return None
    body = JSON_CODEC.load(raw, path)
    schema_of(body, path, current=CHECKPOINT_SCHEMA, legacy_ok=False)
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(body.get("sha256"), str):
        raise CorruptFileError(f"{path}: not a statekit checkpoint (no data or sha256)", path=path)
    try:
        digest = sha256(canonical(data))
    except (TypeError, ValueError):
        digest = ""
    if digest != body["sha256"]:
        raise CorruptFileError(f"{path}: checkpoint data does not match its sha256 (the file is damaged)",
                               path=path, stage=body.get("stage") if isinstance(body.get("stage"), str) else None)
    return data
