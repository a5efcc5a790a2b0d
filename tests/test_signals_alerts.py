"""Alerts against a real HTTP server on 127.0.0.1 that records what it receives (issue 17)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from statekit.signals.state import State
from statekit.store import Store

pytest.importorskip("apprise")


class Hook:
    """A webhook receiver: the JSON bodies it was sent, in order."""

    def __init__(self, port: int = 0) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(size)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure(root: Path, port: int, threshold: int = 3) -> None:
    with open(root / "statekit.yaml", "a") as f:
        f.write(f"alerts:\n  threshold: {threshold}\n  notify: ['json://127.0.0.1:{port}/hook']\n")


def fail_run(store: Store, ep: str, exc: BaseException | None = None) -> None:
    try:
        store.create("sh", ep)
    except Exception:
        pass
    error = exc or ConnectionError("network down")
    with pytest.raises(type(error)), store.run("sh", ep, "downloading"):
        raise error


def succeed_run(store: Store, ep: str) -> None:
    store.create("sh", ep)
    with store.run("sh", ep, "downloading"):
        pass


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.close()


def open_store(tmp_path: Path, port: int, threshold: int = 3) -> Store:
    Store.init(tmp_path / "s", "archive").close()
    configure(tmp_path / "s", port, threshold)
    return Store.open(tmp_path / "s")


def test_one_alert_per_streak_then_back_to_normal(tmp_path: Path, hook: Hook) -> None:
    store = open_store(tmp_path, hook.port)
    for i in range(6):  # threshold 3: one alert, not four
        fail_run(store, f"e{i}")
    succeed_run(store, "ok")
    store.close()  # waits for the worker
    got = hook.wait(2)
    assert [g["title"] for g in got] == ["statekit: downloading failed 3 times in a row",
                                         "statekit: downloading is back to normal"]
    assert got[0]["type"] == "failure" and got[1]["type"] == "success"
    assert "idempotency key: downloading:sh/e0@3" in got[0]["message"]
    assert "Last error kinds: transient_network" in got[0]["message"]
    assert "Episodes: sh/e0, sh/e1, sh/e2" in got[0]["message"]
    assert "idempotency key: downloading:sh/e0@3/resolved" in got[1]["message"]
    # a new streak gets a new alert, with its own key
    for i in range(3):
        fail_run(store, f"f{i}")
    store.close()
    got = hook.wait(3)
    assert "idempotency key: downloading:sh/f0@3" in got[2]["message"]
    assert len(hook.received) == 3


def test_a_give_up_alerts_at_once(tmp_path: Path, hook: Hook) -> None:
    store = open_store(tmp_path, hook.port, threshold=100)
    for attempt in range(3):  # downloading allows 3 attempts: the third failure gives up
        if attempt:
            store.retry_now("sh", "e1")
        fail_run(store, "e1")
    store.close()
    got = hook.wait(1)
    assert len(got) == 1 and got[0]["title"] == "statekit: gave up on sh/e1 at downloading"
    assert "idempotency key: give_up:sh/e1@" in got[0]["message"]
    assert store.get("sh", "e1").stage == "skipped"


def test_server_down_at_first_is_retried_with_backoff(tmp_path: Path) -> None:
    port = free_port()
    store = open_store(tmp_path, port, threshold=2)
    fail_run(store, "e1")
    fail_run(store, "e2")  # the alert is recorded; nobody listens yet
    store.close()
    state = State(store.root)
    [pending] = state.alerts(pending_only=True)
    assert pending.attempts >= 1 and pending.last_error and pending.next_at > time.time()
    server = Hook(port)  # the receiver comes up
    try:
        # the next process that writes sends it once it is due; 'alerts send' sends it now
        result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "alerts", "send"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "1 alert(s) sent" in result.stdout
        assert [g["title"] for g in server.wait(1)] == ["statekit: downloading failed 2 times in a row"]
        assert state.alerts(pending_only=True) == []
        listing = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "alerts",
                                  "--json"], capture_output=True, text=True, timeout=60)
        [row] = json.loads(listing.stdout)["alerts"]
        assert row["state"] == "sent" and row["attempts"] >= 2
    finally:
        server.close()
        state.close()


def test_read_only_commands_make_no_network_calls(tmp_path: Path, hook: Hook) -> None:
    store = open_store(tmp_path, hook.port, threshold=1)
    store.create("sh", "e1")
    store.close()
    state = State(store.root)
    with state.transaction() as conn:  # an alert waiting to go out
        State.enqueue_in(conn, "k1", "failing", "t", "b", {})
    for args in (["show", "sh/e1"], ["list"], ["status"], ["sql", "select 1"], ["alerts"], ["metrics"]):
        result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (args, result.stderr)
    time.sleep(0.3)
    assert hook.received == []
    assert len(state.alerts(pending_only=True)) == 1
    state.close()


WRITER = textwrap.dedent("""
    import os, sys
    from statekit.store import Store
    from statekit.signals import worker
    worker.Signals._deliver = lambda self, every=False: (0, 0)   # recorded, never sent: then killed
    store = Store.open(sys.argv[1])
    for i in range(3):
        store.create("sh", f"e{i}")
        try:
            with store.run("sh", f"e{i}", "downloading"):
                raise ConnectionError("down")
        except ConnectionError:
            pass
    store.signals.close()
    print("recorded", flush=True)
    os.kill(os.getpid(), 9)
""")


@pytest.mark.slow
def test_a_killed_process_loses_no_alert(tmp_path: Path, hook: Hook) -> None:
    """The process records the alert and is killed before sending it: the next one sends it."""
    store = open_store(tmp_path, hook.port, threshold=3)
    store.close()
    proc = subprocess.run([sys.executable, "-c", WRITER, str(store.root)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL and "recorded" in proc.stdout, proc.stderr
    assert hook.received == []
    again = Store.open(store.root)
    succeed_run(again, "later")  # the next process that writes sends what is due, then "back to normal"
    again.close()
    titles = [g["title"] for g in hook.wait(2)]
    assert titles == ["statekit: downloading failed 3 times in a row", "statekit: downloading is back to normal"]


@pytest.mark.slow
def test_events_missed_by_a_crash_are_caught_up(tmp_path: Path, hook: Hook) -> None:
    """Failures committed while no hook ran (a crash right after the commit) are found from the logs."""
    store = open_store(tmp_path, hook.port, threshold=2)
    store.create("sh", "first")
    store.close()
    plain = Store.open(store.root)
    plain.writer.after_commit.clear()  # as if the process died after each commit
    for i in range(2):
        fail_run(plain, f"e{i}")
    plain.close()
    assert hook.received == []
    result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "alerts", "send"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [g["title"] for g in hook.wait(1)] == ["statekit: downloading failed 2 times in a row"]
    again = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "alerts", "send"],
                           capture_output=True, text=True, timeout=60)
    assert "0 alert(s) sent" in again.stdout
    assert len(hook.received) == 1  # never twice


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    Store.init(tmp_path / "s", "archive").close()
    with open(tmp_path / "s" / "statekit.yaml", "a") as f:
        f.write("alerts:\n  threshold: 0\n  notify: []\n")
    result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(tmp_path / "s"), "status"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "alerts" in result.stderr
    assert not os.path.exists(tmp_path / "s" / ".statekit" / "signals.db")


def test_alerts_send_without_config_is_one_line(tmp_path: Path) -> None:
    Store.init(tmp_path / "s", "archive").close()
    result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(tmp_path / "s"), "alerts", "send"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no alerts configured" in result.stderr and "Traceback" not in result.stderr
