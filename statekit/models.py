"""The data statekit stores, as pydantic v2 models. No I/O.

An ``Episode`` is exactly what ``episode.yaml`` holds; an ``Event`` is one line
of ``events.jsonl``; a ``Show`` is ``show.yaml``. Validation here is the whole
schema: a hand-edited file either validates or is reported field by field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from .errors import ValidationError
from .ids import VALID_IDS, check_id
from .pipeline import Pipeline

PRIORITY_MAX = 1_000_000
"""An episode's ``priority`` lies in [-PRIORITY_MAX, PRIORITY_MAX]."""
EPISODE_SCHEMA = 3
"""1: the first statekit schema; 2: adds ``lease``, ``due_at``, ``hold`` and
``stage_done`` (leased stage runs and failure handling); 3: adds ``assets``
and ``uploads`` (content-addressed media and where it was uploaded)."""
SHOW_SCHEMA = 2
"""1: ``episodes`` lists every episode, in order (each create rewrote it);
2: ``order`` lists only the episodes a person ordered by hand, the rest
follow them in creation order (``created_at``, then id)."""
STORE_SCHEMA = 5
"""2: the pipeline gained ``runs``, ``failure_stage``, ``give_up_stage``,
``retry`` and ``error_rules``, and the store ``backups``; 3: ``cache`` and
``gcs`` settings; 4: ``unique`` metadata keys; 5: the ledger (every event
chained and carrying its patch: ``statekit migrate`` seals a store's older
logs and moves it to 5; statekit releases before 5 refuse to open it)."""
LEDGER_SCHEMA = 5
"""The first store schema whose events are chained (``writes`` writes them so from here on)."""
DEFAULT_STORE_SCHEMA = LEDGER_SCHEMA
"""What ``Store.init`` writes: the ledger. ``ledger=False`` (``init --no-ledger``) makes a
store at the format before it (4), which statekit releases without the ledger still write."""
PRE_LEDGER_SCHEMA = 4
"""The newest store format without the ledger (unchained logs; ``statekit migrate --ledger`` seals them)."""
CHECKPOINT_SCHEMA = 1
EVENT_SCHEMA = 2
"""2: ``prev`` (the hash of the line before), and ``patch`` (from the previous
version's data) or ``doc`` (the whole data: the first event, a seal). Written
only in chained stores; the events of other stores stay at 1."""
UNCHAINED_EVENT_SCHEMA = 1

TRUSTED: dict[str, Any] = {"trusted": True}
"""Validation context for data statekit derived itself from a checked model
(the index's copy of a file, ``Episode.model_validate(data, context=TRUSTED)``):
the checks in Python that such data always passes (the id rule, UTF-8 text,
plain JSON, ``cost_total`` against ``costs``) are skipped; types, strict
numbers, times and nested models are still checked by pydantic's core."""


def _id(value: str, info: ValidationInfo) -> str:
    # (a valid id seen before is found in ``VALID_IDS`` without a call: this runs for every id of every file read)
    return value if info.context is TRUSTED or (type(value) is str and value in VALID_IDS) else check_id(value)


Id = Annotated[str, AfterValidator(_id)]

