"""What kind of failure an exception is, and what to do about it. No I/O.

A rule table maps exception types and ``OSError`` errnos (and, if need be,
message patterns) to an ``ErrorKind``; a pipeline adds its own rules as data.
Each kind has a policy (retry after a backoff, hold for a person, or give
up) and a message template telling the person what to do. ``retry`` is an
in-process retry decorator built on tenacity that only retries transient
failures.
"""

from __future__ import annotations

import errno as errnos
import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import context_of, error_text

log = logging.getLogger("statekit")


class ErrorKind(StrEnum):
    """The finer kinds of the error handling document, plus ``interrupted``
    (a worker that died mid-run) and ``unknown``."""

    TRANSIENT_NETWORK = "transient_network"
    TRANSIENT_RESOURCE = "transient_resource"
    SYSTEM_RESOURCE_EXCEEDED = "system_resource_exceeded"
    HARDWARE_FAILURE = "hardware_failure"
    USER_INPUT_INVALID = "user_input_invalid"
    PERMANENT_FILE_CORRUPTION = "permanent_file_corruption"
    INTERRUPTED = "interrupted"
    UNKNOWN = "unknown"

    @property
    def family(self) -> str:
        """transient, system, user or permanent (the coarse classes)."""
        return FAMILY[self]

    @property
    def policy(self) -> str:
        """``retry`` (after a backoff), ``person`` (held until someone acts)
        or ``give_up`` (skipped, with the reason)."""
        return POLICY[self]

    @property
    def transient(self) -> bool:
        return self.policy == "retry"


FAMILY = {
    ErrorKind.TRANSIENT_NETWORK: "transient",
    ErrorKind.TRANSIENT_RESOURCE: "transient",
    ErrorKind.INTERRUPTED: "transient",
    ErrorKind.SYSTEM_RESOURCE_EXCEEDED: "system",
    ErrorKind.HARDWARE_FAILURE: "system",
    ErrorKind.USER_INPUT_INVALID: "user",
    ErrorKind.PERMANENT_FILE_CORRUPTION: "permanent",
    ErrorKind.UNKNOWN: "unknown",
}

# Retrying helps when the world may change by itself (the network comes
# back, memory frees up); a person must fix bad input or hardware; a file
# that is corrupt stays corrupt. An unknown failure is retried: attempts
# are bounded by max_attempts, after which the episode is skipped anyway.
POLICY = {
    ErrorKind.TRANSIENT_NETWORK: "retry",
    ErrorKind.TRANSIENT_RESOURCE: "retry",
    ErrorKind.INTERRUPTED: "retry",
    ErrorKind.SYSTEM_RESOURCE_EXCEEDED: "retry",
    ErrorKind.UNKNOWN: "retry",
    ErrorKind.HARDWARE_FAILURE: "person",
    ErrorKind.USER_INPUT_INVALID: "person",
    ErrorKind.PERMANENT_FILE_CORRUPTION: "give_up",
}


@dataclass(frozen=True)
class Message:
    title: str
    message: str
    action: str


# What a person reads. {detail} is the exception's own message. What
# statekit did about it (retry, hold, give up) is not part of a kind's
# text: a kind that is retried is given up once its attempts are used up,
# so that sentence comes from OUTCOMES, by what was actually done.
MESSAGES = {
    ErrorKind.TRANSIENT_NETWORK: Message(
        "Network connection interrupted", "The network connection was lost ({detail}).",
        "Check the network connection if it keeps happening",
    ),
    ErrorKind.TRANSIENT_RESOURCE: Message(
        "Resource busy", "A resource was busy or rate-limited ({detail}).",
        "If it keeps happening, lower the number of workers",
    ),
    ErrorKind.INTERRUPTED: Message(
        "Worker stopped", "The worker running this stage stopped before finishing ({detail}).",
        "Look at the worker's own log to see why it stopped",
    ),
    ErrorKind.SYSTEM_RESOURCE_EXCEEDED: Message(
        "Insufficient resources",
        "The system ran out of a resource ({detail}). Consider processing in smaller batches.",
        "Free disk space or memory, or reduce the batch size",
    ),
    ErrorKind.HARDWARE_FAILURE: Message(
        "Hardware or file system failure", "The disk or file system reported an error ({detail}).",
        "Check the disk (dmesg, SMART) and its free space",
    ),
    ErrorKind.USER_INPUT_INVALID: Message(
        "Invalid input", "The input for this stage is not valid ({detail}).",
        "Fix the input (file path, episode metadata)",
    ),
    ErrorKind.PERMANENT_FILE_CORRUPTION: Message(
        "File corrupted", "A file this stage needs is damaged ({detail}).",
        "Restore the file from its source or a backup",
    ),
    ErrorKind.UNKNOWN: Message(
        "Unexpected failure", "The stage failed with an unexpected error ({detail}).",
        "Look at the traceback in the episode's error history",
    ),
}

