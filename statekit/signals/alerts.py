"""Failure alerts: streaks of failures per stage, recorded durably, sent through Apprise.

The rules (``record``), applied to committed events in order:

- a run of stage S failed (a ``fail`` or ``recovered`` event from S): the
  streak of S counts one more (its kinds and episodes noted); when it
  reaches ``alerts.threshold`` the streak's one alert is recorded;
- a run of S finished (a ``finish`` event of S): the streak ends; if it was
  alerted, a "back to normal" message is recorded;
- a failure that gives up (``action: give_up``: skipped after its attempts)
  is alerted at once, whatever the streak.

A recorded alert sits in the outbox (``state.State``) until an Apprise
notification of it succeeds; each message carries its idempotency key
(the streak's id, which is its first failure's ``stage:show/episode@version``,
so handling an event twice gives the same key and records nothing new).
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import StatekitError
from .state import Alert, State

log = logging.getLogger("statekit")

CONSUMER = "alerts"
FAILED = ("fail", "recovered")
KEEP = 5
"""How many of a streak's last error kinds and episodes an alert names."""


class MissingExtraError(StatekitError):
    """An optional dependency a configured signal needs is not installed."""


def needs(module: str, extra: str) -> Any:
    """Import ``module``, or one clear error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{module} is not installed; install statekit[{extra}] "
                                f"(pip install 'statekit[{extra}]')") from None


def stage_of(event: Mapping[str, Any], stage_before: str | None) -> str | None:
    """The stage a run event is about: a failure's ``from_stage``, a finish's
    ``run_stage`` (or ``from_stage``), else the stage the episode was at."""
    for key in ("from_stage", "run_stage"):
        value = event.get(key)
        if isinstance(value, str) and value:
            return value
    return stage_before


def record(conn: sqlite3.Connection, events: Iterable[tuple[Mapping[str, Any], str | None]],
           threshold: int) -> int:
    """Apply the rules to ``(event, stage)`` pairs inside the caller's
    transaction; returns how many alerts were recorded."""
    recorded = 0
    for event, stage in events:
        kind = event.get("kind")
        if stage is None or kind not in (*FAILED, "finish"):
            continue
        ref = f"{event['show_id']}/{event['episode_id']}"
        row = conn.execute("SELECT id, count, kinds, episodes, started_at, alerted FROM streaks WHERE stage = ?",
                           (stage,)).fetchone()
        if kind == "finish":
            if row is None:
                continue
            conn.execute("DELETE FROM streaks WHERE stage = ?", (stage,))
            if row[5]:
                State.enqueue_in(conn, f"{row[0]}/resolved", "resolved", *_resolved(stage, row, ref, event))
                recorded += 1
            continue
        error_kind = str(event.get("error_kind") or "unknown")
        if row is None:
            row = (f"{stage}:{ref}@{event['version']}", 0, "[]", "[]", str(event.get("at")), 0)
        streak_id, count, kinds, episodes, started, alerted = row
        count += 1
        kinds = json.dumps((json.loads(kinds) + [error_kind])[-KEEP:])
        episodes = json.dumps(([e for e in json.loads(episodes) if e != ref] + [ref])[-KEEP:])
        if not alerted and count >= threshold:
            alerted = 1
            State.enqueue_in(conn, streak_id, "failing",
                             *_failing(stage, streak_id, count, json.loads(kinds), json.loads(episodes), started))
            recorded += 1
        conn.execute("INSERT INTO streaks VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (stage) DO UPDATE SET "
                     "count = excluded.count, kinds = excluded.kinds, episodes = excluded.episodes, "
                     "alerted = excluded.alerted", (stage, streak_id, count, kinds, episodes, started, alerted))
        if event.get("action") == "give_up":
            key = f"give_up:{ref}@{event['version']}"
            State.enqueue_in(conn, key, "give_up", *_give_up(stage, key, ref, error_kind, event))
            recorded += 1
    return recorded


def _failing(stage: str, key: str, count: int, kinds: Sequence[str], episodes: Sequence[str],
             started: str) -> tuple[str, str, dict[str, Any]]:
    title = f"statekit: {stage} failed {count} times in a row"
    body = (f"Stage {stage} failed {count} times in a row (since {started}).\n"
            f"Last error kinds: {', '.join(kinds)}\nEpisodes: {', '.join(episodes)}\n"
            f"See 'statekit errors'.\nidempotency key: {key}")
    return title, body, {"type": "failing", "stage": stage, "count": count, "kinds": list(kinds),
                         "episodes": list(episodes), "since": started, "idempotency_key": key}


def _resolved(stage: str, row: tuple[Any, ...], ref: str, event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    key = f"{row[0]}/resolved"
    title = f"statekit: {stage} is back to normal"
    body = (f"Stage {stage} succeeded again ({ref} at {event.get('at')}) after {row[1]} failures in a row.\n"
            f"idempotency key: {key}")
    return title, body, {"type": "resolved", "stage": stage, "count": row[1], "episode": ref,
                         "streak": row[0], "idempotency_key": key}


def _give_up(stage: str, key: str, ref: str, error_kind: str, event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    message = str(event.get("message") or "")
    title = f"statekit: gave up on {ref} at {stage}"
    body = (f"{ref}: gave up on stage {stage} ({error_kind}): {message}\n"
            f"See 'statekit show {ref}'; 'statekit retry {ref}' tries again.\nidempotency key: {key}")
    return title, body, {"type": "give_up", "stage": stage, "episode": ref, "kind": error_kind,
                         "message": message, "idempotency_key": key}


# --- delivery --------------------------------------------------------------------------

def retry_in(attempts: int) -> float:
    """Seconds until the next try after ``attempts`` failed ones: 2, 4, 8... up
    to 10 minutes, with jitter so many processes do not retry together."""
    return min(2.0 ** max(attempts, 1), 600.0) * random.uniform(0.8, 1.2)


def notify(urls: Sequence[str], alert: Alert) -> str | None:
    """Send one alert to every URL; None if all took it, else why not."""
    apprise = needs("apprise", "alerts")
    sender = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))  # no thread pool: works at exit too
    for url in urls:
        if not sender.add(url):
            return f"not an Apprise URL: {url}"
    kind = apprise.NotifyType.SUCCESS if alert.kind == "resolved" else apprise.NotifyType.FAILURE
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = sender.notify(title=alert.title, body=alert.body, notify_type=kind)
        said = captured.getvalue().strip().splitlines()
    if ok:
        return None
    return said[-1] if said else "the notification was not delivered"


def deliver(state: State, urls: Sequence[str], now: float, every: bool = False) -> tuple[int, int]:
    """Send the pending alerts that are due (``every``: all pending ones);
    returns (sent, failed). A failure is retried later with backoff."""
    sent = failed = 0
    for alert in state.claim_due(now, every):
        try:
            error = notify(urls, alert)
        except MissingExtraError:
            raise
        except Exception as exc:  # a plugin's bug must not stop the others
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            state.sent(alert)
            sent += 1
        else:
            state.failed(alert, error, retry_in(alert.attempts + 1))
            log.warning("statekit: alert %s not delivered (%s); it is retried", alert.key, error)
            failed += 1
    return sent, failed
