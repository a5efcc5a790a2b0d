"""Every error statekit raises: one base class carrying context and a hint.

Each subclass also inherits the builtin it resembles (``LookupError`` for
things not found, ``ValueError`` for bad input, ``TimeoutError`` for locks,
``OSError`` for I/O), so callers can catch either family.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


class StatekitError(Exception):
    """Base class: a message, a one-line ``hint`` for the person who has to act,
    and context (``show_id``, ``episode_id``, ``stage``, ``timestamp``, extras)."""

    default_hint = ""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        show_id: str | None = None,
        episode_id: str | None = None,
        stage: str | None = None,
        **extras: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.show_id = show_id
        self.episode_id = episode_id
        self.stage = stage
        self.timestamp = datetime.now(timezone.utc)
        self.extras = extras

    def __str__(self) -> str:
        # the hint is part of the text, so a traceback or a log line shows what to do
        return self.one_line()

    def __reduce__(self) -> tuple[Any, ...]:
        # subclasses take keyword-only arguments, which Exception's own pickling cannot pass back
        state = dict(self.__dict__)
        if isinstance(self, OSError):  # OSError keeps these in slots, not in __dict__
            state.update(errno=self.errno, filename=self.filename)
        return _rebuild, (type(self), self.args, state)

    def own_context(self) -> dict[str, Any]:
        """This error's own context, without what it wraps."""
        ctx = {
            "show_id": self.show_id,
            "episode_id": self.episode_id,
            "stage": self.stage,
            "timestamp": self.timestamp.isoformat(),
        }
        ctx.update(self.extras)
        return {k: v for k, v in ctx.items() if v is not None}

    @property
    def context(self) -> dict[str, Any]:
        """The context as a flat dict (for logs and JSON output). Fields this
        error lacks are taken from the statekit errors it was raised from
        (``raise ... from exc``, or while handling ``exc``): context survives
        chaining."""
        return context_of(self)

    def add_context(self, **fields: Any) -> StatekitError:
        """Fill in context fields that are still empty (returns self, to re-raise)."""
        for key, value in fields.items():
            if value is None:
                continue
            if key in ("show_id", "episode_id", "stage"):
                if getattr(self, key) is None:
                    setattr(self, key, value)
            else:
                self.extras.setdefault(key, value)
        return self

    def one_line(self) -> str:
        """What went wrong and what to do, on one line (what the CLI prints)."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" (hint: {' '.join(self.hint.split())})"
        return text


def error_text(exc: BaseException) -> str:
    """What an exception says happened: a statekit error's message without
    its hint (an error record keeps the fact; the advice depends on what was done)."""
    return exc.message if isinstance(exc, StatekitError) else str(exc)


def _rebuild(cls: type[StatekitError], args: tuple[Any, ...], state: dict[str, Any]) -> StatekitError:
    """An error back from ``pickle`` or ``copy`` (its ``__init__`` is not run again)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    for key, value in state.items():
        setattr(exc, key, value)
    return exc


def context_of(exc: BaseException) -> dict[str, Any]:
    """The context of any exception: the fields of every statekit error in
    its chain (``__cause__``, else ``__context__``), the outermost winning."""
    merged: dict[str, Any] = {}
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StatekitError):
            for key, value in current.own_context().items():
                merged.setdefault(key, value)
        current = current.__cause__ or current.__context__
    return merged


class InvalidIdError(StatekitError, ValueError):
    default_hint = "ids are 1-128 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit (e.g. 'ep001')"


class StoreNotFoundError(StatekitError, LookupError):
    default_hint = "create one with 'statekit init DIR', or point at it with --root DIR or $STATEKIT_ROOT"


class StoreExistsError(StatekitError, ValueError):
    default_hint = "open the existing store instead, or choose an empty directory"


class ShowNotFoundError(StatekitError, LookupError):
    default_hint = "list shows with 'statekit list'; creating an episode creates its show"


class EpisodeNotFoundError(StatekitError, LookupError):
    default_hint = "list episodes with 'statekit list --show SHOW'"


