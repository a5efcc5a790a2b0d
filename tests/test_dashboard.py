"""The dashboard of 'statekit serve' over plain HTTP (issue 18, part 1): every page and
its JSON twin, bad input, the token, the CSP header, and that serving writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("jinja2")

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from statekit import IndexUnavailableError, ReadOnlyStoreError, Store  # noqa: E402
from statekit.dashboard import view  # noqa: E402
from statekit.dashboard.access import CSP, Guard  # noqa: E402
from statekit.dashboard.pages import routes  # noqa: E402
from statekit.dashboard.view import VERSION_SECONDS, Dashboard  # noqa: E402
from statekit.serve import make_app  # noqa: E402

from .conftest import statements  # noqa: E402

TOKEN = "s3cret-token-123"
QUICK = 0.1
"""The dashboards made in this process ask the index for the version at most this often (``quick_version``),
not every VERSION_SECONDS (0.5 s): the tests wait it out after each write. 'statekit serve' processes keep 0.5 s."""


@pytest.fixture(autouse=True)
def quick_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view, "VERSION_SECONDS", QUICK)


def fill(store: Store) -> None:
    """Two shows: one episode leased mid-run, one failed, one with an asset, one finished."""
    store.create("oliver", "ep001", title="Journey to the Stars")
    store.create("oliver", "ep002", title="The 100% Solution")
    store.create("oliver", "ep003", title="Under the Sea")
    store.create("tidal", "tn1", title="Tidal one")
    store.advance("oliver", "ep001", "downloading", message="fetching", cost=0.5)
    store.add_asset("oliver", "ep001", b"RIFF....WAVE", kind="audio", name="source.wav", media_type="audio/x-wav")
    with pytest.raises(ConnectionError), store.run("oliver", "ep002", "downloading"):
        raise ConnectionError("the server went away")
    store.claim("downloading", owner="worker-7", show="tidal", lease_seconds=600)
    for stage in ("downloading", "downloaded", "skipped"):
        store.advance("oliver", "ep003", stage)


@pytest.fixture
def root(tmp_path: Path) -> str:
    store = Store.init(tmp_path / "store", ledger=True)
    fill(store)
    store.close()
    return store.root


@pytest.fixture
def client(root: str):
    board = Dashboard(Store.open(root, read_only=True))
    with TestClient(make_app(Store.open(root), routes(board))) as c:
        yield c
    board.close()


def stage_count(html: str, stage: str) -> int:
    found = re.search(rf'<tr data-stage="{stage}">.*?<td class="num n">(\d+)</td>', html, re.S)
    assert found, f"no row for stage {stage}"
    return int(found.group(1))


def test_overview_shows_the_report_with_its_counts(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert re.search(r'id="total-episodes">4<', html)
    assert stage_count(html, "discovered") == 0
    assert stage_count(html, "downloading") == 2  # ep001 and the claimed tn1
    assert stage_count(html, "failed") == 1 and stage_count(html, "skipped") == 1
    assert 'data-show="oliver"' in html and 'data-show="tidal"' in html
    assert "oliver/ep002" in html and "failed, will retry" in html  # needs attention
    assert "<script src=\"/static/dashboard.js\"" in html and "style=" not in html  # nothing inline
    assert "<script>" not in html
    report = client.get("/api/report").json()
    assert report["totals"]["episodes"] == 4
    assert report["totals"]["stages"]["downloading"] == 2
    assert report["totals"]["cost_total"] == 0.5


def test_every_response_carries_a_strict_csp(client: TestClient) -> None:
    for path in ("/", "/episodes", "/episodes/oliver/ep001", "/api/version", "/static/dashboard.css", "/metrics",
                 "/episodes/oliver/nope", "/no-such-page"):
        r = client.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in CSP and "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert client.get("/static/dashboard.js").headers["content-type"].startswith(("text/javascript",
                                                                                 "application/javascript"))


def test_episodes_per_stage_and_search(client: TestClient) -> None:
    got = client.get("/api/episodes", params={"stage": "downloading"}).json()
    assert got["total"] == 2 and {(e["show_id"], e["episode_id"]) for e in got["episodes"]} == {
        ("oliver", "ep001"), ("tidal", "tn1")}
    assert [e["episode_id"] for e in client.get("/api/episodes", params={"q": "STARS"}).json()["episodes"]] == [
        "ep001"]
    # LIKE's wildcards are taken literally: '%' finds the one title holding it, '_' none
    assert [e["episode_id"] for e in client.get("/api/episodes", params={"q": "100%"}).json()["episodes"]] == [
        "ep002"]
    assert client.get("/api/episodes", params={"q": "_"}).json()["total"] == 0
    assert client.get("/api/episodes", params={"show": "tidal"}).json()["total"] == 1
    assert client.get("/api/episodes").json()["total"] == 4
    html = client.get("/episodes", params={"stage": "downloading"}).text
    assert "oliver/ep001" in html and "tidal/tn1" in html and "oliver/ep003" not in html
    assert 'id="search"' in html and "2 episode(s)" in html


def test_the_search_reads_the_show_order_index_not_every_row(root: str) -> None:
    """A search and its count read ``episodes_in_order``, which holds the title (revision 0013):
    SQLite's LIKE ignores the case of ASCII letters itself, so the columns need no lower()."""
    import sqlite3

    writer = Store.open(root)
    writer.create("tidal", "tn2", title="Café Ünïcode")
    writer.close()
    board = Dashboard(Store.open(root, read_only=True))
    try:
        with statements(board.store.index) as seen:
            found = {q: [e.episode_id for e in board.episodes(query=q).rows]
                     for q in ("STARS", "stars", "café", "CAFÉ", "Ünï", "ünïcode", "ÜNÏ", "TN", "Oliver", "nothing")}
            staged = board.episodes(stage="downloading", query="TIDAL")
    finally:
        board.close()
    assert found == {"STARS": ["ep001"], "stars": ["ep001"], "café": ["tn2"], "CAFÉ": ["tn2"], "Ünï": ["tn2"],
                     "ünïcode": ["tn2"], "ÜNÏ": ["tn2"], "TN": ["tn1", "tn2"], "Oliver": ["ep001", "ep002", "ep003"],
                     "nothing": []}  # (SQLite's LIKE minds the case of "Ü": "ÜNÏ" is tried as "Ünï" too)
    assert [e.episode_id for e in staged.rows] == ["tn1"] and staged.total == 1
    searched = [sql for sql in seen if " LIKE " in sql]
    assert len(searched) == 22 and not any("lower(" in sql for sql in searched)
    db = sqlite3.connect(Path(root, ".statekit/index.db"))
    try:
        plans = [" | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql)) for sql in searched]
    finally:
        db.close()
    for sql, plan in zip(searched, plans):
        if "stage =" in sql:  # (the stage is in the row: its rows from the stage's index)
            continue
        assert "INDEX episodes_in_order" in plan, (sql, plan)
        if sql.startswith("SELECT count(*)"):  # the count never reads a row of the table
            assert "COVERING INDEX episodes_in_order" in plan, (sql, plan)


def test_a_stage_page_names_its_index_and_counts_from_the_totals(root: str) -> None:
    """A stage of a few rows among a show's many is read through the stage's index, whatever the
    statistics say (a store filled by its creates has none), and counted from ``stage_totals``."""
    import sqlite3

    writer = Store.open(root)
    for i in range(60):  # most of oliver's rows in its first stage
        writer.create("oliver", f"bulk{i:02d}")
    writer.close()
    board = Dashboard(Store.open(root, read_only=True))
    try:
        with statements(board.store.index) as seen:
            few = board.episodes(show="oliver", stage="downloading")
            many = board.episodes(show="oliver", stage="discovered")
            everything = board.episodes()
    finally:
        board.close()
    assert ([r.episode_id for r in few.rows], few.total) == (["ep001"], 1)
    assert (len(many.rows), many.total) == (60, 60) and many.rows[0].updated_at.tzinfo is not None
    assert (len(everything.rows), everything.total) == (64, 64)
    asked = [sql for sql in seen if sql.lstrip().startswith("SELECT")]
    assert not any("count(" in sql for sql in asked)  # no search text: the kept totals, no row counted
    rows = [sql for sql in asked if "FROM episodes" in sql]
    # (a page of a stage holding most of a show's 200 or more rows walks episodes_in_order instead: ``_common``)
    assert "INDEXED BY episodes_by_stage" in rows[0] and "INDEXED BY episodes_" in rows[1], rows
    db = sqlite3.connect(Path(root, ".statekit/index.db"))
    try:
        assert "INDEX episodes_by_stage (stage=?)" in " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + rows[0]))
    finally:
        db.close()


def test_episode_page_has_state_assets_lease_and_full_history(client: TestClient, root: str) -> None:
    html = client.get("/episodes/oliver/ep001").text
    assert "Journey to the Stars" in html and "source.wav" in html and "audio/x-wav" in html
    assert html.count('<tr data-version="') == 3  # create, advance, asset
    assert "fetching" in html and "discovered → downloading" in html
    leased = client.get("/episodes/tidal/tn1").text
    assert "worker-7" in leased and 'id="lease"' in leased and "No worker holds it" not in leased
    data = client.get("/api/episodes/oliver/ep003").json()
    assert data["episode"]["stage"] == "skipped"
    assert [h["version"] for h in data["history"]] == [4, 3, 2, 1]
    moved = next(c for c in data["history"][0]["changes"] if c["field"] == "stage")
    assert (moved["before"], moved["after"]) == ("downloaded", "skipped")


def test_unknown_episode_or_show_is_404_and_bad_input_400(client: TestClient) -> None:
    for path in ("/episodes/oliver/nope", "/episodes/nobody/ep001"):
        r = client.get(path)
        assert r.status_code == 404 and 'id="error"' in r.text
    r = client.get("/api/episodes/oliver/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"] and r.json()["hint"]
    for path, params in (("/episodes", {"stage": "bogus"}), ("/api/episodes", {"stage": "bogus"}),
                         ("/api/episodes", {"q": "x" * 201}), ("/episodes/Bad.ID!/ep001", {}),
                         ("/api/episodes/oliver/ep%20x", {})):
        r = client.get(path, params=params)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "Traceback" not in r.text
    r = client.get("/api/episodes", params={"stage": "bogus"})
    assert r.status_code == 400 and "unknown stage 'bogus'" in r.json()["error"]
    assert client.get("/api/episodes", params={"show": "nobody"}).status_code == 404


def test_version_moves_after_a_write_and_the_partial_page_has_the_change(client: TestClient, root: str) -> None:
    before = client.get("/api/version").json()["version"]
    assert client.get("/api/version").json()["version"] == before
    writer = Store.open(root)
    writer.advance("oliver", "ep002", "downloading")
    writer.close()
    time.sleep(QUICK + 0.05)
    after = client.get("/api/version").json()["version"]
    assert after != before
    part = client.get("/", headers={"X-Statekit-Partial": "1"})
    assert part.headers["x-statekit-version"] == after
    assert "<html" not in part.text and "<main" not in part.text
    assert stage_count(part.text, "downloading") == 3 and stage_count(part.text, "failed") == 0


def test_version_moves_after_a_delete_and_text_is_escaped(client: TestClient, root: str) -> None:
    writer = Store.open(root)
    writer.create("oliver", "ep009", title="<script>alert('x')</script> & co")
    time.sleep(QUICK + 0.05)
    before = client.get("/api/version").json()["version"]
    html = client.get("/episodes", params={"q": "script"}).text + client.get("/episodes/oliver/ep009").text
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in html
    writer.delete("oliver", "ep009")  # no event is left behind: the stage totals move the version
    writer.close()
    time.sleep(QUICK + 0.05)
    assert client.get("/api/version").json()["version"] != before
    assert client.get("/episodes/oliver/ep009").status_code == 404


def test_version_follows_a_rebuilt_index(client: TestClient, root: str) -> None:
    """rebuild-index swaps a new database file in: the dashboard reconnects to it."""
    before = client.get("/api/version").json()["version"]
    writer = Store.open(root)
    writer.rebuild_index()
    writer.advance("oliver", "ep002", "downloading")
    writer.close()
    time.sleep(QUICK + 0.05)
    assert client.get("/api/version").json()["version"] != before
    assert client.get("/api/report").json()["totals"]["stages"]["downloading"] == 3


def test_an_index_that_cannot_be_read_is_a_503_in_one_line(root: str) -> None:
    board = Dashboard(Store.open(root, read_only=True))
    with TestClient(Starlette(routes=routes(board))) as c:
        assert c.get("/api/version").status_code == 200
        damaged = Path(root, ".statekit", "damaged.db")
        damaged.write_bytes(b"not a database " * 500)
        os.replace(damaged, Path(root, ".statekit", "index.db"))  # a new file: the dashboard reconnects to it
        time.sleep(QUICK + 0.05)
        r = c.get("/api/version")
        assert r.status_code == 503 and "could not be read" in r.json()["error"] and r.json()["hint"]
        r = c.get("/")
        assert r.status_code == 503 and 'id="error"' in r.text and "Traceback" not in r.text
    board.close()


def test_the_token_guards_every_route_but_healthz(root: str) -> None:
    board = Dashboard(Store.open(root, read_only=True))
    app = make_app(Store.open(root), routes(board), token=TOKEN)
    with TestClient(app, follow_redirects=False) as c:
        for path in ("/", "/api/report", "/episodes/oliver/ep001", "/metrics", "/static/dashboard.js"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert "Journey" not in r.text and "token" in r.text
        assert c.get("/healthz").status_code == 200
        assert c.get("/", headers={"Authorization": "Bearer wrong-token-xx"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/episodes", params={"stage": "downloading", "token": "nope"}).status_code == 401
        r = c.get("/episodes", params={"stage": "downloading", "token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == "/episodes?stage=downloading"  # token dropped
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert r.headers["content-security-policy"] == CSP
        assert c.get("/episodes", params={"stage": "downloading"}).status_code == 200  # the cookie it set
        c.cookies.clear()
        c.cookies.set("statekit_token", "not-the-token")
        assert c.get("/").status_code == 401
    board.close()


SHARED = (os.path.join(".statekit", "index.db-wal"), os.path.join(".statekit", "index.db-shm"))
"""SQLite's coordination files of a WAL database: every reader needs them, and one
opened read-only makes them if no writer has (empty; no data): left out of ``tree``."""


def tree(root: str) -> dict[str, tuple[Any, ...]]:
    """Every file and folder under ``root`` but ``SHARED``: kind, size, mtime, inode
    and a file's bytes (a folder's mtime only where nothing in ``SHARED`` could move it)."""
    found: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel in SHARED:
                continue
            st = os.lstat(path)
            content = Path(path).read_bytes() if name in names and not os.path.islink(path) else None
            mtime = None if rel == ".statekit" else st.st_mtime_ns
            found[rel] = (st.st_mode, st.st_size, mtime, st.st_ino, content)
    return found


def wal_is_empty(root: str) -> bool:
    wal = Path(root, SHARED[0])
    return not wal.exists() or wal.stat().st_size == 0


PATHS = ("/", "/episodes", "/episodes?stage=downloading&q=stars", "/episodes/oliver/ep001",
         "/episodes/tidal/tn1", "/episodes/oliver/nope", "/api/version", "/api/report", "/api/episodes?q=o",
         "/api/episodes/oliver/ep003", "/static/dashboard.js", "/static/dashboard.css", "/static/favicon.svg")


def test_the_dashboard_writes_nothing_under_the_store(root: str) -> None:
    """Opened read-only and served: not one file or folder under the store changes,
    not even the index's -wal/-shm files or a lock file."""
    before = tree(root)
    board = Dashboard(Store.open(root, read_only=True))
    app = Starlette(routes=routes(board), middleware=[Middleware(Guard)])
    with TestClient(app) as c:
        for _ in range(3):
            for path in PATHS:
                assert c.get(path).status_code in (200, 404), path
            time.sleep(QUICK)
    board.close()
    assert tree(root) == before
    assert wal_is_empty(root)  # nothing was committed to the index either


def test_a_read_only_store_refuses_writes_and_an_index_it_cannot_read(root: str, tmp_path: Path) -> None:
    before = tree(root)
    ro = Store.open(root, read_only=True)
    assert ro.get("oliver", "ep001").stage == "downloading"
    with pytest.raises(ReadOnlyStoreError):
        ro.advance("oliver", "ep002", "downloading")
    with pytest.raises(ReadOnlyStoreError):
        ro.create("oliver", "ep009")
    ro.close()
    assert tree(root) == before and wal_is_empty(root)
    bare = Store.init(tmp_path / "bare")
    bare.close()
    os.remove(Path(bare.root, ".statekit", "index.db"))
    with pytest.raises(IndexUnavailableError, match="no index"):
        Store.open(bare.root, read_only=True)


def serve_process(root: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """'statekit serve --port 0' in its own process; its base URL, read from what it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", root, "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    found = re.search(r"(http://\S+?)/ ", line)
    if not found:
        proc.kill()
        raise AssertionError(f"serve printed {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc, found.group(1)


def get(url: str, headers: dict[str, str] | None = None, deadline: float = 30.0) -> tuple[int, bytes]:
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def test_serve_process_writes_nothing_while_serving(root: str) -> None:
    """The real 'statekit serve' (dashboard and /metrics): once up, serving pages changes no file."""
    proc, base = serve_process(root)
    try:
        assert get(base + "/healthz")[0] == 200
        before = tree(root)
        for _ in range(2):
            for path in (*PATHS, "/metrics"):
                assert get(base + path)[0] in (200, 404), path
            time.sleep(VERSION_SECONDS)
        assert tree(root) == before
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_a_public_host_without_a_token_and_checks_the_token(root: str) -> None:
    cli = [sys.executable, "-m", "statekit.cli", "--root", root, "serve", "--port", "0"]
    done = subprocess.run([*cli, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--token" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run([*cli, "--token", "short"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "at least 8" in done.stderr and "Traceback" not in done.stderr
    proc, base = serve_process(root, "--token", TOKEN)
    try:
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/")[0] == 401
        status, body = get(base + "/api/report", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b'"episodes":4' in body.replace(b" ", b"")
    finally:
        proc.terminate()
        proc.wait(30)


PG_URL = os.environ.get("STATEKIT_TEST_PG_URL")


@pytest.mark.skipif(not PG_URL, reason="STATEKIT_TEST_PG_URL is not set (.ci/run sets it)")
def test_the_dashboard_on_a_server_index_reads_through_read_only_sessions(tmp_path: Path) -> None:
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    assert PG_URL is not None
    name = "statekit_dash_" + uuid.uuid4().hex[:10]
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        store = Store.init(tmp_path / "store", index_url=url)
        fill(store)
        board = Dashboard(Store.open(store.root, read_only=True))
        with TestClient(Starlette(routes=routes(board), middleware=[Middleware(Guard)])) as c:
            assert c.get("/api/report").json()["totals"]["stages"]["downloading"] == 2
            before = c.get("/api/version").json()["version"]
            store.advance("oliver", "ep002", "downloading")
            time.sleep(QUICK + 0.05)
            assert c.get("/api/version").json()["version"] != before
            assert re.search(r'id="total-episodes">4<', c.get("/").text)
            assert c.get("/api/episodes", params={"stage": "downloading"}).json()["total"] == 3
            # PostgreSQL's LIKE minds the case: the columns are folded with lower() there
            assert [e["episode_id"] for e in c.get("/api/episodes", params={"q": "STARS"}).json()["episodes"]] == [
                "ep001"]
        with pytest.raises(DBAPIError, match="read-only"), board.store.index.engine.connect() as conn:
            conn.exec_driver_sql("DELETE FROM episodes")
        board.close()
        store.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
