"""Reports: exact numbers from a store driven through its stages with an
injected clock, every format parsed back, the CLI, and the HTML page
rendered by a real headless browser."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import zlib
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from statekit import Store, ValidationError
from statekit.cli import main
from statekit.errors import ShowNotFoundError, StorageError
from statekit.pipeline import ARCHIVE
from statekit.report import FORMAT_VERSION, Report, build_report, render, write_report

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
EVIL = "<script>alert('x')</script> & co"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, day: int, hour: int = 10) -> None:
        self.now = datetime(2026, 11, day, hour, tzinfo=timezone.utc)


def walk(store: Store, show: str, ep: str, *, cost: float = 1.0) -> None:
    """Through every worker stage to published, each run costing something."""
    for stage, share in (("downloading", 0.5), ("converting", 1.0), ("uploading", 0.25)):
        with store.run(show, ep, stage) as run:
            run.cost(share * cost)
    store.advance(show, ep, "scheduled")
    store.advance(show, ep, "published")


def fail(store: Store, show: str, ep: str, stage: str, exc: BaseException) -> None:
    with store.run(show, ep, stage, reraise=False):
        raise exc


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Two shows, nine episodes, a week of work (2026-11-15 .. 2026-11-21):

    oliver  o1 published 11-16, o2 published 11-18 (1.75 each), o5 skipped by
            hand 11-18, o3 failed 11-20 (network, retry due), o4 never started
    hooting h1 held 11-19 (bad input), h2 downloaded 11-19 and untouched since
            (stuck), h3 given up 11-20 after 3 network failures, h4's worker
            died 11-21 11:00 (lease of 10 min expired), 0.2 per download
    """
    clock = Clock(datetime(2026, 11, 15, 9, tzinfo=timezone.utc))
    config = ARCHIVE.to_config()
    config["retry"] = {**config["retry"], "jitter": 0.0}
    s = Store.init(tmp_path_factory.mktemp("report") / "store", pipeline=config, clock=clock)
    s.create_show("oliver", title="Oliver's Travels")
    for ep in ("o1", "o2", "o3", "o4", "o5"):
        s.create("oliver", ep, title="Journey to the Stars" if ep == "o1" else f"Episode {ep}")
    for ep in ("h1", "h2", "h3", "h4"):
        s.create("hooting", ep, title=EVIL if ep == "h1" else f"Hooting {ep}")
    clock.at(16)
    walk(s, "oliver", "o1", cost=1.0)
    clock.at(18)
    walk(s, "oliver", "o2", cost=1.0)
    clock.at(18, 11)
    s.advance("oliver", "o5", "skipped", message="not worth it")
    clock.at(19)
    for ep in ("h1", "h2"):
        with s.run("hooting", ep, "downloading") as run:
            run.cost(0.2)
    fail(s, "hooting", "h1", "converting", ValueError("bad sample rate"))
    clock.at(20)
    fail(s, "oliver", "o3", "downloading", ConnectionError("connection reset by peer"))
    for _ in range(3):
        fail(s, "hooting", "h3", "downloading", ConnectionError("archive.org unreachable"))
        clock.now += timedelta(hours=1)
    clock.at(21, 11)
    s.run("hooting", "h4", "downloading", lease_seconds=600).__enter__()  # the worker dies inside
    clock.now = NOW
    return s


@pytest.fixture(scope="module")
def report(store: Store) -> Report:
    return build_report(store, days=7, now=NOW)


@pytest.fixture(scope="module")
def data(report: Report) -> dict[str, Any]:
    return json.loads(render(report, "json"))


def by_show(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["show_id"]: s for s in data["shows"]}


# --- the numbers -------------------------------------------------------------------------