# Strict numbers: a hand-edited ``version: true`` is a mistake, not version 1
# (YAML and JSON booleans are ints to Python, and pydantic's lax mode takes them).
Int = Annotated[int, Field(strict=True)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite float; an int is taken, a boolean or a string is not."""
Cost = Annotated[Number, Field(ge=0)]


def not_utf8(text: str) -> str | None:
    """Why ``text`` cannot be stored (a file holds UTF-8), or None if it can.
    A lone surrogate is what Python makes of bytes that are not UTF-8 (an
    argument or a file name in another encoding)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid UTF-8 text ({text[exc.start]!r} at character {exc.start + 1})"
    return None


def _utf8(value: str, info: ValidationInfo) -> str:
    if info.context is TRUSTED or value.isascii():  # (ASCII: not_utf8's own first test, without the call)
        return value
    reason = not_utf8(value)
    if reason is not None:
        raise ValueError(reason)
    return value


Text = Annotated[str, AfterValidator(_utf8)]
"""Text that a file can hold: ``str`` without lone surrogates."""

NOT_UTF8_HINT = "statekit stores text as UTF-8: decode the bytes with their real encoding first; nothing was changed"


def check_text(value: str | None, field: str) -> None:
    """``ValidationError`` naming ``field`` if ``value`` cannot be stored as UTF-8."""
    reason = None if value is None else not_utf8(value)
    if reason is not None:
        raise ValidationError(f"{field} is {reason}", field=field, hint=NOT_UTF8_HINT)


def check_optional_text(value: object, field: str, hint: str = "pass a str or None; nothing was changed") -> None:
    """``ValidationError`` unless ``value`` is None or text that can be stored (``check_text``)."""
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{field} must be text, got {type(value).__name__}", hint=hint)
    check_text(value, field)


def find_bad_text(value: Any, where: str) -> str | None:
    """The first place in plain data (keys too) holding text that is not
    UTF-8, as ``where.key[0]: reason``; None if there is none."""
    if isinstance(value, str):
        reason = not_utf8(value)
        return None if reason is None else f"{where}: {reason}"
    if isinstance(value, dict):
        for k, v in value.items():
            found = (find_bad_text(k, f"{where} key {k!r}") if isinstance(k, str) else None) or find_bad_text(
                v, f"{where}.{k}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_bad_text(v, f"{where}[{i}]")
            if found:
                return found
    return None


MAX_METADATA_DEPTH = 64
"""Deepest nesting in free-form metadata (files are refused past 100 levels)."""


_INT64 = (-(1 << 63), 1 << 63)


def _plain_ok(value: Any, depth: int) -> bool:
    """``_plain_json`` would take ``value`` (True), or may not (False: it decides and words
    the error). Exact types only, and no path text built: it runs over every file's metadata."""
    if depth > MAX_METADATA_DEPTH:
        return False
    t = type(value)
    if t is str:
        return value.isascii() or not_utf8(value) is None
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not (k.isascii() or not_utf8(k) is None) or not _plain_ok(v, depth + 1):
                return False
        return True
    if t is list:
        for v in value:  # noqa: SIM110 (a loop: no generator per list on the rebuild's path)
            if not _plain_ok(v, depth + 1):
                return False
        return True
    if t is float:
        return math.isfinite(value)
    if t is int:
        return _INT64[0] <= value < _INT64[1]
    return t is bool or value is None


def plain_json_ok(value: Any) -> bool:
    """Free-form metadata ``FreeJson`` surely takes as it is (False: maybe not; the model decides)."""
    return _plain_ok(value, 0)


def _plain_json(value: Any, where: str = "value", depth: int = 0) -> Any:
    if _plain_ok(value, depth):
        return value
    return _plain_checked(value, where, depth)


def _plain_checked(value: Any, where: str, depth: int) -> Any:
    """``_plain_json`` value by value: the error names where the value is."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, not {value}")
    if isinstance(value, str) and not_utf8(value):
        raise ValueError(f"{where} is {not_utf8(value)}")
    if type(value) is int and not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"{where} must fit in 64 bits")
    if isinstance(value, dict):
        for k, v in value.items():
            if not_utf8(k):
                raise ValueError(f"{where} key {k!r} is {not_utf8(k)}")
            _plain_checked(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_checked(v, f"{where}[{i}]", depth + 1)
    return value


def _metadata(value: Any, info: ValidationInfo) -> Any:
    return value if info.context is TRUSTED else _plain_json(value, "metadata")


FreeJson = Annotated[dict[str, JsonValue], AfterValidator(_metadata)]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def cost_sum(costs: dict[str, float]) -> float:
    """Total of the per-stage costs, rounded so binary noise never shows in files
    (``inf`` if they add up past the largest float)."""
    try:
        return round(math.fsum(costs.values()), 9)
    except OverflowError:  # fsum's intermediate sum overflowed
        return math.inf


COST_HINT = "costs are non-negative finite amounts (money spent by a stage); nothing was changed"


def add_cost(costs: dict[str, float], stage: str, amount: float, key: str) -> dict[str, float]:
    """``costs`` with ``amount`` added to ``stage``'s; ``ValidationError`` if
    that, or the episode's total, would be beyond a finite number (checked
    before anything is written)."""
    new = {**costs, stage: round(costs.get(stage, 0.0) + amount, 9)}
    if not (math.isfinite(new[stage]) and math.isfinite(cost_sum(new))):
        raise ValidationError(
            f"cost {amount!r} would take the total cost of {key} past the largest number a file can hold "
            f"(spent so far: {cost_sum(costs)!r})", field="cost", hint=COST_HINT)
    return new


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: Annotated[Text, Field(min_length=1, max_length=200)]
    at: AwareDatetime
    given_at_stage: str
    note: Text | None = None


class CheckpointRecord(BaseModel):
    """Where a stage's checkpoint stands: hash and size of its data."""

    model_config = ConfigDict(extra="forbid")

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: NonNegativeInt
    at: AwareDatetime


class ErrorRecord(BaseModel):
    """One failure of a stage: when, where, what kind, and what was done about it."""

    model_config = ConfigDict(extra="allow")

    at: AwareDatetime
    stage: str | None = None
    kind: str = "unknown"
    message: Text = ""
    traceback: Text | None = None
    type: str | None = None
    """The exception's class (``module.Name``)."""
    attempt: Int | None = None
    """Which attempt at ``stage`` failed (``attempts[stage]`` then)."""
    action: str | None = None
    """``retry`` (due again at ``due_at``), ``hold`` (waits for a person) or ``give_up`` (skipped)."""
    run_id: str | None = None


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class AssetRecord(BaseModel):
    """One media file of an episode: its content lives once in the store's
    object folder (``objects/<sha256[:2]>/<sha256>``), named by its hash."""

    model_config = ConfigDict(extra="forbid")

    sha256: Sha256
    size: NonNegativeInt
    kind: Id = "audio"
    media_type: Annotated[str, Field(min_length=1, max_length=200)] = "application/octet-stream"
    source: Annotated[Text, Field(max_length=4096)] | None = None
    """Where the content came from (a path or URL), as the caller gave it."""
    added_at: AwareDatetime


class UploadRecord(BaseModel):
    """Where an asset was uploaded: one object in a bucket."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[Text, Field(min_length=1, max_length=4096)]
    """``gs://<bucket>/<object>``."""
    bucket: Annotated[Text, Field(min_length=1, max_length=222)]
    object: Annotated[Text, Field(min_length=1, max_length=1024)]
    generation: NonNegativeInt | None = None
    sha256: Sha256
    """The asset content that was uploaded."""
    md5: Text | None = None
    """The object's MD5 as the server reported it (base64)."""
    audio_id: Text | None = None
    at: AwareDatetime


class CacheConfig(BaseModel):
    """``cache:`` in ``statekit.yaml``."""

    model_config = ConfigDict(extra="forbid")

    max_size: Annotated[int, Field(gt=0, strict=True)] = 10 * 1024**3
    """Bytes; least recently used entries are evicted past it (pinned ones never)."""
    expiry_days: dict[Id, Annotated[Number, Field(gt=0)]] = Field(
        default_factory=lambda: {"media": 30.0, "tts": 90.0})
    """Per kind of entry; a kind not listed uses ``default_expiry_days``."""
    default_expiry_days: Annotated[Number, Field(gt=0)] = 30.0


class IndexConfig(BaseModel):
    """``index:`` in ``statekit.yaml``: the index on a database server (SQLite
    under ``.statekit/`` when absent). ``url`` may name environment variables
    as ``${VAR}`` (so no password sits in the file); ``STATEKIT_INDEX_URL``
    overrides it."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=2000)]


RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
"""The windows a stage's ``rate`` limit may name (``"6/day"``: at most six starts in any 24 hours)."""

_RATE = re.compile(r"\s*([0-9]{1,9})\s*/\s*(second|minute|hour|day)s?\s*")


def parse_rate(text: str) -> tuple[int, int]:
    """``"6/day"`` -> (6, 86400): how many runs may start in how many seconds."""
    found = _RATE.fullmatch(text) if isinstance(text, str) else None
    if found is None or int(found.group(1)) < 1:
        raise ValueError(f"rate must look like '6/day' or '50/minute' (N/second|minute|hour|day, N >= 1), "
                         f"got {text!r}")
    return int(found.group(1)), RATE_UNITS[found.group(2)]


def _rate(value: str | None) -> str | None:
    if value is not None:
        parse_rate(value)
    return value


@dataclass(frozen=True)
class ClaimRefused:
    """Why a claim handed nothing out although episodes may be ready
    (``Store.try_claim``): the stage is paused, or at its concurrency or rate
    limit (``limits:`` in ``statekit.yaml``)."""

    reason: str
    """``paused``, ``concurrency`` or ``rate``."""
    message: str
    retry_after: float | None = None
    """Seconds until a start may be allowed again (a rate limit's window), None if unknown."""


def _is_zero(value: int) -> bool:
    return value == 0


class StageLimit(BaseModel):
    """One stage's entry in ``limits:`` (``statekit.yaml``): at most
    ``concurrency`` live runs at once, at most ``rate`` starts in a sliding
    window, across every worker on every machine (enforced by ``claim``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: Annotated[int, Field(strict=True, ge=1, le=100_000)] | None = None
    rate: Annotated[str, AfterValidator(_rate)] | None = None

    @property
    def window(self) -> tuple[int, int] | None:
        """(starts, seconds) of the rate limit, or None."""
        return parse_rate(self.rate) if self.rate is not None else None


class WorkerConfig(BaseModel):
    """``worker:`` in ``statekit.yaml``: how ``statekit worker`` classifies a
    command's exit code (``exit_codes: {"75": transient_network, "3": user_input_invalid}``;
    YAML keys are quoted)."""

    model_config = ConfigDict(extra="forbid")

    exit_codes: dict[int, str] = Field(default_factory=dict)


class GCSConfig(BaseModel):
    """``gcs:`` in ``statekit.yaml``: where uploads go."""

    model_config = ConfigDict(extra="forbid")

    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")]
    prefix: Annotated[str, Field(pattern=r"^([a-z0-9][a-z0-9._-]*/)*$", max_length=200)] = ""
    """Put in front of every object name (``audio/...``), e.g. ``staging/``."""
    endpoint: str | None = None
    """An API endpoint other than Google's (an emulator); ``STORAGE_EMULATOR_HOST`` also works."""
    project: str | None = None


