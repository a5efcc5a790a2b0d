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
import math
import os
import re
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from .codecs import CODECS, JSON_CODEC, YAML_CODEC, Parsed, compact_json, line_of
from .errors import CorruptFileError, InvalidIdError, ValidationError
from .files import MAX_FILE_BYTES
from .ids import VALID_IDS, check_id
from .models import (
    CHECKPOINT_SCHEMA,
    EPISODE_SCHEMA,
    PRIORITY_MAX,
    SHOW_SCHEMA,
    Episode,
    Show,
    cost_sum,
    not_utf8,
    plain_json_ok,
    trusted_episode,
)
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
                  retired: Callable[[], Collection[str]] | None = None, *, model: bool = True) -> Parsed:
    """An episode file's bytes as a ``Parsed`` whose ``model`` is the checked
    ``Episode`` (``now``: the time an upgrade of a schema-0 file stamps).
    ``retired()``: stages an older graph of the store had (an episode left in
    one is stranded, not invalid: ``graphs``). A file in the form ``model_dump``
    writes (``dumped_episode``) has its data as ``dumped`` too; ``model=False``: it
    is checked without building its model (``model`` None: ``episode_model`` builds it)."""
    codec = CODECS[os.path.splitext(path)[1]]
    parsed = codec.parse(raw, path)
    upgraded, _ = upgrade_episode(parsed.data, path=path, show_id=show, episode_id=ep, now=now)
    checked: Any = None
    try:
        if upgraded is parsed.data and dumped_episode(upgraded):  # the checks in Python are passed: not again
            parsed.dumped = upgraded  # what ``model_dump(mode="json")`` gives, key for key
            if model:
                checked = parsed.model = trusted_episode(upgraded)
            names = upgraded["show_id"], upgraded["episode_id"], upgraded["stage"]
        else:
            checked = parsed.model = Episode.model_validate(upgraded)
    except PydanticValidationError as exc:
        raise invalid(exc, raw, path, "episode") from None
    if checked is not None:
        names = checked.show_id, checked.episode_id, checked.stage
    if names[:2] != (show, ep):
        raise ValidationError(
            f"{path}: the file says {names[0]}/{names[1]} but lives in {show}/{ep}",
            path=path, field="episode_id", line=line_of(raw, ("episode_id",)),
            hint="fix show_id/episode_id in the file, or move it to the matching directory",
        )
    if names[2] not in pipeline.stages and (retired is None or names[2] not in retired()):
        raise ValidationError(
            f"{path}: stage {names[2]!r} is not a stage of pipeline {pipeline.name!r}",
            path=path, field="stage", line=line_of(raw, ("stage",)),
            hint="stages: " + ", ".join(pipeline.stages),
        )
    return parsed


def episode_model(parsed: Parsed) -> Episode:
    """The model of an episode ``parse_episode`` read (built now if it was read with ``model=False``)."""
    if parsed.model is None:
        parsed.model = trusted_episode(parsed.dumped)
    return parsed.model  # type: ignore[no-any-return]


# --- the form statekit writes, recognized without the model -------------------------------

_EPISODE_KEYS = tuple(name for name in Episode.model_fields if name != "priority")
"""An episode's data as ``model_dump(mode="json")`` gives it: every field in the model's
order (``priority`` follows, only when it is not 0)."""
_WITH_PRIORITY = (*_EPISODE_KEYS, "priority")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.(?!000000)[0-9]{6})?Z").fullmatch
"""A time as pydantic writes one in UTC (no fraction when it is 0; ``fromisoformat`` then says it is a date)."""
_HEX64 = re.compile(r"[0-9a-f]{64}").fullmatch
_RUN_ID = re.compile(r"[0-9a-f]{8,64}").fullmatch
_CHECKPOINT_KEYS = ("sha256", "size", "at")
_LEASE_KEYS = ("owner", "run_id", "acquired_at", "expires_at")
_fromisoformat = datetime.fromisoformat


def _sure_id(value: Any) -> bool:
    if type(value) is not str:
        return False
    if value in VALID_IDS:
        return True
    try:
        check_id(value)
    except InvalidIdError:
        return False
    return True


def _sure_ids(mapping: dict[Any, Any]) -> bool:
    return VALID_IDS.issuperset(mapping) or all(_sure_id(key) for key in mapping)


