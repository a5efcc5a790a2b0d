"""Retention (issue 18, part 3): ``statekit compact`` compresses the event logs and
checkpoints of finished, untouched episodes; every path reads them as before, a
later write makes the log plain again, and a kill -9 at any step of either
leaves a readable episode whose history is intact."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from statekit import CorruptFileError, Store
from statekit.cli import main
from statekit.files import Disk

from .conftest import index_rows, snapshot
from .test_workers import needs_pg

DAY = 86400
LATE = ("converted", "uploading", "uploaded", "scheduled", "published")


def finish(store: Store, show: str, ep: str, checkpoint: bool = True) -> None:
    """Walk an archive episode to 'published', saving a checkpoint on the way."""
    store.create(show, ep, title=f"Episode {ep}", metadata={"n": ep})
    for stage in ("downloading", "downloaded", "converting"):
        store.advance(show, ep, stage, message=f"into {stage}", cost=0.01)
    if checkpoint:
        store.save_checkpoint(show, ep, "converting", {"samples": list(range(200)), "ep": ep})
    for stage in LATE:
        store.advance(show, ep, stage, message=f"into {stage}")


def age(root: str | Path, days: float = 40, only: str | None = None) -> None:
    """Set every file under the store's shows/ (or one episode's folder) ``days`` back."""
    then = time.time() - days * DAY
    top = Path(root, "shows")
    if only is not None:
        show, ep = only.split("/")
        top = top / show / "episodes" / ep
    for folder, _dirs, names in os.walk(top):
        for name in names:
            os.utime(os.path.join(folder, name), (then, then), follow_symlinks=False)


def make_store(root: Path, ledger: bool) -> Store:
    store = Store.init(root, ledger=ledger)
    finish(store, "s", "done")
    finish(store, "s", "done2", checkpoint=False)
    store.create("s", "skip")
    store.advance("s", "skip", "skipped", message="not wanted")
    store.create("s", "busy")
    store.advance("s", "busy", "downloading")
    finish(store, "s", "recent")
    age(root)
    age(root, days=0, only="s/recent")  # touched just now
    return store


def ep_dir(store: Store, ep: str) -> Path:
    return Path(store.root, "shows", "s", "episodes", ep)


def views(store: Store, ep: str) -> dict[str, Any]:
    """What every read path says of an episode."""
    out: dict[str, Any] = {
        "get": store.get("s", ep).model_dump(mode="json"),
        "events": [e.model_dump(mode="json") for e in store.events("s", ep)],
        "checkpoint": store.load_checkpoint("s", ep, "converting"),
        "resume": store.resume_stage("s", ep),
    }
    if store.writer.chained:
        out["history"] = [h.model_dump(mode="json") for h in store.history("s", ep)]
    return out


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.output)
    return result.output


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "older"])
def test_compact_then_every_path_reads_the_same(tmp_path: Path, ledger: bool) -> None:
    store = make_store(tmp_path / "store", ledger)
    before = {ep: views(store, ep) for ep in ("done", "done2", "skip", "busy", "recent")}
    store.rebuild_index()  # the files' times moved (aged): the index as a rebuild makes it
    rows = index_rows(store)
    files = snapshot(store.root)

    dry = store.compact(dry_run=True)
    assert snapshot(store.root) == files  # a dry run changes nothing
    assert {c.episode_id for c in dry.compacted} == {"done", "done2", "skip"}

    report = store.compact()
    assert {c.episode_id for c in report.compacted} == {"done", "done2", "skip"}
    assert report.saved == dry.saved > 0 and report.bytes_after < report.bytes_before
    for ep in ("done", "done2", "skip"):
        assert not (ep_dir(store, ep) / "events.jsonl").exists()
        packed = ep_dir(store, ep) / "events.jsonl.gz"
        assert gzip.decompress(packed.read_bytes()) == files[f"shows/s/episodes/{ep}/events.jsonl"]
    assert sorted(os.listdir(ep_dir(store, "done") / "checkpoints")) == ["converting.json.gz"]
    for ep in ("busy", "recent"):  # not finished, or touched lately: as they were
        assert (ep_dir(store, ep) / "events.jsonl").exists()
    # the space saved is what left the disk
    on_disk = sum(os.path.getsize(Path(store.root, name + ".gz")) for c in report.compacted for name in c.files)
    assert on_disk == report.bytes_after

    again = Store.open(store.root)  # a new process's view: nothing cached
    for ep, seen in before.items():
        assert views(again, ep) == seen, ep
    assert again.sync().changed == [] and again.verify().problems == []
    again.rebuild_index()
    assert index_rows(again) == rows
    assert again.verify().problems == []
    assert again.repair().actions == []
    out = json.loads(cli("--root", str(store.root), "show", "s/done", "--json"))
    assert len(out["events"]) == len(before["done"]["events"])
    # zcat and jq read the compressed log as the plain one
    zcat = subprocess.run(["zcat", str(ep_dir(store, "done") / "events.jsonl.gz")], capture_output=True, check=True)
    assert zcat.stdout == files["shows/s/episodes/done/events.jsonl"]
    if shutil.which("jq"):
        versions = subprocess.run(["jq", "-r", ".version"], input=zcat.stdout, capture_output=True, check=True)
        assert versions.stdout.decode().split() == [str(v) for v in range(1, again.get("s", "done").version + 1)]

    # a later write makes the log plain again, with its whole history
    ep = again.update("s", "done", title="Remastered")
    assert (ep_dir(store, "done") / "events.jsonl").exists()
    assert not (ep_dir(store, "done") / "events.jsonl.gz").exists()
    assert [e.version for e in again.events("s", "done")] == list(range(1, ep.version + 1))
    again.save_checkpoint("s", "done", "converting", {"again": True})
    assert sorted(os.listdir(ep_dir(store, "done") / "checkpoints")) == ["converting.json"]
    assert again.load_checkpoint("s", "done", "converting") == {"again": True}
    again.update("s", "skip", title="still skipped")
    assert again.verify().problems == []
    assert Store.open(store.root).events("s", "skip")[-1].fields == ["title"]
    # compacting twice compresses nothing more; the freshly written episode is recent now
    second = again.compact()
    assert [c.episode_id for c in second.compacted] == [] and second.already == 1  # done2
    assert second.checked == 5


def test_compacted_episodes_survive_migrate_to_the_ledger(tmp_path: Path) -> None:
    """An older store compacted, then sealed by 'statekit migrate --ledger': the seal
    reads the compressed log (its hash goes into the seal) and writes it plain again."""
    store = make_store(tmp_path / "store", ledger=False)
    events = [e.model_dump(mode="json") for e in store.events("s", "done")]
    store.compact()
    store.migrate(ledger=True)
    sealed = Store.open(store.root)
    assert [e.model_dump(mode="json") for e in sealed.events("s", "done")][: len(events)] == events
    assert sealed.verify().problems == []
    assert (ep_dir(sealed, "done") / "events.jsonl").exists()


def test_repair_drops_the_uncommitted_tail_of_a_compressed_log(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", ledger=True)
    log = ep_dir(store, "done") / "events.jsonl"
    good = log.read_bytes()
    with open(log, "ab") as f:
        f.write(b'{"version": 99, "torn')
    age(store.root, only="s/done")
    store.compact()
    assert not log.exists()
    assert len(Store.open(store.root).events("s", "done")) == 10
    report = Store.open(store.root).repair()
    assert any("uncommitted event tail" in a for a in report.actions), report.actions
    assert log.read_bytes() == good and not (log.parent / "events.jsonl.gz").exists()


def test_a_damaged_compressed_log_is_reported_not_hidden(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", ledger=True)
    store.compact()
    packed = ep_dir(store, "done") / "events.jsonl.gz"
    packed.write_bytes(packed.read_bytes()[:-12])  # cut short
    again = Store.open(store.root)
    with pytest.raises(CorruptFileError, match="events.jsonl.gz"):
        again.events("s", "done")
    assert any("events.jsonl.gz" in p.message for p in again.verify().problems)
    result = CliRunner().invoke(main, ["--root", str(store.root), "show", "s/done"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_a_hard_linked_log_is_left_as_it_is(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", ledger=True)
    os.link(ep_dir(store, "done") / "events.jsonl", tmp_path / "other-name")
    report = store.compact()
    assert [p for p in report.problems if "s/done" in p and "hard links" in p]
    assert (ep_dir(store, "done") / "events.jsonl").exists()
    assert "done" not in {c.episode_id for c in report.compacted}


def test_the_cli_prints_the_space_saved(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", ledger=True)
    root = str(store.root)
    dry = cli("--root", root, "compact", "--dry-run")
    assert dry.startswith("would compress 4 files of 3 episodes") and "saved" in dry
    data = json.loads(cli("--root", root, "compact", "--json"))
    assert data["episodes"] == 3 and data["files"] == 4 and data["bytes_saved"] == data["bytes_before"] - data[
        "bytes_after"] > 0
    age(root, days=2 / DAY, only="s/recent")  # "recent" was touched 2 s ago (not 40 days): older than 1s now
    assert cli("--root", root, "compact", "--older-than", "1s").startswith("compressed 2 files of 1 episodes")
    result = CliRunner().invoke(main, ["--root", root, "compact", "--older-than", "soon"])
    assert result.exit_code == 2 and "expected an age" in result.output and "Traceback" not in result.output


def test_retention_older_than_comes_from_statekit_yaml(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", ledger=True)
    with open(Path(store.root, "statekit.yaml"), "a") as f:
        f.write("retention: {compress_old: true, older_than: 60d}\n")
    assert Store.open(store.root).compact().compacted == []  # 40 days old: not old enough
    assert len(Store.open(store.root).compact(older_than=timedelta(days=35)).compacted) == 3


# --- a kill -9 at every step: through the Disk seam, in a forked child ---------------------


class KillAt(Disk):
    """A disk that kills its own process (SIGKILL: no cleanup, no finally) at call ``at``."""

    overlap_syncs = False

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def _step(self) -> None:
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls += 1


def _killing(name: str) -> Any:
    original = getattr(Disk, name)

    def call(self: KillAt, *args: Any, **kwargs: Any) -> Any:
        self._step()
        return original(self, *args, **kwargs)

    return call


for _name in ("open", "mkstemp", "write", "fsync", "close", "replace", "rename", "truncate", "unlink", "link"):
    setattr(KillAt, _name, _killing(_name))


def killed_at(root: Path, at: int, work: str) -> bool:
    """Run ``work`` (compact, or a write to the compacted episode) in a forked child that
    dies at its ``at``-th disk call; True if it was killed, False if it finished first."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no cleanup
        signal.alarm(60)  # a child that hangs (a lock inherited across fork) dies of SIGALRM, and the test fails
        try:
            store = Store.open(root, disk=KillAt(at))
            if work == "compact":
                store.compact()
            else:
                store.update("s", "done", title="written again")
            os._exit(0)
        except BaseException:
            os._exit(3)
    _pid, status = os.waitpid(pid, 0)
    assert not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3), "the child failed"
    assert not os.WIFSIGNALED(status) or os.WTERMSIG(status) == signal.SIGKILL, "the child hung"
    return os.WIFSIGNALED(status)


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "older"])
@pytest.mark.parametrize("work", ["compact", "write"])
def test_kill_9_at_every_step_leaves_a_readable_episode(tmp_path: Path, ledger: bool, work: str) -> None:
    template = tmp_path / "template"
    store = Store.init(template, ledger=ledger)
    finish(store, "s", "done")
    age(template)
    if work == "write":
        store.compact()
    seen = views(Store.open(template), "done")
    store.close()
    for at in range(200):
        root = tmp_path / f"run{at}"
        shutil.copytree(template, root, symlinks=True)
        killed = killed_at(root, at, work)
        after = Store.open(root)
        now = views(after, "done")
        events = now.pop("events")
        if work == "write" and not killed or events != seen["events"]:
            # the write went through (or its event is the one uncommitted tail past the file)
            assert events[: len(seen["events"])] == seen["events"]
            assert len(events) == len(seen["events"]) + (now["get"]["title"] == "written again")
        else:
            assert {**now, "events": events} == seen, at
        # what is left is whole: a repair finds nothing lost, the next compaction and write work
        after.repair()
        assert after.verify().problems == [], (at, after.verify().problems)
        after.compact()
        after.update("s", "done", metadata={"after": at})
        assert Store.open(root).get("s", "done").metadata == {"after": at}
        shutil.rmtree(root)
        if not killed:
            assert at > 3
            return
    raise AssertionError("the work never finished within 200 disk calls")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_compact_and_writers_in_other_processes(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """Compaction (every episode always old enough) while another process keeps
    writing to the same finished episodes: the lock (a file lock, or a PostgreSQL
    advisory lock with a server index) serializes them, no event is lost."""
    root = tmp_path / "store"
    url = request.getfixturevalue("pg_url") if kind == "postgresql" else None
    store = Store.init(root, ledger=True, index_url=url)
    for n in range(4):
        finish(store, "s", f"e{n}", checkpoint=n % 2 == 0)
    store.close()
    writes = 15
    script = (
        "import sys\nfrom statekit import Store\n"
        "s = Store.open(sys.argv[1])\n"
        f"for i in range({writes}):\n"
        "    for n in range(4):\n"
        "        s.update('s', f'e{n}', metadata={'i': i})\n"
        "        s.save_checkpoint('s', f'e{n}', 'converting', {'i': i}) if i % 5 == 0 else None\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(root)])
    compactor = Store.open(root)
    rounds = 0
    while writer.poll() is None or rounds < 3:
        compactor.retention.compact(timedelta(seconds=1), now=time.time() + 10 * DAY)
        rounds += 1
    assert writer.wait() == 0
    final = Store.open(root)
    for n in range(4):
        versions = [e.version for e in final.events("s", f"e{n}")]
        assert versions == list(range(1, len(versions) + 1))
        assert final.get("s", f"e{n}").metadata == {"i": writes - 1}
        assert final.load_checkpoint("s", f"e{n}", "converting") == {"i": 10}
    assert final.verify().problems == []


def test_statekit_compact_killed_at_random_moments(tmp_path: Path) -> None:
    """The real command, killed with SIGKILL at a few moments while it compacts 30 episodes."""
    root = tmp_path / "store"
    store = Store.init(root, ledger=True)
    for n in range(30):
        finish(store, "s", f"e{n:02d}", checkpoint=n % 3 == 0)
    seen = {f"e{n:02d}": [e.model_dump(mode="json") for e in store.events("s", f"e{n:02d}")] for n in range(30)}
    store.close()
    age(root)
    for delay in (0.6, 0.8, 1.0):
        proc = subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", str(root), "compact"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check = Store.open(root)
        for ep, events in seen.items():
            assert [e.model_dump(mode="json") for e in check.events("s", ep)] == events
        assert check.verify().problems == []
        check.close()
    final = Store.open(root)
    final.compact()
    assert all(not (ep_dir(final, ep) / "events.jsonl").exists() for ep in seen)
    assert final.verify().problems == []


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "older"])
def test_sync_adopts_a_hand_edit_of_a_compacted_episode(tmp_path: Path, ledger: bool) -> None:
    store = make_store(tmp_path / "store", ledger)
    store.compact()
    events = [e.model_dump(mode="json") for e in store.events("s", "done")]
    path = ep_dir(store, "done") / "episode.yaml"
    path.write_text(path.read_text().replace("title: Episode done", "title: Edited by hand"))
    report = Store.open(store.root).sync()
    assert [c for c in report.changed if "s/done" in str(c)], report
    again = Store.open(store.root)
    now = [e.model_dump(mode="json") for e in again.events("s", "done")]
    assert now[:-1] == events and now[-1]["kind"] == "external_edit"
    assert again.get("s", "done").title == "Edited by hand"
    folder = ep_dir(store, "done")
    assert (folder / "events.jsonl").exists() and not (folder / "events.jsonl.gz").exists()
    assert again.verify().problems == []


def test_a_damaged_checkpoint_stays_damaged_and_repair_moves_it_out(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", ledger=True)
    cp = ep_dir(store, "done") / "checkpoints" / "converting.json"
    cp.write_bytes(cp.read_bytes().replace(b'"ep"', b'"EP"'))  # its sha256 no longer matches
    age(store.root, only="s/done")
    store.compact()
    assert not cp.exists() and Path(str(cp) + ".gz").exists()
    again = Store.open(store.root)
    with pytest.raises(CorruptFileError, match="converting.json"):
        again.load_checkpoint("s", "done", "converting")
    assert [p.kind for p in again.verify().problems] == ["checkpoint"]
    report = again.repair()
    assert any("damaged checkpoint" in a for a in report.actions), report.actions
    assert os.listdir(cp.parent) == []
    trash = [n for _f, _d, names in os.walk(Path(store.root, ".statekit", "trash")) for n in names]
    assert [n for n in trash if n.endswith(".checkpoint.converting.json.gz")]
    assert again.resume_stage("s", "done") is None and again.verify().problems == []
