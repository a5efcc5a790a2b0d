"""What a failure does to an episode: pure decisions, no I/O.

A failed run (or an interrupted one, found by ``recover``) is classified
(``taxonomy``), recorded in the episode's ``error_history``, and sent to the
pipeline's failure stage: due again after a backoff, held for a person, or
given up when its attempts are used up. ``plan_failure`` and
``plan_give_up`` return the new episode and its event; the write path
commits them.
"""

from __future__ import annotations

import os
import socket
import traceback
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from .errors import context_of, error_text
from .models import Episode, ErrorRecord
from .pipeline import Pipeline, approvals_after_move
from .taxonomy import ErrorKind, backoff_seconds, classify, explain, log_fields

MAX_MESSAGE = 2000
MAX_TRACEBACK = 4000
TRACEBACK_FRAMES = 8


def default_owner() -> str:
    """``host:pid``, so a person can find the worker that holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def short_traceback(exc: BaseException) -> str:
    """The last frames of the traceback, at most ``MAX_TRACEBACK`` characters."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES))
    return text if len(text) <= MAX_TRACEBACK else "...\n" + text[-MAX_TRACEBACK:]


def _one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _storable(text: str) -> str:
    """``text`` as a file can hold it: bytes that were not UTF-8 (lone
    surrogates, e.g. from a file name) become ``\\udcxx`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


# --- the failure policy (pure) ----------------------------------------------------


def plan_failure(
    p: Pipeline,
    m: Episode,
    stage: str,
    exc: BaseException,
    now: datetime,
    *,
    kind: ErrorKind | None = None,
    run_id: str | None = None,
    event_kind: str = "fail",
) -> tuple[Episode, dict[str, Any], dict[str, Any]]:
    """The episode after a run of ``stage`` failed with ``exc``, its event,
    and the error record (also what goes into ``errors.jsonl``).

    The episode moves to the failure stage with the error in its history.
    Then by the kind's policy: ``retry`` while attempts are left (due again
    after an exponential backoff with jitter; a dead worker's run at once),
    ``hold`` for a person (bad input, hardware), or ``give_up`` (permanent,
    or attempts used up), which the caller completes by moving the episode
    to the give-up stage (``plan_give_up``).
    """
    assert p.failure_stage is not None
    kind = kind or classify(exc, p.error_rules)
    used = m.attempts.get(stage, 0)
    allowed = p.attempts_allowed(stage)
    due: datetime | None = None
    hold: str | None = None
    text = _storable(error_text(exc)) or type(exc).__name__  # an exception's text need not be valid UTF-8
    if kind.policy == "retry" and used < allowed:
        action = "retry"
        delay = 0.0 if kind is ErrorKind.INTERRUPTED else backoff_seconds(
            used, p.retry.initial, p.retry.maximum, p.retry.jitter)
        asked = getattr(exc, "retry_after", None)  # a service that says when to come back
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and 0 < asked < 86400 * 7:
            delay = max(delay, float(asked))
        due = now + timedelta(seconds=delay)
        summary = explain(exc, kind, "retry" if delay else "retry_now")
    elif kind.policy == "person":
        action = "hold"
        summary = explain(exc, kind, "hold")
    else:
        action = "give_up"
        why = "a permanent failure" if kind.policy == "give_up" else f"{used} of {allowed} attempts used"
        summary = explain(exc, kind, "give_up" if p.give_up_stage else "give_up_hold", why=why,
                          stage=p.give_up_stage or p.failure_stage)
        hold = f"giving up on {stage} ({why}): {_one_line(text, 300)}"
    summary = _storable(summary).replace("SHOW/EP", m.key)
    if action == "hold":
        hold = summary
    record = ErrorRecord(
        at=now, stage=stage, kind=kind.value, message=_one_line(text) or type(exc).__name__,
        traceback=_storable(short_traceback(exc)) if exc.__traceback__ is not None else None,
        type=_type_name(exc), attempt=used, action=action, run_id=run_id,
    )
    failure = p.failure_stage
    new = m.model_copy(update={
        "stage": failure, "previous_stage": stage, "version": m.version + 1, "updated_at": now,
        "stage_entered_at": now, "message": summary,
        "attempts": {**m.attempts, failure: m.attempts.get(failure, 0) + 1},
        "approvals": approvals_after_move(p, failure, m.approvals),
        "error_history": [*m.error_history, record], "lease": None, "due_at": due, "hold": hold,
        "stage_done": False,
    })
    event = {"kind": event_kind, "from_stage": stage, "to_stage": failure, "message": summary,
             "error_kind": kind.value, "action": action, "attempt": used, "run_id": run_id,
             "due_at": due.isoformat() if due is not None else None}
    line = {**record.model_dump(mode="json", exclude_none=True), "show_id": m.show_id,
            "episode_id": m.episode_id, "due_at": event["due_at"]}
    line.pop("traceback", None)
    return new, event, {k: v for k, v in line.items() if v is not None}


def giving_up(p: Pipeline, m: Episode) -> bool:
    """True for an episode a failure sent to give up that has not gone there yet
    (its second write did not happen: the process stopped in between)."""
    return (m.stage == p.failure_stage and m.hold is not None and bool(m.error_history)
            and m.error_history[-1].action == "give_up" and p.give_up_stage is not None)


def plan_give_up(p: Pipeline, m: Episode, now: datetime) -> tuple[Episode, dict[str, Any]]:
    """The second half of giving up: failure stage -> give-up stage, with the reason."""
    assert p.give_up_stage is not None
    target = p.give_up_stage
    reason = m.hold or "gave up"
    new = m.model_copy(update={
        "stage": target, "previous_stage": m.stage, "version": m.version + 1, "updated_at": now,
        "stage_entered_at": now, "message": reason,
        "attempts": {**m.attempts, target: m.attempts.get(target, 0) + 1},
        "approvals": approvals_after_move(p, target, m.approvals),
        "lease": None, "due_at": None, "hold": None, "stage_done": False,
    })
    return new, {"kind": "give_up", "from_stage": m.stage, "to_stage": target, "message": reason}


def interrupted(m: Episode) -> InterruptedRun:
    assert m.lease is not None
    lease = m.lease
    return InterruptedRun(
        f"the lease of {lease.owner} (run {lease.run_id}) expired at {lease.expires_at.isoformat()} "
        "without a heartbeat: the worker stopped or lost contact")


class InterruptedRun(Exception):
    """Stands for a run whose worker went away (what ``recover`` records)."""


def log_failure(logger: Any, line: Mapping[str, Any], exc: BaseException) -> None:
    """The failure as one structured log record (context as fields)."""
    fields = {**context_of(exc), **line}
    level = 40 if line.get("action") != "retry" else 30  # ERROR, WARNING
    logger.log(level, "%s/%s %s failed (%s, %s): %s", line.get("show_id"), line.get("episode_id"),
               line.get("stage"), line.get("kind"), line.get("action"), line.get("message"),
               extra=log_fields(fields))
