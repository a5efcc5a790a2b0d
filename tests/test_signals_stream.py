"""The event stream against the NATS JetStream server on 127.0.0.1:4222 (issue 17)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from statekit.store import Store

nats = pytest.importorskip("nats")
URL = os.environ.get("STATEKIT_TEST_NATS_URL", "nats://127.0.0.1:4222")


def _reachable() -> bool:
    host, _, port = URL.rpartition("//")[2].partition(":")
    try:
        socket.create_connection((host, int(port or 4222)), 2).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _reachable(), reason=f"no NATS server at {URL} (set STATEKIT_TEST_NATS_URL)")


@pytest.fixture
def stream():
    """A stream and subject of this test's own, deleted afterwards."""
    name = f"T{uuid.uuid4().hex[:12]}"
    yield name, f"test_{name.lower()}"

    async def drop() -> None:
        nc = await nats.connect(URL)
        try:
            await nc.jetstream().delete_stream(name)
        except Exception:
            pass
        await nc.close()

    asyncio.run(drop())


def read_stream(name: str) -> list[tuple[str, str, dict]]:
    """Every message of the stream: (subject, msg id, body), in stream order."""

    async def read() -> list[tuple[str, str, dict]]:
        nc = await nats.connect(URL)
        js = nc.jetstream()
        info = await js.stream_info(name)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(name, seq)
            found.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id"), json.loads(msg.data)))
        await nc.close()
        return found

    return asyncio.run(read())


@pytest.fixture
def short_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's publisher gives up on a refused connection after 0.3 s instead of its 5 s
    (``stream.TIMEOUT``, the bound on nats-py's endless retries): the outages below cost a test
    (and the store's close, which waits for its signals) 5 s otherwise. Subprocesses keep the 5 s."""
    from statekit.signals import stream as stream_module

    monkeypatch.setattr(stream_module, "TIMEOUT", 0.3)


def open_store(tmp_path: Path, stream: tuple[str, str]) -> Store:
    Store.init(tmp_path / "s", "archive").close()
    with open(tmp_path / "s" / "statekit.yaml", "a") as f:
        f.write(f"events:\n  publish: {URL}\n  subject: {stream[1]}\n  stream: {stream[0]}\n")
    return Store.open(tmp_path / "s")


def test_every_committed_event_is_published_in_order(tmp_path: Path, stream: tuple[str, str]) -> None:
    store = open_store(tmp_path, stream)
    store.create("news.daily", "e1")
    store.advance("news.daily", "e1", "downloading")
    store.update("news.daily", "e1", title="Hello")
    store.close()
    got = read_stream(stream[0])
    assert [m[1] for m in got] == ["news.daily/e1/1", "news.daily/e1/2", "news.daily/e1/3"]
    assert [m[0] for m in got] == [f"{stream[1]}.news_daily.create", f"{stream[1]}.news_daily.advance",
                                   f"{stream[1]}.news_daily.update"]
    assert got[1][2]["to_stage"] == "downloading" and got[1][2]["show_id"] == "news.daily"


def test_a_nats_outage_loses_nothing(tmp_path: Path, stream: tuple[str, str],
                                     short_connect: None) -> None:
    store = open_store(tmp_path, stream)
    store.config = store.config.model_copy(update={"events": store.config.events.model_copy(
        update={"publish": "nats://127.0.0.1:1"})})  # nobody there: every publish fails
    store.create("sh", "e1")
    store.advance("sh", "e1", "downloading")
    store.close()
    result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "events", "publish"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # the file names the real server
    assert "2 event(s) published" in result.stdout
    assert [m[1] for m in read_stream(stream[0])] == ["sh/e1/1", "sh/e1/2"]


def test_a_commit_whose_index_write_was_lost_is_still_published(tmp_path: Path, stream: tuple[str, str],
                                                                short_connect: None) -> None:
    """A writer killed between the rename and its index write leaves the index a version behind;
    ``events publish`` mends the index first, so the catch-up (which reads versions from the index)
    publishes that version too."""
    import sqlite3

    store = open_store(tmp_path, stream)
    store.config = store.config.model_copy(update={"events": store.config.events.model_copy(
        update={"publish": "nats://127.0.0.1:1"})})  # nobody there: the hook publishes nothing
    store.create("sh", "e1")
    store.advance("sh", "e1", "downloading")
    store.close()
    with sqlite3.connect(Path(store.root) / ".statekit" / "index.db") as db:  # the index write of version 2, undone
        db.execute("UPDATE episodes SET version = 1, stage = 'new' WHERE episode_id = 'e1'")
        db.execute("DELETE FROM events WHERE episode_id = 'e1' AND version = 2")
    result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "events", "publish"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [m[1] for m in read_stream(stream[0])] == ["sh/e1/1", "sh/e1/2"]


PUBLISHER = textwrap.dedent("""
    import sys
    from statekit.store import Store
    store = Store.open(sys.argv[1])
    for i in range(10_000):
        ep = f"e{i % 4}"
        if i < 4:
            store.create("sh", ep)
        else:
            store.update("sh", ep, title=f"t{i}")
        if i == 40:
            print("going", flush=True)
""")


@pytest.mark.slow
def test_killing_the_publisher_mid_stream_loses_nothing(tmp_path: Path, stream: tuple[str, str]) -> None:
    store = open_store(tmp_path, stream)
    store.close()
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(store.root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "going"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "events", "publish"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    again = Store.open(store.root)
    versions = {ep: again.get("sh", ep).version for ep in ("e0", "e1", "e2", "e3")}
    again.close()
    got = read_stream(stream[0])
    ids = [m[1] for m in got]
    assert len(ids) == len(set(ids)), "JetStream dropped the repeats"
    for ep, version in versions.items():
        mine = [m[2]["version"] for m in got if m[2]["episode_id"] == ep]
        assert mine == list(range(1, version + 1)), ep  # all of them, in order


def test_a_refused_connection_fails_the_publish_instead_of_trying_for_ever(short_connect: None) -> None:
    """nats-py's connect retries a refused connection every 2 s for ever (even with
    max_reconnect_attempts=0): the signals thread hung on it and outlived store.close()."""
    import threading

    from statekit.models import EventsConfig
    from statekit.signals.stream import Publisher

    publisher = Publisher(EventsConfig(publish="nats://127.0.0.1:1"))
    outcome: list[BaseException | None] = []

    def publish() -> None:
        try:
            publisher.publish([{"show_id": "sh", "episode_id": "e1", "version": 1, "kind": "create"}])
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - what it raised is the result
            outcome.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    thread.join(120)  # a bound for a hang, far above the publisher's (here 0.3 s: short_connect)
    assert not thread.is_alive(), "the publish is still trying to connect"
    assert outcome and outcome[0] is not None  # it failed, and said so
