"""The event stream: committed events published to NATS JetStream (nats-py).

Each event goes to ``<subject>.<show>.<kind>`` with the message id
``<show>/<episode>/<version>`` (``Nats-Msg-Id``), so JetStream drops a
repeat within its duplicate window. The stream (``events.stream``) is
created if missing, holding ``<subject>.>``.

``Publisher`` keeps one connection on its own event loop; it is used from
one thread (the signals' worker, or a command).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..models import EventsConfig
from .alerts import needs

log = logging.getLogger("statekit")

CONSUMER = "stream"
TIMEOUT = 5.0
_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the failure reaches the caller (and the log) as one line, not a traceback."""
    log.debug("statekit: NATS: %s", exc)


def subject_of(config: EventsConfig, event: Mapping[str, Any]) -> str:
    """``<subject>.<show>.<kind>`` (a ``.`` in an id becomes ``_``: NATS splits subjects at dots)."""
    show = _NOT_A_TOKEN.sub("_", str(event["show_id"]))
    kind = _NOT_A_TOKEN.sub("_", str(event["kind"]))
    return f"{config.subject}.{show}.{kind}"


def message_id(event: Mapping[str, Any]) -> str:
    return f"{event['show_id']}/{event['episode_id']}/{event['version']}"


class Publisher:
    """Publishes events to JetStream, in order, each acknowledged before the next."""

    def __init__(self, config: EventsConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self._js: Any = None

    def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Publish ``events`` in order; raises on the first one not acknowledged."""
        if not events:
            return
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._publish(events))
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> Any:
        if self._js is None:
            nats = needs("nats", "events")
            # bounded as a whole: with a refused connection nats-py's connect tries again every
            # 2 s for ever (max_reconnect_attempts=0 does not stop it), which hung the signals thread
            self._nc = await asyncio.wait_for(
                nats.connect(self.config.publish, connect_timeout=TIMEOUT, allow_reconnect=False,
                             max_reconnect_attempts=0, error_cb=_quiet), TIMEOUT)
            js = self._nc.jetstream(timeout=TIMEOUT)
            from nats.js.errors import NotFoundError

            try:
                await js.stream_info(self.config.stream)
            except NotFoundError:
                await js.add_stream(name=self.config.stream, subjects=[f"{self.config.subject}.>"])
            self._js = js
        return self._js

    async def _publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        js = await self._connect()
        for event in events:
            await js.publish(subject_of(self.config, event), json.dumps(dict(event), sort_keys=True).encode(),
                             timeout=TIMEOUT, stream=self.config.stream,
                             headers={"Nats-Msg-Id": message_id(event)})

    def close(self) -> None:
        loop, nc = self._loop, self._nc
        self._nc = self._js = None
        if loop is None:
            return
        if nc is not None:
            try:
                loop.run_until_complete(asyncio.wait_for(nc.close(), TIMEOUT))
            except Exception:
                pass
        loop.close()
        self._loop = None