class EpisodeExistsError(StatekitError, ValueError):
    default_hint = "choose another episode id, or use 'statekit show' to inspect the existing one"


class AssetNotFoundError(StatekitError, LookupError):
    default_hint = "list the episode's assets with 'statekit asset list SHOW/EP'"


class UnknownStageError(StatekitError, LookupError):
    def __init__(self, message: str, *, stages: list[str] | tuple[str, ...] = (), **kw: Any) -> None:
        kw.setdefault("hint", "stages in this pipeline: " + ", ".join(stages) if stages else None)
        super().__init__(message, **kw)
        self.stages = list(stages)


class InvalidTransitionError(StatekitError, ValueError):
    """An illegal stage move; ``allowed`` lists the legal next stages."""

    def __init__(self, message: str, *, src: str, dst: str, allowed: list[str] | tuple[str, ...], **kw: Any) -> None:
        legal = ", ".join(allowed) if allowed else "none (it is a terminal stage)"
        kw.setdefault("hint", f"legal next stages from '{src}': {legal}")
        super().__init__(message, **kw)
        self.src = src
        self.dst = dst
        self.allowed = list(allowed)


class ApprovalRequiredError(StatekitError):
    default_hint = "a person approves with 'statekit approve SHOW/EP STAGE --by NAME'"


class VersionConflictError(StatekitError):
    """Compare-and-set failed: someone wrote the episode since you read it."""

    def __init__(self, message: str, *, expected: int, actual: int, **kw: Any) -> None:
        kw.setdefault("hint", "read the episode again and retry with its current version")
        super().__init__(message, **kw)
        self.expected = expected
        self.actual = actual


class LeaseExpiredError(VersionConflictError):
    """A stage run's lease ran out: another worker may own the episode now,
    so this worker's late write is refused."""

    def __init__(self, message: str, *, expected: int, actual: int, owner: str | None = None, **kw: Any) -> None:
        kw.setdefault("hint", "the episode was (or will be) handed to another worker; drop this result, or "
                              "heartbeat more often than the lease (Run.heartbeat, lease_seconds)")
        super().__init__(message, expected=expected, actual=actual, **kw)
        self.owner = owner


