"""Scheduled reports (issue 18, part 2): ``statekit report --daily|--weekly`` writes
``reports/<period>_report_<day>.<ext>`` and ``reports/summary.json`` into the store,
atomically and once per day (week); ``reporting:`` and ``retention:`` in
statekit.yaml are checked with one clear line; ``statekit serve`` runs the daily
report and compaction on schedule (``statekit.scheduled``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import Store
from statekit.cli import main
from statekit.scheduled import Scheduler

from .test_retention import age, finish


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.output)
    assert "Traceback" not in result.output
    return result.output


def configure(root: Path | str, text: str) -> None:
    with open(Path(root, "statekit.yaml"), "a") as f:
        f.write(text)


@pytest.fixture
def filled(tmp_path: Path) -> Store:
    store = Store.init(tmp_path / "store", ledger=True)
    finish(store, "s", "a")
    finish(store, "s", "b", checkpoint=False)
    store.create("s", "c")
    store.advance("s", "c", "downloading")
    return store


def reports(store: Store) -> list[str]:
    return sorted(os.listdir(Path(store.root, "reports")))


def test_report_daily_writes_the_days_report_and_the_summary(filled: Store) -> None:
    root = str(filled.root)
    out = cli("--root", root, "report", "--daily")
    day = filled.clock().astimezone(timezone.utc).date().isoformat()
    assert out.startswith(f"wrote daily report to {root}/reports/daily_report_{day}.html")
    assert reports(filled) == [f"daily_report_{day}.html", "summary.json"]
    page = Path(root, "reports", f"daily_report_{day}.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "published" in page
    summary = json.loads(Path(root, "reports", "summary.json").read_text())
    assert summary["period"] == "daily" and summary["report"] == f"reports/daily_report_{day}.html"
    assert summary["total_episodes"] == 3 and summary["progress"]["published"] == 2
    assert summary["progress"]["downloading"] == 1 and summary["done"] == 2
    assert summary["completion_percentage"] == pytest.approx(66.7)
    assert summary["shows"]["s"]["episodes"] == 3
    # idempotent per day: a second run replaces that day's file (atomically: no temp file left)
    first = summary["generated_at"]
    filled.advance("s", "c", "downloaded")
    cli("--root", root, "report", "--daily")
    assert reports(filled) == [f"daily_report_{day}.html", "summary.json"]
    again = json.loads(Path(root, "reports", "summary.json").read_text())
    assert again["generated_at"] > first and again["progress"]["downloaded"] == 1


def test_report_weekly_and_the_configured_format(filled: Store) -> None:
    root = str(filled.root)
    configure(root, "reporting: {generate_weekly: true, report_format: json}\n")
    cli("--root", root, "report", "--weekly")
    year, week, _ = filled.clock().astimezone(timezone.utc).date().isocalendar()
    name = f"weekly_report_{year}-W{week:02d}.json"
    assert reports(filled) == ["summary.json", name]
    data = json.loads(Path(root, "reports", name).read_text())
    assert data["scope"]["days"] == 91 and data["totals"]["episodes"] == 3
    cli("--root", root, "report", "--daily", "--format", "csv")  # --format wins over the configured one
    assert any(n.startswith("daily_report_") and n.endswith(".csv") for n in reports(filled))


def test_report_daily_refuses_an_output_file(filled: Store) -> None:
    result = CliRunner().invoke(main, ["--root", str(filled.root), "report", "--daily", "-o", "x.html"])
    assert result.exit_code == 2 and "leave out -o" in result.output
    assert not Path(filled.root, "reports").exists()


@pytest.mark.parametrize("text, words", [
    ("reporting: {report_format: pdf}", "reporting: report_format must be one of html, json, csv, text"),
    ("reporting: {generate_daly: true}", "reporting.generate_daly"),
    ("reporting: {at: '25:00'}", "reporting.at: expected a time of day as HH:MM"),
    ("reporting: {generate_daily: maybe}", "reporting.generate_daily"),
    ("retention: {older_than: soon}", "retention.older_than: expected an age such as '30d'"),
    ("retention: {older_than: 0d}", "retention.older_than"),
    ("retention: {compress_old: 1}", "retention.compress_old"),
    ("retention: [30d]", "retention"),
])
def test_bad_reporting_and_retention_settings_are_one_line(filled: Store, text: str, words: str) -> None:
    root = str(filled.root)
    configure(root, text + "\n")
    before = Path(root, "statekit.yaml").read_bytes()
    for command in (["status"], ["report", "--daily"], ["compact"]):
        result = CliRunner().invoke(main, ["--root", root, *command])
        assert result.exit_code == 2, (command, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "statekit.yaml:" in lines[0] and words in lines[0], lines
    assert Path(root, "statekit.yaml").read_bytes() == before
    assert not Path(root, "reports").exists()


def test_new_stores_do_not_write_the_sections(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    text = Path(store.root, "statekit.yaml").read_text()
    assert "reporting" not in text and "retention" not in text


# --- the scheduler ------------------------------------------------------------------------


def at(day: int, hh: int, mm: int) -> datetime:
    return datetime(2026, 3, day, hh, mm, tzinfo=timezone.utc)


def test_nothing_is_scheduled_without_the_sections(filled: Store) -> None:
    assert Scheduler(filled).due(at(2, 12, 0)) == []


def test_what_is_due_when(filled: Store) -> None:
    configure(filled.root, "reporting: {generate_weekly: true, at: '06:30'}\nretention: {compress_old: true}\n")
    store = Store.open(filled.root)
    jobs = Scheduler(store)
    assert jobs.due(at(2, 6, 0)) == ["compact"]  # before 06:30: only the compaction a server starts with
    assert jobs.run_due(at(2, 6, 0)) == ["compact"]
    assert jobs.due(at(2, 6, 29)) == []  # compacted today already
    assert jobs.due(at(2, 6, 30)) == ["daily", "weekly"]
    assert jobs.run_due(at(2, 6, 30)) == ["daily", "weekly"]
    assert reports(store) == ["daily_report_2026-03-02.html", "summary.json", "weekly_report_2026-W10.html"]
    assert jobs.due(at(2, 23, 59)) == []  # written for the day (and the week)
    assert jobs.due(at(3, 6, 0)) == []  # the next day, before 06:30
    assert jobs.due(at(3, 6, 31)) == ["daily", "compact"]  # same ISO week: no new weekly report
    assert jobs.due(at(9, 7, 0)) == ["daily", "weekly", "compact"]  # Monday of week 11
    # a report cron already wrote is not written twice
    cli("--root", str(store.root), "report", "--daily")
    today = store.clock().astimezone(timezone.utc)
    assert "daily" not in jobs.due(today.replace(hour=23, minute=59))


def test_the_scheduler_compacts_and_reports(filled: Store) -> None:
    configure(filled.root, "reporting: {report_format: json}\nretention: {compress_old: true, older_than: 30d}\n")
    age(filled.root)
    store = Store.open(filled.root)
    jobs = Scheduler(store, poll=0.05).start()
    try:
        deadline = time.monotonic() + 30
        while len(jobs.ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        jobs.stop()
    assert sorted(job for job, _when in jobs.ran) == ["compact", "daily"]
    assert Path(store.root, "shows/s/episodes/a/events.jsonl.gz").exists()
    assert Path(store.root, "shows/s/episodes/c/events.jsonl").exists()  # not finished
    assert any(n.startswith("daily_report_") and n.endswith(".json") for n in reports(store))


def test_a_failing_job_is_logged_and_tried_again(filled: Store, caplog: pytest.LogCaptureFixture) -> None:
    configure(filled.root, "reporting: {}\n")
    store = Store.open(filled.root)
    Path(store.root, "reports").write_text("not a folder")
    jobs = Scheduler(store)
    assert jobs.run_due(at(2, 12, 0)) == []
    assert "scheduled daily failed" in caplog.text
    os.unlink(Path(store.root, "reports"))
    assert jobs.run_due(at(2, 12, 1)) == ["daily"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_statekit_serve_writes_the_daily_report_and_compacts(filled: Store) -> None:
    """A real 'statekit serve': on start it writes the day's report (the configured
    time is past) and compacts what is old, while it serves /healthz."""
    pytest.importorskip("uvicorn")
    configure(filled.root, "reporting: {at: '00:00'}\nretention: {compress_old: true}\n")
    age(filled.root)
    filled.close()
    proc = subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", str(filled.root), "serve", "--port",
                             str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        day = datetime.now(timezone.utc).date().isoformat()
        wanted = [Path(filled.root, "reports", f"daily_report_{day}.html"),
                  Path(filled.root, "shows/s/episodes/a/events.jsonl.gz")]
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in wanted) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert all(p.exists() for p in wanted), (proc.poll(), [p.exists() for p in wanted])
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
    check = Store.open(filled.root)
    assert check.verify().problems == []
    assert len(check.events("s", "a")) == 10


def test_scheduler_clock_default_is_the_stores(filled: Store) -> None:
    moments = iter([at(2, 12, 0)])
    configure(filled.root, "reporting: {}\n")
    store = Store.open(filled.root)
    jobs = Scheduler(store, clock=lambda: next(moments))
    assert jobs.run_due() == ["daily"]
    assert reports(store) == ["daily_report_2026-03-02.html", "summary.json"]
