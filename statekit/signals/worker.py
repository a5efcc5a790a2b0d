"""``Signals``: the post-commit hook and the background worker that acts on it.

The hook (``committed``, in ``writes.Writer.after_commit``) only queues the
committed event for this process's worker thread, so a signal never fails
or slows the write. The worker handles each event for every configured
consumer, each from its durable per-episode cursor (``state``):

- ``alerts``: the streak rules and the outbox in one SQLite transaction
  with the cursor's move, then sends what is due (``alerts.deliver``);
- ``stream``: publishes to JetStream, then moves the cursor (at least once;
  the message id lets JetStream drop a repeat).

An event the cursor has passed is skipped; one the cursor is behind (a crash,
a NATS outage, a failed index write) is read back from the episode's
``events.jsonl``, in version order. ``catch_up`` finds such events for every
episode by comparing the cursors with the index's versions: the worker does
it when it starts (the next process that writes), and so do
``statekit alerts send``, ``statekit events publish`` and ``statekit serve``.
At exit the worker gets a few seconds to finish what is queued and due.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .. import eventlog
from ..index.tables import episodes
from ..models import Episode
from . import alerts
from .state import State
from .stream import Publisher

if TYPE_CHECKING:
    from ..writes import Writer

log = logging.getLogger("statekit")

EXIT_SECONDS = 5.0
"""How long a process that wrote waits at exit for its signals to go out."""
IDLE_SECONDS = 30.0

Item = tuple[str, str, int, Mapping[str, Any], "str | None"]
_STOP = object()
_LIVE: weakref.WeakSet[Signals] = weakref.WeakSet()


class Signals:
    """The alerts and the event stream of one store (whichever are configured)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.state = State(writer.root)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._publishing = threading.RLock()  # one event loop: one thread at a time
        self._publisher: Publisher | None = None
        self._stream_retry_at: float | None = None
        self._stream_failures = 0
        self._checked = False

    @property
    def consumers(self) -> list[str]:
        config = self.writer.config
        return [name for name, on in ((alerts.CONSUMER, config.alerts), ("stream", config.events)) if on]

    # --- the hook --------------------------------------------------------------------

    def committed(self, record: dict[str, Any], new: Episode) -> None:
        """After each commit: queue the event for the worker (never raises into the write path's caller)."""
        if not self.consumers:
            return
        if os.getpid() != self._pid:  # a forked child: the parent's worker is not here
            self.__init__(self.writer)  # type: ignore[misc]
        if not self._checked:
            self._start_consumers(record)
        self._queue.put((record["show_id"], record["episode_id"], record["version"], record,
                         alerts.stage_of(record, new.stage)))
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="statekit-signals", daemon=True)
                    self._thread.start()
                    _LIVE.add(self)

    def _start_consumers(self, first: Mapping[str, Any]) -> None:
        """A consumer begins after what was committed before it was configured
        (this process's first event is its first)."""
        self._checked = True
        for consumer in self.consumers:
            if not self.state.started(consumer):
                key = (first["show_id"], first["episode_id"])
                self.state.start(consumer, [(s, e, first["version"] - 1 if (s, e) == key else v)
                                            for s, e, v in self._indexed()])

    def close(self, timeout: float = EXIT_SECONDS) -> None:
        """Let the worker finish what is queued and due (at most ``timeout`` seconds), then stop it
        (it starts again with the next commit)."""
        thread = self._thread
        if thread is not None and thread.is_alive() and os.getpid() == self._pid:
            self._queue.put(_STOP)
            thread.join(timeout)
        self._thread = None
        self.state.close()

    # --- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.catch_up()
            self._deliver()
        except Exception as exc:
            log.warning("statekit: signals could not catch up (%s); 'statekit alerts send' retries", exc)
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self._wait())
            except queue.Empty:
                first = None
            batch: list[Item] = []
            for item in (first, *self._drain()):
                if item is _STOP:
                    stop = True
                elif item is not None:
                    batch.append(item)
            try:
                self.handle(batch)
                self._deliver()
            except Exception as exc:
                log.warning("statekit: a signal failed (%s); it is retried", exc)
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        self.state.close()

    def _drain(self) -> list[Any]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _wait(self) -> float:
        now, waits = time.time(), [IDLE_SECONDS]
        if self.writer.config.alerts is not None:
            due = self.state.next_due()
            if due is not None:
                waits.append(due - now)
        if self._stream_retry_at is not None:
            waits.append(self._stream_retry_at - now)
        return max(0.05, min(waits))

    def handle(self, batch: list[Item]) -> None:
        """Handle committed events (in commit order) for every consumer."""
        config = self.writer.config
        if config.alerts is not None and batch:
            with self.state.transaction() as conn:
                for show, ep, version, record, stage in batch:
                    done = State.cursor_in(conn, alerts.CONSUMER, show, ep)
                    if version <= done:
                        continue
                    items = [(record, stage)] if done == version - 1 else self._logged(show, ep, done, version)
                    alerts.record(conn, items, config.alerts.threshold)
                    State.move_in(conn, alerts.CONSUMER, show, ep, version)
        if config.events is not None:
            if self._stream_retry_at is not None:
                if time.time() < self._stream_retry_at:
                    return  # still waiting to retry: the catch-up then finds these events
                batch = []
                self._stream(self.catch_up_stream)
            self._stream(lambda: self._publish(batch))

    def _publish(self, batch: list[Item]) -> None:
        with self._publishing:
            self._publish_locked(batch)

    def _publish_locked(self, batch: list[Item]) -> None:
        for show, ep, version, record, _stage in batch:
            done = self.state.cursor("stream", show, ep)
            if version <= done:
                continue
            events = [record] if done == version - 1 else [e for e, _ in self._logged(show, ep, done, version)]
            self.publisher().publish(events)
            self.state.move("stream", show, ep, version)

    def _stream(self, action: Any) -> None:
        try:
            action()
        except Exception as exc:
            self._stream_failures += 1
            wait = alerts.retry_in(self._stream_failures)
            self._stream_retry_at = time.time() + wait
            log.warning("statekit: events not published to %s (%s: %s); retrying in %.0f s",
                        self.writer.config.events.publish if self.writer.config.events else "?",
                        type(exc).__name__, exc, wait)
        else:
            if self._stream_retry_at is not None and action is not None:
                self._stream_retry_at = None
                self._stream_failures = 0

    def publisher(self) -> Publisher:
        config = self.writer.config.events
        assert config is not None
        if self._publisher is None or self._publisher.config != config:
            self._publisher = Publisher(config)
        return self._publisher

    def _deliver(self, every: bool = False) -> tuple[int, int]:
        config = self.writer.config.alerts
        if config is None:
            return 0, 0
        return alerts.deliver(self.state, config.notify, time.time(), every)

    # --- catching up ---------------------------------------------------------------------

    def _indexed(self) -> list[tuple[str, str, int]]:
        with self.writer.index.reading() as conn:
            rows = conn.execute(select(episodes.c.show_id, episodes.c.episode_id, episodes.c.version))
            return [(s, e, int(v)) for s, e, v in rows]

    def _logged(self, show: str, ep: str, after: int, upto: int) -> list[tuple[dict[str, Any], str | None]]:
        """The committed events ``after < version <= upto`` of an episode's log, each with its run's stage."""
        found: list[tuple[dict[str, Any], str | None]] = []
        stage: str | None = None
        for event in eventlog.read_events(self.writer.paths(show, ep).events, upto, strict=False):
            if after < event["version"] <= upto:
                found.append((event, alerts.stage_of(event, stage)))
            moved = event.get("to_stage")
            if isinstance(moved, str) and moved:
                stage = moved
        return found

    def _behind(self, consumer: str) -> list[tuple[str, str, int, int]]:
        if not self.state.started(consumer):
            self.state.start(consumer, self._indexed())
            return []
        done = self.state.cursors(consumer)
        return [(s, e, done.get((s, e), 0), v) for s, e, v in self._indexed() if v > done.get((s, e), 0)]

    def catch_up(self) -> dict[str, int]:
        """Handle every committed event a consumer's cursor is behind; returns how many per consumer."""
        handled: dict[str, int] = {}
        config = self.writer.config
        if config.alerts is not None:
            items: list[tuple[str, tuple[dict[str, Any], str | None]]] = []
            behind = self._behind(alerts.CONSUMER)
            with self.state.transaction() as conn:
                for show, ep, _done, version in behind:
                    done = State.cursor_in(conn, alerts.CONSUMER, show, ep)
                    items.extend((str(e.get("at")), (e, st)) for e, st in self._logged(show, ep, done, version))
                    State.move_in(conn, alerts.CONSUMER, show, ep, version)
                items.sort(key=lambda item: item[0])  # across episodes: in the order they happened
                alerts.record(conn, [item for _, item in items], config.alerts.threshold)
            handled[alerts.CONSUMER] = len(items)
        if config.events is not None:
            handled["stream"] = self.catch_up_stream()
        return handled

    def catch_up_stream(self) -> int:
        with self._publishing:
            return self._catch_up_stream()

    def _catch_up_stream(self) -> int:
        count = 0
        for show, ep, done, version in self._behind("stream"):
            events = [e for e, _ in self._logged(show, ep, done, version)]
            self.publisher().publish(events)
            self.state.move("stream", show, ep, version)
            count += len(events)
        self._stream_retry_at = None
        self._stream_failures = 0
        return count

    def send_now(self, every: bool = True) -> tuple[dict[str, int], tuple[int, int]]:
        """Catch up and deliver now (``statekit alerts send``, ``events publish``, ``serve``)."""
        handled = self.catch_up()
        return handled, self._deliver(every)


@atexit.register
def _close_all() -> None:
    for signals in list(_LIVE):
        signals.close()