class NotReadyError(StatekitError):
    """A stage run cannot start now. ``reason``: ``leased`` (a live worker
    holds the episode), ``due`` (a retry still in its backoff), ``hold``
    (waiting for a person), ``done`` (the stage's work is finished),
    ``moved_on`` (the episode went past the stage: another worker ran it, or
    it was moved on; ``current_stage`` names where it is now) or ``gave_up``
    (its last worker died with the attempts used up)."""

    def __init__(self, message: str, *, reason: str, current_stage: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason
        self.current_stage = current_stage
        if current_stage is not None:
            self.extras.setdefault("current_stage", current_stage)


class LockTimeoutError(StatekitError, TimeoutError):
    default_hint = "another process is writing this episode; retry, or raise the lock timeout"

    def __init__(self, message: str, *, path: str, timeout: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.path = path
        self.timeout = timeout


class CorruptFileError(StatekitError, ValueError):
    """A file that cannot be read as what it should be (parse error, damage)."""

    default_hint = "fix the file by hand or restore it from a backup; nothing was changed"

    def __init__(self, message: str, *, path: str, line: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.path = path
        self.line = line


class SchemaVersionError(StatekitError, ValueError):
    def __init__(self, message: str, *, path: str | None, found: object, supported: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.path = path
        self.found = found
        self.supported = supported


class ValidationError(StatekitError, ValueError):
    """Content that parses but breaks the schema, or an argument with a wrong
    value. Without a ``hint``: a file's error says to fix the file; an
    argument's error says only that nothing changed (its message says what
    is expected), so a hint never points at a cause that is not there."""

    default_hint = "nothing was changed"

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None, **kw: Any
    ) -> None:
        if kw.get("hint") is None and path is not None:
            kw["hint"] = f"fix {field or 'it'} in that file by hand; nothing was changed"
        super().__init__(message, **kw)
        self.path = path
        self.line = line
        self.field = field


class DuplicateError(ValidationError):
    """A value of a unique metadata key (``unique:`` in statekit.yaml) that
    another episode already has. ``key``, ``value`` and ``other`` (the
    ``SHOW/EP`` holding it) say which."""

    def __init__(self, message: str, *, key: str, value: Any, other: str, **kw: Any) -> None:
        kw.setdefault("hint", f"give this episode another {key}, or change {other}'s first; nothing was changed")
        kw.setdefault("field", f"metadata.{key}")
        super().__init__(message, **kw)
        self.key = key
        self.value = value
        self.other = other


class PipelineError(StatekitError, ValueError):
    """A stage graph that is itself wrong; ``problems`` names each fault."""

    default_hint = "fix the pipeline in statekit.yaml (or the Pipeline you passed)"

    def __init__(self, message: str, *, problems: list[str] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.problems = list(problems or [])


class UnsafePathError(StatekitError, ValueError):
    default_hint = "statekit never follows symlinks inside a store; replace the link with a real file or directory"

    def __init__(self, message: str, *, path: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.path = path


class IndexUnavailableError(StatekitError):
    """The index database refused or failed a write (locked too long, damaged)."""

    default_hint = "the files are fine; run 'statekit sync' (or 'statekit rebuild-index') to bring the index back"


class ReadOnlyStoreError(StatekitError):
    """A write asked of a store opened read-only (``Store.open(root, read_only=True)``:
    the dashboard's); refused before anything is changed."""

    default_hint = "open the store without read_only to change it (the statekit commands, Store.open(root))"


class QueryError(ValidationError):
    """A SQL query the index refused. ``reason`` says why: "empty", "syntax",
    "unknown" (a table or column), "write" or "other"; the hint fits it."""

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, field="query", **kw)
        self.reason = reason


class QueryTimeoutError(StatekitError, TimeoutError):
    """A SQL query still running when its time limit (``timeout`` seconds) ran out; the database stopped it."""

    default_hint = ("raise the limit with 'statekit sql --timeout SECONDS' (Store.sql(query, timeout=SECONDS)), "
                    "or narrow the query (a WHERE clause, a LIMIT)")

    def __init__(self, message: str, *, timeout: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.timeout = timeout


class StorageError(StatekitError, OSError):
    """An operating-system I/O failure, naming the path and errno."""

    default_hint = "the previous content is intact; fix the cause (disk space, permissions) and retry"

    def __init__(self, message: str, *, path: str, errno: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.errno = errno
        self.filename = path
        self.path = path


# --- errors a pipeline's own code raises (the podcast documents' hierarchy) -------


class CharacterNotFoundError(StatekitError, LookupError):
    """A show's character (a voice, a host) that the episode refers to does not exist."""

    default_hint = "check the character names in the show's metadata"


class APIError(StatekitError):
    """A call to a remote service failed. ``status``: the HTTP status if
    there was one (429 and 5xx are worth retrying, other 4xx are not);
    ``retry_after``: seconds the service asked us to wait."""

    default_hint = "statekit retries transient API failures; check the service's status page if it persists"

    def __init__(self, message: str, *, service: str | None = None, status: int | None = None,
                 retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.service = service
        self.status = status
        self.retry_after = retry_after
        if service is not None:
            self.extras.setdefault("service", service)
        if status is not None:
            self.extras.setdefault("status", status)


class NetworkError(StatekitError, ConnectionError):
    """The network failed under a stage (connection lost, DNS, timeout)."""

    default_hint = "statekit retries it after a backoff; check the connection if it keeps happening"


class AudioProcessingError(StatekitError):
    """Audio could not be produced or decoded (a damaged or unsupported file)."""

    default_hint = "check the input audio file; a damaged file has to be replaced"

    def __init__(self, message: str, *, path: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.path = path
        if path is not None:
            self.extras.setdefault("path", path)