def test_counts_and_completion(data: dict[str, Any]) -> None:
    assert data["format_version"] == FORMAT_VERSION == 1
    assert data["generated_at"] == "2026-11-21T12:00:00Z"
    assert data["scope"] == {"show": None, "days": 7, "start": "2026-11-15", "end": "2026-11-21",
                             "stuck_after_hours": 24.0}
    assert data["pipeline"]["terminal"] == ["published", "skipped"]
    total = data["totals"]
    assert total["show_id"] is None
    assert total["stages"] == {"discovered": 1, "downloading": 1, "downloaded": 1, "converting": 0, "converted": 0,
                               "uploading": 0, "uploaded": 0, "scheduled": 0, "failed": 2, "published": 2,
                               "skipped": 2}
    assert (total["episodes"], total["done"], total["skipped"], total["succeeded"], total["remaining"]) == \
        (9, 4, 2, 2, 5)
    assert (total["completion_pct"], total["succeeded_pct"]) == (44.4, 22.2)
    shows = by_show(data)
    assert list(shows) == ["hooting", "oliver"]
    assert shows["oliver"]["title"] == "Oliver's Travels" and shows["hooting"]["title"] == "hooting"
    o, h = shows["oliver"], shows["hooting"]
    assert (o["episodes"], o["done"], o["skipped"], o["remaining"], o["completion_pct"], o["succeeded_pct"]) == \
        (5, 3, 1, 2, 60.0, 40.0)
    assert (h["episodes"], h["done"], h["skipped"], h["remaining"], h["completion_pct"], h["succeeded_pct"]) == \
        (4, 1, 1, 3, 25.0, 0.0)


def test_failures_and_error_kinds(data: dict[str, Any]) -> None:
    total, shows = data["totals"], by_show(data)
    assert (total["failures"], total["episodes_with_failures"], total["failure_rate_pct"]) == (5, 3, 33.3)
    assert total["error_kinds"] == [{"kind": "transient_network", "count": 4},
                                    {"kind": "user_input_invalid", "count": 1}]
    h = shows["hooting"]
    assert (h["failures"], h["episodes_with_failures"], h["failure_rate_pct"]) == (4, 2, 50.0)
    assert h["error_kinds"] == [{"kind": "transient_network", "count": 3}, {"kind": "user_input_invalid", "count": 1}]
    assert shows["oliver"]["error_kinds"] == [{"kind": "transient_network", "count": 1}]


def test_costs_per_show_and_stage(data: dict[str, Any]) -> None:
    total, shows = data["totals"], by_show(data)
    assert total["cost_total"] == 3.9
    assert total["cost_by_stage"] == {"downloading": 1.4, "converting": 2.0, "uploading": 0.5}
    assert shows["oliver"]["cost_total"] == 3.5 and shows["hooting"]["cost_by_stage"] == {"downloading": 0.4}


def test_throughput_per_day_and_estimated_completion(data: dict[str, Any]) -> None:
    total, shows = data["totals"], by_show(data)
    assert [(d["date"], d["completed"]) for d in total["throughput"]] == [
        ("2026-11-15", 0), ("2026-11-16", 1), ("2026-11-17", 0), ("2026-11-18", 2), ("2026-11-19", 0),
        ("2026-11-20", 1), ("2026-11-21", 0)]
    assert total["throughput"][3]["by_stage"] == {"published": 1, "skipped": 1}
    assert total["completed_in_window"] == 4
    # 4 finished from 11-16 (the earliest active day) through 11-21: 6 days, 2/3 a day; 5 left: 7.5 -> 8 days
    assert total["estimate"] == {"status": "estimated", "date": "2026-11-29", "rate_per_day": 0.667,
                                 "basis_from": "2026-11-16", "basis_to": "2026-11-21", "basis_completed": 4,
                                 "active_days": 3}
    # oliver: 3 in 6 days, 2 left -> 4 days; hooting: 1 in 2 days (11-20, 11-21), 3 left -> 6 days
    assert shows["oliver"]["estimate"]["date"] == "2026-11-25" and shows["oliver"]["estimate"]["rate_per_day"] == 0.5
    assert shows["hooting"]["estimate"]["date"] == "2026-11-27"