def _sure_total(costs: dict[str, float], given: float) -> bool:
    """``cost_total`` is what the model's check takes (within 1e-6 of ``cost_sum``, which is finite)."""
    try:
        total = math.fsum(costs.values())  # (cost_sum rounds it to 9 places: a margin for that first)
    except OverflowError:  # past the largest float: the model says so
        return False
    if abs(given - total) <= 0.99e-6 and total < math.inf:
        return True
    total = cost_sum(costs)
    return math.isfinite(total) and abs(given - total) <= 1e-6


def _sure_text(value: Any) -> bool:
    return type(value) is str and (value.isascii() or not_utf8(value) is None)


def _sure_time(value: Any) -> bool:
    if type(value) is not str or _TIME(value) is None:
        return False
    try:
        _fromisoformat(value)
    except ValueError:  # not a date (month 13, February 30th)
        return False
    return True


def _sure_checkpoint(value: Any) -> bool:
    if type(value) is not dict or tuple(value) != _CHECKPOINT_KEYS:
        return False
    sha, size = value["sha256"], value["size"]
    return (type(sha) is str and _HEX64(sha) is not None and type(size) is int and size >= 0
            and _sure_time(value["at"]))


def _sure_lease(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is not dict or tuple(value) != _LEASE_KEYS:
        return False
    owner, run_id = value["owner"], value["run_id"]
    return (_sure_text(owner) and 1 <= len(owner) <= 200 and type(run_id) is str and _RUN_ID(run_id) is not None
            and _sure_time(value["acquired_at"]) and _sure_time(value["expires_at"]))


def dumped_episode(data: Any) -> bool:
    """``data`` is surely a valid episode as ``model_dump(mode="json")`` writes it: True only
    if ``Episode.model_validate(data)`` takes it and its ``model_dump(mode="json")`` equals
    it, key for key in the same order, value for value of the same type. The checks the
    model makes in Python (ids, UTF-8 text, plain metadata, ``cost_total`` against ``costs``)
    are then passed, so ``Episode.model_validate(data, context=TRUSTED)`` (``trusted_episode``) gives the same
    model, and ``data`` serves as its dump. False when not sure (approvals, errors, assets
    or uploads present; a time, a number or the key order in another form than the model
    writes; anything invalid): the model then decides, and words the error.
    (``tests/test_parsing_fast.py`` holds it to the model on valid and mutated documents.)"""
    if type(data) is not dict:
        return False
    keys = tuple(data)
    if keys != _EPISODE_KEYS:
        if keys != _WITH_PRIORITY:
            return False
        priority = data["priority"]
        if type(priority) is not int or priority == 0 or not -PRIORITY_MAX <= priority <= PRIORITY_MAX:
            return False
    version, previous, message, hold = data["version"], data["previous_stage"], data["message"], data["hold"]
    if not (data["schema_version"] == EPISODE_SCHEMA and type(data["schema_version"]) is int
            and _sure_id(data["show_id"]) and _sure_id(data["episode_id"]) and _sure_text(data["title"])
            and _sure_id(data["stage"]) and (previous is None or _sure_id(previous))
            and type(version) is int and version >= 0
            and _sure_time(data["created_at"]) and _sure_time(data["updated_at"])
            and _sure_time(data["stage_entered_at"]) and (message is None or _sure_text(message))
            and data["approvals"] == {} and data["error_history"] == [] and data["assets"] == {}
            and data["uploads"] == {} and type(data["stage_done"]) is bool
            and (hold is None or _sure_text(hold)) and (data["due_at"] is None or _sure_time(data["due_at"]))
            and _sure_lease(data["lease"])):
        return False
    costs, attempts, checkpoints, files = data["costs"], data["attempts"], data["checkpoints"], data["files"]
    if type(costs) is not dict or type(attempts) is not dict or type(checkpoints) is not dict or type(files) is not dict:
        return False
    for cost in costs.values():
        if type(cost) is not float or not 0 <= cost < math.inf:  # (NaN fails both)
            return False
    given = data["cost_total"]
    if type(given) is not float or not -math.inf < given < math.inf or not _sure_total(costs, given):
        return False
    for n in attempts.values():
        if type(n) is not int or n < 0:
            return False
    for record in checkpoints.values():
        if not _sure_checkpoint(record):
            return False
    for name, value in files.items():
        if not (_sure_text(name) and _sure_text(value)):
            return False
    # (keys of parsed data are exact ``str``: a valid id seen before is found in ``VALID_IDS``)
    if not (_sure_ids(costs) and _sure_ids(attempts) and _sure_ids(checkpoints)):
        return False
    metadata = data["metadata"]
    return type(metadata) is dict and plain_json_ok(metadata)


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