OUTCOMES = {
    "retry": "statekit will retry automatically after a backoff.",
    "retry_now": "statekit will retry automatically.",
    "hold": "statekit holds the episode until a person runs 'statekit retry SHOW/EP'.",
    "give_up": "statekit gave up on it{why}: the episode goes to '{stage}'.",
    "give_up_hold": "statekit gave up on it{why}: the episode waits in '{stage}' until a person runs "
                    "'statekit retry SHOW/EP'.",
}
"""What statekit did about a failure, in words: ``retry`` (after a backoff,
or ``retry_now``), ``hold``, or ``give_up`` (to the give-up stage, or
``give_up_hold`` in a pipeline without one)."""

# The starting set the error handling document names, by situation.
SITUATIONS = {
    "file_not_found": Message(
        "Source file not found",
        "The file '{filename}' could not be found. Please check if the file exists and try again.",
        "Verify file path and permissions",
    ),
    "insufficient_memory": Message(
        "Insufficient memory",
        "Your system doesn't have enough memory to process this project. Consider processing in smaller batches.",
        "Reduce project size or upgrade system memory",
    ),
    "network_interrupted": Message(
        "Network connection interrupted",
        "The network connection was lost. The system will automatically retry in {retry_seconds} seconds.",
        "Check network connection",
    ),
}