def test_estimate_is_unknown_without_throughput_and_done_when_nothing_is_left(store: Store, tmp_path: Path) -> None:
    quiet = build_report(store, days=7, now=NOW + timedelta(days=30))  # the window holds no finished episode
    assert quiet.totals.estimate.status == "unknown" and quiet.totals.estimate.date is None
    assert "unknown" in render(quiet, "text")
    one = build_report(store, show="oliver", days=1, now=datetime(2026, 11, 18, 23, tzinfo=timezone.utc))
    assert one.totals.completed_in_window == 2 and one.totals.estimate.rate_per_day == 2.0
    assert one.totals.estimate.date == date(2026, 11, 19)  # the 2 left today (counts are always the current ones)
    small = Store.init(tmp_path / "small")
    small.create("s", "e")
    small.advance("s", "e", "skipped")
    finished = build_report(small).totals
    assert (finished.estimate.status, finished.completion_pct, finished.succeeded_pct) == ("done", 100.0, 0.0)
    empty = build_report(Store.init(tmp_path / "empty"))
    assert empty.shows == [] and empty.totals.episodes == 0 and empty.totals.estimate.status == "done"
    assert "No shows yet" in render(empty, "html") and "needs attention: 0" in render(empty, "text")


def test_failed_and_stuck_episodes_need_attention(data: dict[str, Any]) -> None:
    got = [(a["show_id"], a["episode_id"], a["reason"], a["since"][:16]) for a in data["attention"]]
    assert got == [
        ("hooting", "h4", "lease_expired", "2026-11-21T11:10"),
        ("hooting", "h1", "held", "2026-11-19T10:00"),
        ("oliver", "o3", "failed", "2026-11-20T10:00"),
        ("hooting", "h2", "stuck", "2026-11-19T10:00"),
        ("hooting", "h3", "gave_up", "2026-11-20T12:00"),
    ]  # o4 waits in the first stage: a backlog, not stuck
    held = data["attention"][1]
    assert held["title"] == EVIL and held["last_error_kind"] == "user_input_invalid" and held["error_count"] == 1
    assert "bad sample rate" in held["message"]
    assert data["attention_counts"] == {"lease_expired": 1, "held": 1, "failed": 1, "stuck": 1, "gave_up": 1}
    assert (data["attention_total"], data["attention_truncated"]) == (5, False)