class Lease(BaseModel):
    """Who is running the episode's stage, and until when. Another worker may
    take the episode over once ``expires_at`` has passed."""

    model_config = ConfigDict(extra="forbid")

    owner: Annotated[Text, Field(min_length=1, max_length=200)]
    run_id: Annotated[str, Field(pattern=r"^[0-9a-f]{8,64}$")]
    acquired_at: AwareDatetime
    expires_at: AwareDatetime


class Episode(BaseModel):
    """The state of one episode, exactly as its file holds it."""

    model_config = ConfigDict(extra="forbid")
    _pending: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def pending(self) -> dict[str, Any] | None:
        """A hand edit of the file that is not committed yet: ``{"path": ..., "fields": [...]}``
        (``fields`` is None when the file cannot be read); None when the file is committed.
        The model itself is the committed version."""
        return self._pending

    def with_pending(self, path: str, fields: list[str] | None, error: str | None = None) -> Episode:
        """This committed version, noting the pending edit of its file at ``path``
        (``error``: why the file cannot be read, if it cannot)."""
        marked = self.model_copy()
        marked._pending = {"path": path, "fields": fields, "error": error}
        return marked

    schema_version: Int = EPISODE_SCHEMA
    show_id: Id
    episode_id: Id
    title: Text = ""
    stage: Id
    previous_stage: Id | None = None
    """The stage left on the last move: a retry from ``failed`` goes back there."""
    version: NonNegativeInt
    created_at: AwareDatetime
    updated_at: AwareDatetime
    stage_entered_at: AwareDatetime
    message: Text | None = None
    costs: dict[Id, Cost] = Field(default_factory=dict)
    cost_total: Number = 0.0
    attempts: dict[Id, NonNegativeInt] = Field(default_factory=dict)
    approvals: dict[Id, Approval] = Field(default_factory=dict)
    checkpoints: dict[Id, CheckpointRecord] = Field(default_factory=dict)
    error_history: list[ErrorRecord] = Field(default_factory=list)
    metadata: FreeJson = Field(default_factory=dict)
    files: dict[Text, Text] = Field(default_factory=dict)
    lease: Lease | None = None
    """Set while a worker runs the current stage (``Store.run``)."""
    due_at: AwareDatetime | None = None
    """Not handed out by ``next()`` before this time (a retry's backoff)."""
    hold: Text | None = None
    """Why the episode waits for a person (``statekit retry`` releases it)."""
    stage_done: bool = False
    """The current stage's work is finished; it waits to move on (e.g. for an approval)."""
    assets: dict[Annotated[str, AfterValidator(_id)], AssetRecord] = Field(default_factory=dict)
    """Name -> the media file (``Store.add_asset``); names follow the id rule."""
    uploads: dict[Annotated[str, AfterValidator(_id)], UploadRecord] = Field(default_factory=dict)
    """Asset name -> the object it was uploaded to."""
    priority: Annotated[int, Field(strict=True, ge=-PRIORITY_MAX, le=PRIORITY_MAX, exclude_if=_is_zero)] = 0
    """Claims take higher first, then the longest-waiting (``statekit prioritize``);
    written to the file only when not 0, so files of stores that never use it stay as they were."""

    @model_validator(mode="before")
    @classmethod
    def _derive_cost_total(cls, data: Any, info: ValidationInfo) -> Any:
        # cost_total is derived from costs; a file whose total disagrees was
        # edited inconsistently, and we say so rather than guess which is right.
        if info.context is TRUSTED:
            return data
        if isinstance(data, dict) and isinstance(data.get("costs"), dict):
            try:
                total = cost_sum({k: float(v) for k, v in data["costs"].items()})
            except (TypeError, ValueError):
                return data  # the field validator reports the bad cost
            if not math.isfinite(total):
                raise ValueError("the costs add up to more than the largest number a file can hold; "
                                 "edit the per-stage costs")
            given = data.get("cost_total")
            if given is None:
                data = {**data, "cost_total": total}
            elif isinstance(given, (int, float)) and abs(given - total) > 1e-6:
                raise ValueError(
                    f"cost_total {given} does not equal the sum of costs ({total}); edit the per-stage costs instead"
                )
        return data

    @property
    def key(self) -> str:
        return f"{self.show_id}/{self.episode_id}"

    @property
    def attempts_total(self) -> int:
        return sum(self.attempts.values())