class Rule(BaseModel):
    """One line of the classification table: if an exception matches, it is ``kind``.

    ``types``: class names, simple (``TimeoutError``) or qualified
    (``requests.exceptions.Timeout``), matched against the exception's whole
    class hierarchy. ``errnos``: names such as ``ECONNRESET``. ``status``:
    HTTP statuses (``"429"``, ``"5xx"``) of an exception that carries one
    (``status``, ``status_code`` or ``response.status_code``). ``message``: a
    regular expression searched in the exception's text (a statekit error's
    message, without its hint). Every field given must match.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ErrorKind
    types: tuple[str, ...] = ()
    errnos: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    message: str | None = None
    note: str = Field(default="", description="why this rule exists")

    @field_validator("status")
    @classmethod
    def _statuses(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in codes if not re.fullmatch(r"[1-5](\d\d|xx)", str(c))]
        if bad:
            raise ValueError(f"status codes look like '503' or '5xx', not {bad}")
        return tuple(str(c) for c in codes)

    @field_validator("errnos")
    @classmethod
    def _known_errnos(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if not hasattr(errnos, n)]
        if unknown:
            raise ValueError(f"unknown errno names {unknown}")
        return names

    @field_validator("message")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"message is not a valid regular expression: {exc}") from None
        return pattern

    def matches(self, exc: BaseException) -> bool:
        if not (self.types or self.errnos or self.status or self.message):
            return False
        if self.types:
            names = {c.__name__ for c in type(exc).__mro__} | {
                f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
            if not names.intersection(self.types):
                return False
        if self.errnos:
            number = getattr(exc, "errno", None)
            if number is None or errnos.errorcode.get(number) not in self.errnos:
                return False
        if self.status:
            code = http_status(exc)
            if code is None or not any(c in (str(code), f"{code // 100}xx") for c in self.status):
                return False
        return self.message is None or re.search(self.message, error_text(exc)) is not None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (APIError, requests, httpx...)."""
    for holder in (exc, getattr(exc, "response", None)):
        for name in ("status", "status_code"):
            value = getattr(holder, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def _rule(kind: ErrorKind, *, types: Sequence[str] = (), errnos: Sequence[str] = (), status: Sequence[str] = (),
          note: str = "") -> Rule:
    return Rule(kind=kind, types=tuple(types), errnos=tuple(errnos), status=tuple(status), note=note)


# First match wins: specific rules come before general ones. A pipeline's own
# rules (statekit.yaml: pipeline.error_rules) are tried before these.
DEFAULT_RULES: tuple[Rule, ...] = (
    # statekit's own errors
    _rule(ErrorKind.PERMANENT_FILE_CORRUPTION, types=["CorruptFileError"], note="a damaged file stays damaged"),
    _rule(ErrorKind.USER_INPUT_INVALID, types=["ValidationError", "InvalidIdError", "SchemaVersionError"]),
    _rule(ErrorKind.TRANSIENT_RESOURCE, types=["LockTimeoutError", "VersionConflictError"],
          note="another process had the episode; trying again later is the fix"),
    # remote services, by HTTP status when there is one
    _rule(ErrorKind.TRANSIENT_RESOURCE, status=["429"], note="rate limited: wait and try again"),
    _rule(ErrorKind.TRANSIENT_NETWORK, status=["5xx", "408"], note="the service failed or timed out"),
    _rule(ErrorKind.USER_INPUT_INVALID, status=["4xx"], note="the request itself is wrong: retrying repeats it"),
    _rule(ErrorKind.TRANSIENT_NETWORK, types=["APIError"], note="a remote service failed (no status)"),
    # OSError by errno
    _rule(ErrorKind.TRANSIENT_NETWORK, errnos=["ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "ETIMEDOUT",
                                               "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "EPIPE", "EHOSTDOWN"]),
    _rule(ErrorKind.TRANSIENT_RESOURCE, errnos=["EAGAIN", "EBUSY", "EINTR", "ETXTBSY"]),
    _rule(ErrorKind.SYSTEM_RESOURCE_EXCEEDED, errnos=["ENOSPC", "EDQUOT", "ENOMEM", "EMFILE", "ENFILE", "EFBIG"]),
    _rule(ErrorKind.HARDWARE_FAILURE, errnos=["EIO", "EROFS", "ENXIO", "ENODEV", "EUCLEAN"]),
    _rule(ErrorKind.USER_INPUT_INVALID, errnos=["ENOENT", "ENOTDIR", "EISDIR", "EACCES", "EPERM", "ENAMETOOLONG"],
          note="a path or permission a person has to fix"),
    # exception types
    _rule(ErrorKind.TRANSIENT_NETWORK, types=["ConnectionError", "TimeoutError", "socket.gaierror",
                                              "http.client.RemoteDisconnected", "urllib.error.URLError",
                                              "requests.exceptions.ConnectionError", "requests.exceptions.Timeout",
                                              "httpx.TransportError", "NetworkError"]),
    _rule(ErrorKind.SYSTEM_RESOURCE_EXCEEDED, types=["MemoryError", "RecursionError"]),
    _rule(ErrorKind.PERMANENT_FILE_CORRUPTION, types=["UnicodeDecodeError", "zlib.error", "wave.Error",
                                                      "AudioProcessingError"],
          note="bytes that cannot be decoded do not become decodable"),
    _rule(ErrorKind.USER_INPUT_INVALID, types=["ValueError", "KeyError", "TypeError", "FileNotFoundError",
                                               "IsADirectoryError", "NotADirectoryError", "PermissionError"]),
    _rule(ErrorKind.HARDWARE_FAILURE, types=["OSError"]),
)


def classify(exc: BaseException, rules: Iterable[Rule] = ()) -> ErrorKind:
    """The kind of ``exc``: the first of ``rules``, then ``DEFAULT_RULES``,
    that matches. A statekit error raised from another exception is
    classified by what it wraps when it has no rule of its own."""
    for rule in (*rules, *DEFAULT_RULES):
        if rule.matches(exc):
            return rule.kind
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return classify(cause, rules)
    return ErrorKind.UNKNOWN


def explain(exc: BaseException, kind: ErrorKind, action: str | None = None, *, why: str = "",
            stage: str | None = None) -> str:
    """One line for a person: what happened, what statekit did about it
    (``action``, a key of ``OUTCOMES``; by default the kind's policy; ``why``:
    the reason for giving up; ``stage``: where the episode went or waits),
    and what to do."""
    template = MESSAGES[kind]
    detail = " ".join(error_text(exc).split()) or type(exc).__name__
    if action is None:
        action = {"retry": "retry", "person": "hold", "give_up": "give_up"}[kind.policy]
    outcome = OUTCOMES[action].format(why=f" ({why})" if why else "", stage=stage or "the give-up stage")
    return f"{template.title}: {template.message.format(detail=detail)} {outcome} Action: {template.action}."


# --- structured logs ----------------------------------------------------------------

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def log_fields(context: dict[str, Any]) -> dict[str, Any]:
    """``extra=`` for a log call: the context as attributes of the log record
    (``record.show_id``, ``record.kind``...), which JSON log formatters emit as
    fields. A key that would clash with the record's own attributes gets a
    ``ctx_`` prefix."""
    return {(f"ctx_{k}" if k in _RESERVED else k): v for k, v in context.items()}


# --- in-process retries ----------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def retry(
    attempts: int = 3,
    *,
    initial: float = 0.5,
    maximum: float = 30.0,
    jitter: float = 0.5,
    rules: Iterable[Rule] = (),
    sleep: Callable[[float], None] | None = None,
) -> Callable[[F], F]:
    """Retry a function on transient failures only (as ``classify`` sees them),
    with exponential backoff and jitter; anything else, or the last failure,
    is raised as it was. Each retry is logged (logger ``statekit``) with the
    error's kind and context. ``sleep``: how to wait (tests pass a fake).

        @retry(attempts=5)
        def fetch(url): ...
    """
    import tenacity

    if type(attempts) is not int or attempts < 1:
        raise ValueError(f"attempts must be a positive integer, got {attempts!r}")
    for name, value in (("initial", initial), ("maximum", maximum), ("jitter", jitter)):
        if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    rules = tuple(rules)

    def worth_retrying(exc: BaseException) -> bool:
        return classify(exc, rules).transient

    def announce(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:
            return
        kind = classify(exc, rules)
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        name = getattr(state.fn, "__qualname__", "call")
        log.warning("%s failed (%s: %s); attempt %d of %d, retrying in %.2f s", name, kind.value, exc,
                    state.attempt_number, attempts, wait,
                    extra=log_fields({**context_of(exc), "kind": kind.value, "attempt": state.attempt_number,
                                      "retry_in": round(wait, 3)}))

    def decorate(fn: F) -> F:
        options: dict[str, Any] = {}
        if sleep is not None:
            options["sleep"] = sleep
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(worth_retrying),
            stop=tenacity.stop_after_attempt(attempts),
            wait=backoff(initial, maximum, jitter),
            before_sleep=announce,
            reraise=True,
            **options,
        )

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return retrying(fn, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def backoff(initial: float, maximum: float, jitter: float) -> Any:
    """tenacity's exponential wait with random jitter: initial * 2^(n-1) + U(0, jitter), at most ``maximum``."""
    import tenacity

    return tenacity.wait_exponential(multiplier=initial, max=maximum, exp_base=2) + tenacity.wait_random(0, jitter)


def backoff_seconds(attempt: int, initial: float, maximum: float, jitter: float) -> float:
    """How long to wait before attempt ``attempt + 1`` (using tenacity's wait functions)."""
    import tenacity

    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return float(backoff(initial, maximum, jitter)(state))
