"""Reports, byte for byte: every format of a few fixed reports against the
files in ``tests/golden/report/``.

The store is driven through its stages with an injected clock, so every
number and time in the report is fixed; only the store's path (a temporary
folder) and statekit's version are set to constants before rendering.

After an intended change to a format, rewrite the files and read the diff:

    STATEKIT_REGOLD=1 .venv/bin/python -m pytest tests/test_report_golden.py
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from statekit import Store
from statekit.pipeline import ARCHIVE
from statekit.report import FORMATS, Report, build_report, render

GOLDEN = Path(__file__).parent / "golden" / "report"
REGOLD = os.environ.get("STATEKIT_REGOLD") == "1"
NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=timezone.utc)
UNICODE = "Café Ünïcode — 日本語 🎧"
SPECIAL = "<b>\"Tom\" & 'Jerry'</b> </script>"
LONG = "line one of a long story\n" + " ".join(f"word{i}" for i in range(80))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, day: int, hour: int = 10, minute: int = 0) -> None:
        self.now = datetime(2026, 3, day, hour, minute, tzinfo=timezone.utc)


def walk(store: Store, show: str, ep: str, costs: tuple[float, float, float], end: str = "published") -> None:
    for stage, cost in zip(("downloading", "converting", "uploading"), costs, strict=True):
        with store.run(show, ep, stage) as run:
            if cost:
                run.cost(cost)
    store.advance(show, ep, "scheduled")
    store.advance(show, ep, end)


def fail(store: Store, show: str, ep: str, stage: str, exc: BaseException) -> None:
    with store.run(show, ep, stage, reraise=False):
        raise exc


def build_store(root: Path) -> Store:
    """Three shows over a fortnight (2026-03-01 .. 03-14), one terminal stage
    added to the archive pipeline (``withdrawn``) so the throughput chart has
    three colours:

    caf (unicode title)  c1..c4 published on 03-02, 03-05, 03-09, 03-13 (costs
        with cents, one large), c5 withdrawn 03-10, c6 skipped by hand, c7 failed
        03-13 (network, retry due), c8 never started
    tom (HTML title)     t1 held 03-12 (bad input, a long message), t2 stuck in
        downloaded since 03-11, t3 given up 03-12 after 3 timeouts, t4's worker
        died 03-14 15:00 (lease expired), t5 published 03-14
    empty                a show with no episodes
    """
    clock = Clock(datetime(2026, 3, 1, 9, tzinfo=timezone.utc))
    config = ARCHIVE.to_config()
    config["retry"] = {**config["retry"], "jitter": 0.0}
    config["terminal"] = [*config["terminal"], "withdrawn"]
    config["stages"] = {**config["stages"], "scheduled": ["published", "withdrawn"], "withdrawn": []}
    s = Store.init(root, pipeline=config, clock=clock)
    s.create_show("caf", title=UNICODE)
    s.create_show("tom", title=SPECIAL)
    s.create_show("empty", title="Nothing here yet")
    for i in range(1, 9):
        s.create("caf", f"c{i}", title=f"{UNICODE} #{i}" if i % 2 else f"Épisode {i}")
    for i in range(1, 6):
        s.create("tom", f"t{i}", title=SPECIAL if i == 1 else f"Tom & Jerry <{i}>")
    clock.at(2)
    walk(s, "caf", "c1", (0.1, 0.2, 0.0))
    clock.at(5)
    walk(s, "caf", "c2", (1.2345, 1234.5, 0.333))
    clock.at(9, 23, 59)
    walk(s, "caf", "c3", (0.5, 0.5, 0.5))
    clock.at(10)
    walk(s, "caf", "c5", (0.01, 0.02, 0.03), end="withdrawn")
    s.advance("caf", "c6", "skipped", message="duplicate of c2 — déjà vu")
    clock.at(11)
    with s.run("tom", "t2", "downloading") as run:
        run.cost(0.25)
    clock.at(12)
    with s.run("tom", "t1", "downloading") as run:
        run.cost(0.25)
    fail(s, "tom", "t1", "converting", ValueError(LONG))
    for _ in range(3):
        fail(s, "tom", "t3", "downloading", TimeoutError("archive.org <timed out> & gave up"))
        clock.now += timedelta(hours=2)
    clock.at(13)
    walk(s, "caf", "c4", (2.0, 2.0, 2.0))
    fail(s, "caf", "c7", "downloading", ConnectionError("connection reset by peer"))
    clock.at(14, 9)
    walk(s, "tom", "t5", (0.0, 0.0, 0.0))
    clock.at(14, 15)
    s.run("tom", "t4", "downloading", lease_seconds=300).__enter__()  # the worker dies inside
    clock.now = NOW
    return s


def fixed(report: Report) -> Report:
    return report.model_copy(update={"store": "/srv/media/état <store>", "statekit_version": "0.0.golden"})


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Report]:
    s = build_store(tmp_path_factory.mktemp("golden") / "store")
    empty = Store.init(tmp_path_factory.mktemp("golden-empty") / "store", clock=lambda: NOW)
    everything = build_report(s, days=14)
    return {
        "all": fixed(everything),
        "month": fixed(build_report(s, days=30, stuck_after=timedelta(hours=36))),
        "show": fixed(build_report(s, show="tom", days=7)),
        "empty": fixed(build_report(empty, days=7)),
        # render only: the first two of the attention list, as if the rest were cut at the limit
        "truncated": fixed(everything).model_copy(update={"attention": everything.attention[:2],
                                                          "attention_truncated": True}),
    }


NAMES = ("all", "month", "show", "empty", "truncated")
SUFFIX = {"text": "txt", "json": "json", "csv": "csv", "html": "html"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_render_matches_golden(reports: dict[str, Report], name: str, fmt: str) -> None:
    got = render(reports[name], fmt).encode("utf-8")
    path = GOLDEN / f"{name}.{SUFFIX[fmt]}"
    if REGOLD:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(got)
    assert path.exists(), f"no golden file {path}: run with STATEKIT_REGOLD=1 to write it"
    assert got == path.read_bytes(), f"{path.name} differs (STATEKIT_REGOLD=1 rewrites it after a wanted change)"


def test_golden_store_covers_every_reason(reports: dict[str, Report]) -> None:
    """The fixture is worth comparing: every reason, both special titles, costs and throughput."""
    r = reports["all"]
    assert set(r.attention_counts) == {"lease_expired", "held", "failed", "stuck", "gave_up"}
    assert {s.show_id for s in r.shows} == {"caf", "tom", "empty"}
    assert r.totals.cost_total > 1000 and r.totals.error_kinds
    assert {st for d in r.totals.throughput for st, n in d.by_stage.items() if n} == {"published", "withdrawn", "skipped"}
    assert any(a.message and a.message.endswith("...") for a in r.attention)