# --- trusted data: the model without the checks in Python --------------------------------------

def _unchecked(node: Any) -> Any:
    """A copy of a core schema without the validators that ``TRUSTED`` turns into no-ops
    (``_id``, ``_utf8``, ``_metadata``): the types, strict numbers, times and nested models stay."""
    if isinstance(node, dict):
        if node.get("type") == "function-after" and node["function"]["function"] in (_id, _utf8, _metadata):
            return _unchecked(node["schema"])
        return {key: _unchecked(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unchecked(value) for value in node]
    return node


@dataclass
class _Fast:
    validate: Any  # the fields' SchemaValidator, or None: no fast form (``trusted_episode`` then asks the model)
    private: dict[str, Any]


_FAST: list[_Fast] = []


def _fast() -> _Fast:
    """Built on first use (under 1 ms; a command that reads no index does not pay it). The fast
    form needs the schema pydantic makes of ``Episode``: its ``_derive_cost_total`` (a no-op when
    ``TRUSTED``) around the fields, private attributes whose defaults are None and no
    ``model_post_init`` of its own; otherwise None."""
    if not _FAST:
        from pydantic_core import SchemaError, SchemaValidator

        validate = None
        try:
            core: Any = Episode.__pydantic_core_schema__
            model, before = core["schema"], core["schema"]["schema"]
            fields = before["schema"]
            private = {name: attr.default for name, attr in Episode.__private_attributes__.items()}
            if (model["type"] == "model" and model["cls"] is Episode and before["type"] == "function-before"
                    and before["function"]["function"].__func__ is Episode._derive_cost_total.__func__
                    and fields["type"] == "model-fields" and all(v is None for v in private.values())
                    # (nothing after the fields but pydantic's own setting of the private attributes)
                    and getattr(Episode.model_post_init, "__name__", None) == "init_private_attributes"):
                validate = SchemaValidator({"type": "definitions", "schema": _unchecked(fields),  # (extra="forbid":)
                                            "definitions": _unchecked(core.get("definitions", []))},
                                           model["config"])
        except (KeyError, TypeError, AttributeError, SchemaError):  # another pydantic's schema: the plain form
            private = {}
        _FAST.append(_Fast(validate, private))
    return _FAST[0]


def trusted_episode(data: Any) -> Episode:
    """``Episode.model_validate(data, context=TRUSTED)``, about twice as fast: the fields are
    validated by pydantic's core without calling the checks ``TRUSTED`` skips, and the model is
    made from them as pydantic makes it (``__dict__``, fields set, no extra, private attributes).
    ``data`` as JSON text (``str`` or ``bytes``: the index's column as SQLite gives it) is read
    by pydantic's core itself, as ``Episode.model_validate_json(data, context=TRUSTED)`` reads it.
    For data statekit derived from a checked model (the index's copy of a file, ``dumped_episode``'s).
    Raises pydantic's ``ValidationError`` as the model does. ``tests/test_trusted.py`` holds it to
    the model."""
    fast = _fast()
    text = isinstance(data, (str, bytes))
    if fast.validate is None:
        return Episode.model_validate_json(data, context=TRUSTED) if text else Episode.model_validate(
            data, context=TRUSTED)
    validate = fast.validate.validate_json if text else fast.validate.validate_python
    values, extra, fields_set = validate(data, context=TRUSTED)
    model = object.__new__(Episode)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", fields_set)
    object.__setattr__(model, "__pydantic_extra__", extra)
    object.__setattr__(model, "__pydantic_private__", dict(fast.private))
    return model


class Event(BaseModel):
    """One change to an episode: exactly one per write, carrying the new version."""

    model_config = ConfigDict(extra="allow")

    schema_version: Int = EVENT_SCHEMA
    version: Int
    at: AwareDatetime
    kind: str
    show_id: str
    episode_id: str
    from_stage: str | None = None
    to_stage: str | None = None
    message: str | None = None
    cost: Number | None = None
    stage: str | None = None
    """With a ``cost``: the stage the money was spent in (an advance's: the stage it left)."""
    fields: list[str] | None = None
    sha256: str | None = None
    """Hash of the episode file this event produced (ties the log to the file)."""


class Show(BaseModel):
    """A show's blueprint: title, metadata and its ordered episode ids.

    ``order``: the episodes a person put in order by hand (show.yaml's
    ``order``; a schema-1 file's ``episodes``); they come first. ``episodes``:
    every episode of the show in order (the hand-set ones, then the rest by
    ``created_at``, then id), as ``Store.get_show`` answers; not in the file."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Int = SHOW_SCHEMA
    show_id: Id
    title: Text = ""
    created_at: AwareDatetime
    updated_at: AwareDatetime
    metadata: FreeJson = Field(default_factory=dict)
    order: list[Id] = Field(default_factory=list)
    episodes: list[Id] = Field(default_factory=list)

    def file_data(self) -> dict[str, Any]:
        """What show.yaml holds, in the form of its ``schema_version``."""
        data = self.model_dump(mode="json", exclude={"episodes", "order"})
        data["episodes" if self.schema_version < 2 else "order"] = list(dict.fromkeys(self.order))
        return data


class AlertsConfig(BaseModel):
    """``alerts:`` in statekit.yaml: failure alerts (``statekit.signals.alerts``)."""

    model_config = ConfigDict(extra="forbid")

    threshold: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 5
    """Consecutive failures of one stage, across episodes, before an alert."""
    notify: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    """Apprise URLs (``json://host/path``, ``slack://...``, ``mailto://...``)."""


class EventsConfig(BaseModel):
    """``events:`` in statekit.yaml: committed events published to NATS JetStream."""

    model_config = ConfigDict(extra="forbid")

    publish: Annotated[str, Field(pattern=r"^(nats|tls)://.+")]
    subject: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")] = "statekit.events"
    stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "STATEKIT"
    """The JetStream stream holding ``<subject>.>`` (created if missing)."""


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE_PART = re.compile(r"(\d+)\s*([smhdw])")


def parse_duration(value: str) -> timedelta:
    """'30d', '12h', '1w2d', '90m' -> a timedelta; ``ValueError`` saying what is expected."""
    text = value.strip().lower() if isinstance(value, str) else ""
    parts = _AGE_PART.findall(text)
    if not parts or _AGE_PART.sub("", text).strip():
        raise ValueError(f"expected an age such as '30d', '12h' or '1w2d', got {value!r}")
    seconds = sum(int(n) * AGE_UNITS[u] for n, u in parts)
    if not 0 < seconds <= 100 * 366 * 86400:
        raise ValueError(f"{value!r} must be more than nothing and at most 100 years")
    return timedelta(seconds=seconds)


def _age(value: str) -> str:
    parse_duration(value)
    return value


def _clock_time(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError(f"expected a time of day as HH:MM (UTC, 24-hour), such as '00:05', got {value!r}")
    return value


REPORT_FORMATS = ("html", "json", "csv", "text")


class ReportingConfig(BaseModel):
    """``reporting:`` in statekit.yaml: the reports ``statekit serve`` writes on schedule into
    ``reports/`` (``daily_report_YYYY-MM-DD.<ext>``, ``weekly_report_YYYY-Www.<ext>``, ``summary.json``);
    ``statekit report --daily|--weekly`` writes the same files by hand (from cron or a timer)."""

    model_config = ConfigDict(extra="forbid")

    generate_daily: Annotated[bool, Field(strict=True)] = True
    generate_weekly: Annotated[bool, Field(strict=True)] = False
    report_format: str = "html"
    at: Annotated[str, AfterValidator(_clock_time)] = "00:05"
    """When in the day (UTC) ``serve`` writes the day's report (and, with ``generate_weekly``, the week's)."""

    @model_validator(mode="after")
    def _known_format(self) -> ReportingConfig:
        if self.report_format not in REPORT_FORMATS:
            raise ValueError(f"report_format must be one of {', '.join(REPORT_FORMATS)}, not {self.report_format!r}")
        return self


class RetentionConfig(BaseModel):
    """``retention:`` in statekit.yaml: compress the event logs and checkpoints of episodes in a
    terminal stage that nobody touched for ``older_than`` (``statekit compact``; ``serve`` runs it
    daily when ``compress_old`` is true)."""

    model_config = ConfigDict(extra="forbid")

    compress_old: Annotated[bool, Field(strict=True)] = False
    older_than: Annotated[str, AfterValidator(_age)] = "30d"

    @property
    def age(self) -> timedelta:
        return parse_duration(self.older_than)


UNIQUE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
"""A unique metadata key: a top-level key of ``metadata`` (no dots: they are
kept free to name nested keys one day)."""


def _unique_keys(keys: list[str]) -> list[str]:
    for key in keys:
        if not UNIQUE_KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a metadata key statekit can keep unique: use 1-128 letters, "
                             "digits, '_' or '-' (a top-level key of metadata)")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} is listed more than once")
    return keys


class StoreConfig(BaseModel):
    """``statekit.yaml``: how this store works."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Int = DEFAULT_STORE_SCHEMA
    format: str = "yaml"
    lock_timeout: Annotated[Number, Field(gt=0)] = 5.0
    backups: Annotated[int, Field(ge=0, le=100, strict=True)] = 3
    """How many earlier versions of each episode file to keep (0: none)."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    gcs: GCSConfig | None = None
    alerts: AlertsConfig | None = None
    events: EventsConfig | None = None
    index: IndexConfig | None = None
    """A server index (PostgreSQL); the embedded SQLite index when None."""
    worker: WorkerConfig | None = None
    reporting: ReportingConfig | None = None
    retention: RetentionConfig | None = None
    unique: Annotated[list[str], AfterValidator(_unique_keys)] = Field(default_factory=list)
    """Metadata keys whose values no two episodes may share (``statekit.unique``)."""
    limits: dict[Id, StageLimit] = Field(default_factory=dict)
    """Per run stage: ``concurrency`` and ``rate`` (``{uploading: {concurrency: 2, rate: "6/day"}}``)."""
    pipeline: Pipeline

    @model_validator(mode="after")
    def _known_format(self) -> StoreConfig:
        if self.format not in ("yaml", "json"):
            raise ValueError(f"format must be 'yaml' or 'json', not {self.format!r}")
        for stage, limit in self.limits.items():
            if stage not in self.pipeline.runs:
                raise ValueError(f"limits: {stage!r} is not a stage workers run in pipeline "
                                 f"{self.pipeline.name!r} (run stages: {', '.join(self.pipeline.runs) or 'none'})")
            if limit.concurrency is None and limit.rate is None:
                raise ValueError(f"limits: {stage!r} sets neither concurrency nor rate")
        return self
