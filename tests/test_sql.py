"""SQL on the index (issue 12, items 5 and 7): a time limit, a hint that fits
each cause of a refused query, on SQLite and PostgreSQL; and the README's way
to read the index as a user without write access to ``.statekit/``."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import QueryError, QueryTimeoutError, Store, ValidationError
from statekit.cli import main
from statekit.index import SQL_TIMEOUT_S, Index, engine_for
from statekit.index.connect import alembic_upgrade
from statekit.pipeline import ARCHIVE

README = Path(__file__).resolve().parent.parent / "README.md"
PG_URL = os.environ.get("STATEKIT_TEST_PG_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="STATEKIT_TEST_PG_URL is not set (.ci/run sets it)")

RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
RUNAWAY_ROWS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
TABLES = ("episodes", "events", "shows", "stage_counts")

# each cause of a refusal, with queries that have it (SQLite)
CAUSES = {
    "syntax": ["SELEC show_id FROM episodes", "SELECT (", "SELECT 'unclosed", "SELECT 1; SELECT 2",
               "SELECT * FROM episodes WHERE"],
    "unknown": ["SELECT * FROM episode", "SELECT nope FROM episodes", "SELECT e.nope FROM events AS e"],
    "write": ["DELETE FROM episodes", "UPDATE episodes SET stage = 'x'", "INSERT INTO shows (show_id) VALUES ('x')",
              "DROP TABLE events", "CREATE TABLE t (x)", "CREATE TEMP TABLE t (x)", "PRAGMA journal_mode = DELETE",
              "PRAGMA query_only = OFF", "VACUUM", "ATTACH DATABASE 'other.db' AS other"],
    "empty": ["", "   ", "\n\t"],
}


def check_hint(reason: str, hint: str) -> None:
    """The hint fits its cause, and only its cause."""
    if reason == "syntax":
        assert "syntax" in hint and "README" in hint and all(t in hint for t in TABLES)
    elif reason == "unknown":
        assert all(t in hint for t in TABLES) and "README" in hint
    elif reason == "write":
        assert "read-only" in hint and "statekit commands" in hint
    elif reason == "empty":
        assert "give one statement" in hint
    if reason != "write":
        assert "read-only" not in hint


@pytest.fixture
def filled(store: Store) -> Store:
    store.create("s", "e1")
    store.create("s", "e2")
    store.advance("s", "e1", "downloading", cost=0.5)
    return store


# --- the time limit -----------------------------------------------------------------


@pytest.mark.parametrize("query", [RUNAWAY, RUNAWAY_ROWS])
def test_a_runaway_query_is_stopped_at_its_time_limit(filled: Store, query: str) -> None:
    with pytest.raises(QueryTimeoutError) as caught:
        filled.sql(query, timeout=0.3)
    assert caught.value.timeout == 0.3
    assert "stopped after 0.3 seconds" in str(caught.value)
    assert "--timeout" in caught.value.hint and "timeout=" in caught.value.hint
    assert isinstance(caught.value, TimeoutError)
    assert filled.sql("SELECT COUNT(*) FROM episodes")[1] == [(2,)]  # the index is fine afterwards
    assert filled.verify().clean


def test_the_default_limit_is_thirty_seconds_and_a_query_within_it_runs(filled: Store) -> None:
    assert inspect.signature(Store.sql).parameters["timeout"].default == SQL_TIMEOUT_S == 30.0
    assert inspect.signature(Index.sql).parameters["timeout"].default == SQL_TIMEOUT_S
    query = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000) SELECT COUNT(*) FROM c"
    assert filled.sql(query, timeout=60)[1] == [(100000,)]
    assert filled.sql("SELECT 100 % 7 AS m, '?' AS q")[1] == [(2, "?")]


@pytest.mark.parametrize("timeout", [0, -1, -0.5, float("nan"), float("inf"), float("-inf"), True, "5", None])
def test_a_bad_time_limit_is_refused(filled: Store, timeout: object) -> None:
    with pytest.raises(ValidationError) as caught:
        filled.sql("SELECT 1", timeout=timeout)  # type: ignore[arg-type]
    assert caught.value.field == "timeout" and "positive number of seconds" in str(caught.value)
    assert "--timeout" in caught.value.hint


def cli(root: Path, *argv: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--root", str(root), *argv])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(root: Path, *argv: str) -> str:
    code, stdout, stderr = cli(root, *argv)
    assert code == 2, (argv, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("statekit: error: "), stderr
    return lines[0]


def test_the_command_line_stops_a_runaway_query(filled: Store) -> None:
    root = Path(filled.root)
    line = one_line_error(root, "sql", "--timeout", "0.3", RUNAWAY)
    assert "stopped after 0.3 seconds" in line and "--timeout" in line
    code, stdout, _ = cli(root, "sql", "--timeout", "5", "SELECT COUNT(*) AS n FROM episodes", "--csv")
    assert (code, stdout) == (0, "n\n2\n")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc", ""])
def test_the_command_line_refuses_a_bad_time_limit(filled: Store, value: str) -> None:
    line = one_line_error(Path(filled.root), "sql", "--timeout", value, "SELECT 1")
    assert "timeout" in line


# --- a hint for each cause --------------------------------------------------------------


@pytest.mark.parametrize(("reason", "query"), [(r, q) for r, qs in CAUSES.items() for q in qs])
def test_each_refused_query_gets_the_hint_of_its_cause(filled: Store, reason: str, query: str, tmp_path: Path) -> None:
    before = filled.sql("SELECT show_id, episode_id, stage, version FROM episodes ORDER BY episode_id")
    with pytest.raises(QueryError) as caught:
        filled.sql(query.replace("other.db", str(tmp_path / "other.db")))
    error = caught.value
    assert error.reason == reason, (query, error.one_line())
    assert isinstance(error, ValidationError) and error.field == "query"
    check_hint(reason, error.hint)
    assert filled.sql("SELECT show_id, episode_id, stage, version FROM episodes ORDER BY episode_id") == before
    assert not (tmp_path / "other.db").exists()


def test_a_query_that_is_not_text_is_refused(filled: Store) -> None:
    for query in (None, 5, b"SELECT 1"):
        with pytest.raises(QueryError) as caught:
            filled.sql(query)  # type: ignore[arg-type]
        assert caught.value.reason == "empty" and "text" in str(caught.value)
    with pytest.raises(QueryError) as caught:
        filled.sql("SELECT '\ud800'")  # a lone surrogate cannot be sent to any database
    assert caught.value.reason == "syntax"


def test_reading_queries_still_run(filled: Store) -> None:
    assert filled.sql("PRAGMA table_info(stage_counts)")[1][0][1] == "show_id"
    assert filled.sql("SELECT name FROM pragma_table_info('events') WHERE name = 'kind'")[1] == [("kind",)]
    assert filled.sql("-- nothing to run")[1] == []


@pytest.mark.parametrize(("reason", "query"), [
    ("syntax", "SELEC 1"), ("unknown", "SELECT * FROM episode"), ("unknown", "SELECT nope FROM episodes"),
    ("write", "DELETE FROM episodes"), ("empty", ""),
])
def test_the_command_line_prints_the_hint_of_the_cause_on_one_line(filled: Store, reason: str, query: str) -> None:
    line = one_line_error(Path(filled.root), "sql", query)
    hint = re.search(r"\(hint: (.*)\)$", line)
    assert hint, line
    check_hint(reason, hint.group(1))


# --- the same on a PostgreSQL index ----------------------------------------------------------


@pytest.fixture
def pg(store: Store) -> Iterator[Index]:
    """An index in a schema of its own, filled from ``store``'s files."""
    from statekit.index.rebuild import rebuild

    assert PG_URL is not None
    schema = "statekit_sql_" + uuid.uuid4().hex[:10]
    admin = engine_for(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = engine_for(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    with engine.connect() as conn, conn.begin():
        alembic_upgrade(conn)
    index = Index(engine, ARCHIVE)
    store.create("s", "e1")
    store.create("s", "e2")
    rebuild(store.writer, index=index)
    try:
        yield index
    finally:
        index.close()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@needs_pg
def test_postgres_stops_a_runaway_query(pg: Index) -> None:
    runaway = RUNAWAY.replace("SELECT 1", "SELECT 1::bigint")  # no int4 overflow to end it early
    with pytest.raises(QueryTimeoutError) as caught:
        pg.sql(runaway, timeout=0.3)
    assert caught.value.timeout == 0.3 and "--timeout" in caught.value.hint
    assert pg.sql("SELECT COUNT(*) AS n FROM episodes") == (["n"], [(2,)])
    assert pg.sql("SELECT COUNT(*) FROM episodes", timeout=1e9)[1] == [(2,)]  # past the server's largest limit
    assert pg.sql("SELECT 100 % 7 AS m, '%s' AS s")[1] == [(2, "%s")]  # no placeholders in a query as written


@needs_pg
@pytest.mark.parametrize(("reason", "query"), [
    ("syntax", "SELEC show_id FROM episodes"), ("syntax", "SELECT ("), ("syntax", "SELECT 1; SELECT 2"),
    ("unknown", "SELECT * FROM episode"), ("unknown", "SELECT nope FROM episodes"),
    ("write", "DELETE FROM episodes"), ("write", "UPDATE episodes SET stage = 'x'"), ("write", "CREATE TABLE t (x int)"),
    ("empty", " "),
])
def test_postgres_refusals_get_the_hint_of_their_cause(pg: Index, reason: str, query: str) -> None:
    with pytest.raises(QueryError) as caught:
        pg.sql(query)
    assert caught.value.reason == reason, (query, caught.value.one_line())
    check_hint(reason, caught.value.hint)
    assert pg.sql("SELECT COUNT(*) FROM episodes")[1] == [(2,)]


@needs_pg
def test_postgres_a_second_statement_cannot_leave_the_read_only_transaction(pg: Index) -> None:
    with pytest.raises(QueryError) as caught:
        pg.sql("SELECT 1; COMMIT; CREATE TABLE escaped (x int); DELETE FROM episodes")
    assert caught.value.reason == "syntax"
    assert pg.sql("SELECT COUNT(*) FROM episodes")[1] == [(2,)]
    assert pg.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'escaped'")[1] == [(0,)]


# --- the README's way to read the index without write access ------------------------------------

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def readme_block() -> str:
    """The ```bash block of the README's SQL reference (reading the index immutable)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1 and "immutable=1" in blocks[0]
    return blocks[0]


def as_nobody(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run([*NOBODY, *argv], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A folder other users may enter (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="statekit-ro-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def read_only_tree(root: Path) -> None:
    for folder, _dirs, names in os.walk(root):
        for name in names:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to act as another user")
@pytest.mark.parametrize("folder", ["store", "odd ?#%41 store"])
def test_a_user_without_write_access_reads_the_index_the_way_the_readme_says(world_readable: Path,
                                                                               folder: str) -> None:
    root = world_readable / folder
    store = Store.init(root)
    for ep in ("e1", "e2", "e3"):
        store.create("s", ep)
    store.close()  # the last connection closes: SQLite moves the log into index.db
    read_only_tree(root)
    probe = as_nobody([os.path.realpath(sys.executable), "-I", "-S", "-c",
                       "open('.statekit/probe', 'w')"], root)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr  # really without write access
    lines = readme_block().strip().split("\n", 1)
    sqlite_line, python_line = lines[0], lines[1]
    python = as_nobody(["bash", "-c", python_line], root)
    assert (python.returncode, python.stdout) == (0, "3\n"), python.stderr
    if " " not in folder and shutil.which("sqlite3"):  # the $PWD line: a plain path, as the README says
        cli_run = as_nobody(["bash", "-c", sqlite_line], root)
        assert (cli_run.returncode, cli_run.stdout) == (0, "3\n"), cli_run.stderr

    # a process still writing: its newest changes sit in the WAL, which an immutable reader ignores
    writer = Store.open(root)
    writer.create("s", "e4")
    behind = as_nobody(["bash", "-c", python_line], root)
    assert (behind.returncode, behind.stdout) == (0, "3\n"), behind.stderr
    writer.close()
    caught_up = as_nobody(["bash", "-c", python_line], root)
    assert (caught_up.returncode, caught_up.stdout) == (0, "4\n"), caught_up.stderr