def test_a_long_attention_list_is_cut_to_the_most_urgent_items(store: Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the items listed are made (a large store may have thousands); all are counted."""
    from statekit.report import compute

    full = build_report(store, days=7, now=NOW)
    monkeypatch.setattr(compute, "ATTENTION_LIMIT", 2)
    cut = build_report(store, days=7, now=NOW)
    assert cut.attention == full.attention[:2] and len(full.attention) == 5
    assert (cut.attention_total, cut.attention_truncated, cut.attention_counts) == (5, True, full.attention_counts)


def test_one_show(store: Store) -> None:
    only = json.loads(render(build_report(store, show="oliver", days=7, now=NOW), "json"))
    assert [s["show_id"] for s in only["shows"]] == ["oliver"] and only["scope"]["show"] == "oliver"
    assert only["totals"]["episodes"] == 5 and only["totals"]["title"] == "Oliver's Travels"
    assert [a["episode_id"] for a in only["attention"]] == ["o3"]


def test_bad_arguments(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ShowNotFoundError):
        build_report(store, show="nosuch")
    for days in (0, -1, 1.5, True):
        with pytest.raises(ValidationError):
            build_report(store, days=days)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown report format"):
        render(build_report(store), "pdf")
    with pytest.raises(ValidationError):
        write_report(store, tmp_path / "r.pdf", "pdf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError):
        write_report(store, tmp_path / "file" / "r.html")


def test_progress_is_reported(store: Store) -> None:
    calls: list[tuple[int, int]] = []
    build_report(store, days=7, now=NOW, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 9) and calls[-1] == (9, 9)  # 5 episodes looked at closely, 4 moves into a terminal stage


# --- the formats -------------------------------------------------------------------------


def test_csv_is_one_tidy_table(report: Report) -> None:
    text = render(report, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["section", "show_id", "episode_id", "stage", "date", "key", "value"]
    for row in rows:  # value: a number or empty; date: ISO or empty
        assert row["value"] == "" or float(row["value"]) is not None
        assert row["date"] == "" or date.fromisoformat(row["date"])

    def value(section: str, show: str, key: str, **where: str) -> str:
        found = [r["value"] for r in rows if (r["section"], r["show_id"], r["key"]) == (section, show, key)
                 and all(r[k] == v for k, v in where.items())]
        assert len(found) == 1, (section, show, key, where, found)
        return found[0]

    assert value("summary", "*", "episodes") == "9" and value("summary", "oliver", "completion_pct") == "60.0"
    assert value("stage", "*", "episodes", stage="failed") == "2"
    assert value("stage", "hooting", "cost", stage="downloading") == "0.4"
    assert value("error_kind", "*", "transient_network") == "4"
    assert value("throughput", "*", "completed", stage="skipped", date="2026-11-18") == "1"
    assert value("estimate", "*", "estimated", date="2026-11-29") == "0.667"
    assert value("attention", "hooting", "stuck", episode_id="h2", stage="downloaded", date="2026-11-19") == "50.0"

    db = sqlite3.connect(":memory:")  # loads into SQLite as it is
    db.execute("CREATE TABLE report (section, show_id, episode_id, stage, date, key, value REAL)")
    db.executemany("INSERT INTO report VALUES (?, ?, ?, ?, ?, ?, NULLIF(?, ''))",
                   [tuple(r.values()) for r in rows])
    assert db.execute("SELECT SUM(value) FROM report WHERE section = 'throughput' AND show_id != '*'").fetchone() \
        == (4.0,)


def test_text(report: Report) -> None:
    text = render(report, "text")
    assert "ALL SHOWS" in text and "show oliver: Oliver's Travels" in text
    assert "9: 4 done (44.4%), of which 2 skipped; 2 succeeded (22.2%); 5 remaining" in text
    assert "5 in 3 episode(s) (33.3% of episodes); top kinds: transient_network 4, user_input_invalid 1" in text
    assert "cost           3.9 (downloading 1.4, converting 2, uploading 0.5)" in text
    assert "estimated      2026-11-29 (at 0.667/day since 2026-11-16" in text
    assert "hooting/h4  downloading  lease_expired for 50m" in text


class Balance(HTMLParser):
    """Checks that every element is closed in order (void elements excepted)."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: Counter[str] = Counter()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_well_formed_self_contained_and_escaped(report: Report) -> None:
    page = render(report, "html")
    parser = Balance()
    parser.feed(page)
    parser.close()
    assert parser.problems == [] and parser.stack == []
    assert parser.tags["svg"] == 3 and parser.tags["table"] >= 3 and parser.tags["script"] == 0
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert EVIL in "".join(parser.text)  # shown to the reader as the text it is
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|@import|url\(""", page)  # nothing fetched
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):  # each chart is well-formed XML with accessible text
        root = ElementTree.fromstring(svg)
        assert root.get("role") == "img" and root.get("aria-labelledby")
        ns = "{http://www.w3.org/2000/svg}"
        assert root.find(f"{ns}title") is not None and root.find(f"{ns}desc") is not None
        assert root.findall(f".//{ns}rect") and root.findall(f".//{ns}title")[1:], "bars with tooltips"
    assert "2026-11-18: 2 finished (1 published, 1 skipped)" in page


def test_write_report_is_atomic_and_returns_the_path(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    path = write_report(store, target, now=NOW, days=7)
    assert path == str(target) and target.read_text().startswith("<!DOCTYPE html>")
    assert os.listdir(target.parent) == ["report.html"]  # no temp file left behind
    assert target.stat().st_mode & 0o777 == 0o644
    assert json.loads(Path(write_report(store, tmp_path / "r.json", "json", now=NOW)).read_text())[
        "totals"]["episodes"] == 9


# --- the command line ----------------------------------------------------------------------


def cli(store: Store, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(main, ["--root", store.root, "report", *args], catch_exceptions=False)
    assert result.exit_code == code, (args, result.output)
    assert "Traceback" not in result.output
    return result


def test_cli_report_formats(store: Store, tmp_path: Path) -> None:
    assert json.loads(cli(store, "--format", "json", "--days", "7").stdout)["totals"]["episodes"] == 9
    assert "ALL SHOWS" in cli(store).stdout
    assert cli(store, "--format", "csv", "--show", "oliver").stdout.startswith("section,show_id,")
    out = tmp_path / "weekly.html"
    said = cli(store, "-o", str(out)).stdout  # the format follows the suffix
    assert f"wrote html report to {out}" in said and out.read_text().startswith("<!DOCTYPE html>")
    assert os.listdir(tmp_path) == ["weekly.html"]
    cli(store, "-o", str(tmp_path / "r.data"), "--format", "json")
    assert json.loads((tmp_path / "r.data").read_text())["format_version"] == 1


@pytest.mark.parametrize(("args", "says"), [
    (["--format", "pdf"], "'pdf' is not one of"),
    (["--show", "nosuch"], "show 'nosuch' not found"),
    (["--show", "../x"], "show id"),
    (["--days", "0"], "--days"),
    (["--stuck-after", "soon"], "expected an age"),
    (["-o", "{file}/report.html"], "could not write"),
])
def test_cli_user_errors_are_one_line(store: Store, tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "file").write_text("x")
    result = cli(store, *(a.format(file=tmp_path / "file") for a in args), code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("statekit: error:") and says in lines[0], result.stderr


# --- a real browser ------------------------------------------------------------------------


def png_pixels(raw: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit PNG (stdlib only)."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    data = zlib.decompress(b"".join(chunks))
    low, high = int("7f" * stride, 16), int("80" * stride, 16)
    rows, prev = [], bytes(stride)
    for y in range(height):
        kind, line = data[y * (stride + 1)], bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 2:  # Up, byte-wise modulo 256 on whole rows at once
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            line = bytearray((((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(stride, "big"))
        elif kind in (1, 3, 4):
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
                if kind == 1:
                    line[i] = (line[i] + left) & 255
                elif kind == 3:
                    line[i] = (line[i] + (left + up) // 2) & 255
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        prev = rows[-1]
    return width, height, rows


def test_the_html_report_renders_in_a_headless_browser(store: Store, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no browser: chromium is not installed (apt-get install chromium; .ci/run installs it)")
    page = Path(write_report(store, tmp_path / "report.html", now=NOW, days=14))
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]  # script errors, blocked loads
    assert console == [], console
    dom = done.stdout
    assert dom.count("<svg") == 3 and dom.count("<rect") > 10 and "<script" not in dom
    assert "&lt;script&gt;alert('x')&lt;/script&gt; &amp; co" in dom

    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    bpp = len(rows[0]) // width
    colours = Counter(row[x:x + 3] for row in rows[::8] for x in range(0, len(row), bpp * 8))
    assert len(colours) > 20, "the page is blank or one colour"
    assert colours.most_common(1)[0][1] < 0.9 * sum(colours.values())
    assert any(r < 60 and g < 60 and b < 60 for r, g, b in colours), "no dark text"
    assert any(g > r + 40 and g > b for r, g, b in colours), "no green bar (finished episodes)"
    assert any(r > g + 60 and r > b + 60 for r, g, b in colours), "no red bar (failed episodes)"
    if os.environ.get("STATEKIT_KEEP_SCREENSHOT"):  # to look at it: STATEKIT_KEEP_SCREENSHOT=/tmp/report.png
        shutil.copy(shot, os.environ["STATEKIT_KEEP_SCREENSHOT"])
