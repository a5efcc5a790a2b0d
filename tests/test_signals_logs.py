"""--log-format json / STATEKIT_LOG_FORMAT: one JSON object per log line (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statekit.store import Store

pytest.importorskip("pythonjsonlogger")


def failing_store(tmp_path: Path) -> Path:
    store = Store.init(tmp_path / "s", "archive")
    store.create("sh", "e1")
    store.close()
    return tmp_path / "s"




def run_cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    # a run that fails logs a warning with its context: 'sql' on an unindexed write is simpler,
    # so make the index unwritable for one write and let the write path log it
    return subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(root), *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def break_index(root: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(root / ".statekit" / "index.db")
    conn.execute("CREATE TRIGGER stop BEFORE UPDATE ON episodes BEGIN SELECT RAISE(ABORT, 'no'); END")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("how", ["option", "env"])
def test_json_log_lines(tmp_path: Path, how: str) -> None:
    root = failing_store(tmp_path)
    break_index(root)
    args = ["--log-format", "json", "advance", "sh/e1", "downloading"] if how == "option" else \
        ["advance", "sh/e1", "downloading"]
    result = run_cli(root, *args, env={"STATEKIT_LOG_FORMAT": "json"} if how == "env" else None)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert lines and all(line["level"] == "WARNING" and line["logger"] == "statekit" for line in lines)
    assert "the index missed sh/e1 version 2" in lines[0]["message"]


def test_context_fields_become_json_fields(tmp_path: Path) -> None:
    """A failed run's log record carries show, episode, stage, run id and error kind as fields."""
    import logging

    from statekit.signals.logs import json_formatter

    store = Store.init(tmp_path / "s", "archive")
    store.create("sh", "e1")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("statekit").addHandler(handler)
    try:
        with pytest.raises(ConnectionError), store.run("sh", "e1", "downloading"):
            raise ConnectionError("down")
    finally:
        logging.getLogger("statekit").removeHandler(handler)
    line = json.loads(json_formatter().format(records[-1]))
    assert line["show_id"] == "sh" and line["episode_id"] == "e1" and line["stage"] == "downloading"
    assert line["kind"] == "transient_network" and line["run_id"] and line["level"] == "WARNING"


def test_default_stays_one_readable_line(tmp_path: Path) -> None:
    root = failing_store(tmp_path)
    break_index(root)
    result = run_cli(root, "advance", "sh/e1", "downloading")
    assert result.stderr.startswith("statekit: the index missed sh/e1 version 2")


def test_bad_log_format_is_one_line(tmp_path: Path) -> None:
    root = failing_store(tmp_path)
    result = run_cli(root, "list", env={"STATEKIT_LOG_FORMAT": "xml"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("statekit: error: log format 'xml' is not one of text, json "
                                     "(--log-format or $STATEKIT_LOG_FORMAT) (hint: nothing was changed)")
