"""Content-addressed assets: stored once, durable, verified, collected."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import AssetNotFoundError, CorruptFileError, Store, ValidationError
from statekit.cli import main
from statekit.errors import InvalidIdError, StorageError, UnsafePathError
from statekit.files import Disk, temp_files
from statekit.objects import object_path
from tests.conftest import episode_file, snapshot
from tests.test_faults import FaultyDisk

ROOT = Path(__file__).resolve().parent.parent


def objects(store: Store) -> list[str]:
    """Stored objects (not sidecars, not temp files), as hashes."""
    top = Path(store.root, "objects")
    return sorted(p.name for p in top.glob("*/*") if not p.name.endswith(".json")) if top.exists() else []


def wav(tmp_path: Path, name: str = "a.wav", size: int = 300_000, seed: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(b"RIFF" + hashlib.sha256(str(seed).encode()).digest() * (size // 32))
    return path


@pytest.fixture
def ep(store: Store) -> Store:
    store.create("s", "e", title="One")
    store.create("s", "f", title="Two")
    return store


def test_an_asset_is_stored_once_by_its_hash_and_recorded(ep: Store, tmp_path: Path) -> None:
    source = wav(tmp_path)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    one = ep.add_asset("s", "e", source)
    assert one.version == 2 and list(one.assets) == ["a.wav"]
    record = one.assets["a.wav"]
    assert (record.sha256, record.size, record.kind, record.media_type) == (
        digest, source.stat().st_size, "audio", "audio/x-wav")
    assert record.source == str(source)
    two = ep.add_asset("s", "f", source, name="audio.wav")
    assert two.assets["audio.wav"].sha256 == digest
    assert objects(ep) == [digest]  # the same bytes in two episodes: one object
    stored = Path(object_path(ep.root, digest))
    assert stored.read_bytes() == source.read_bytes()
    sidecar = json.loads(Path(str(stored) + ".json").read_text())
    assert sidecar["sha256"] == digest and sidecar["size"] == record.size and sidecar["media_type"] == "audio/x-wav"
    assert sidecar["source"] == str(source) and sidecar["created_at"]
    # people find the media in the episode folder: a hard link, no copy
    link = Path(ep.root, "shows/s/episodes/e/assets/a.wav")
    assert os.path.samestat(link.stat(), stored.stat())
    assert ep.asset_path("s", "f", "audio.wav") == str(stored)
    events = ep.events("s", "e")
    assert events[-1].kind == "asset" and events[-1].model_extra["asset"] == "a.wav"  # type: ignore[index]
    # adding the same content under the same name again writes nothing
    assert ep.add_asset("s", "e", source).version == 2
    # the index keeps the copy the files have
    assert ep.verify().clean


def test_bytes_are_assets_too_and_a_new_content_replaces_the_name(ep: Store, tmp_path: Path) -> None:
    first = ep.add_asset("s", "e", b"\xff\xd8 first", kind="image", name="thumbnail.jpg")
    assert first.assets["thumbnail.jpg"].media_type == "image/jpeg"
    assert first.assets["thumbnail.jpg"].source is None
    second = ep.add_asset("s", "e", b"\xff\xd8 second", kind="image", name="thumbnail.jpg")
    assert second.assets["thumbnail.jpg"].sha256 == hashlib.sha256(b"\xff\xd8 second").hexdigest()
    assert ep.events("s", "e")[-1].model_extra["replaced"] == first.assets["thumbnail.jpg"].sha256  # type: ignore[index]
    link = Path(ep.root, "shows/s/episodes/e/assets/thumbnail.jpg")
    assert link.read_bytes() == b"\xff\xd8 second"


def test_a_large_file_is_streamed_not_loaded(ep: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for i in range(48):
            f.write(hashlib.sha256(str(i).encode()).digest() * 32768)  # 48 MB
    tracemalloc.start()
    try:
        record = ep.add_asset("s", "e", big, kind="video").assets["big.bin"]
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"add_asset held {peak / 1e6:.1f} MB for a 48 MB file"
    assert record.size == big.stat().st_size
    with open(big, "rb") as f:
        assert record.sha256 == hashlib.file_digest(f, "sha256").hexdigest()


def test_bad_input_is_refused_and_changes_nothing(ep: Store, tmp_path: Path) -> None:
    before = snapshot(ep.root)
    source = wav(tmp_path)
    cases = [
        (lambda: ep.add_asset("s", "e", tmp_path / "missing.wav"), ValidationError, "does not exist"),
        (lambda: ep.add_asset("s", "e", tmp_path), ValidationError, "not a regular file"),
        (lambda: ep.add_asset("s", "e", 42), ValidationError, "file path or bytes"),  # type: ignore[arg-type]
        (lambda: ep.add_asset("s", "e", source, name="../x"), InvalidIdError, "asset name"),
        (lambda: ep.add_asset("s", "e", source, kind="Audio Files"), InvalidIdError, "asset kind"),
        (lambda: ep.add_asset("s", "e", source, media_type="wav"), ValidationError, "media_type"),
        (lambda: ep.add_asset("s", "nope", source), Exception, "not found"),
        (lambda: ep.asset_path("s", "e", "nothing.wav"), AssetNotFoundError, "no asset 'nothing.wav'"),
        (lambda: ep.verify_asset("s", "e", "nothing.wav"), AssetNotFoundError, "no asset"),
        (lambda: ep.remove_asset("s", "e", "nothing.wav"), AssetNotFoundError, "no asset"),
        (lambda: ep.record_uploads("s", "e", {}), ValidationError, "non-empty mapping"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind, match=words):
            call()
    assert snapshot(ep.root) == before
    assert not Path(ep.root, "objects").exists() or objects(ep) == []


def test_a_damaged_asset_is_found_by_verify_and_by_verify_asset(ep: Store, tmp_path: Path) -> None:
    ep.add_asset("s", "e", wav(tmp_path), name="audio.wav")
    ep.add_asset("s", "f", wav(tmp_path, "b.wav", seed=2), name="audio.wav")
    assert ep.verify().assets == 2
    path = Path(ep.asset_path("s", "e", "audio.wav"))
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="no longer matches") as caught:
        ep.verify_asset("s", "e", "audio.wav")
    assert caught.value.path == str(path)
    report = ep.verify()
    assert [(p.kind, p.path) for p in report.problems] == [("asset", str(path))]
    path.unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        ep.verify_asset("s", "e", "audio.wav")
    assert "audio.wav" in ep.verify().problems[0].message
    # the copy in the episode folder, replaced by other content (a new file, not the link)
    copy = Path(ep.root, "shows/s/episodes/f/assets/audio.wav")
    copy.unlink()
    copy.write_bytes(b"something else")
    problems = [p for p in ep.verify().problems if p.episode == "s/f"]
    assert len(problems) == 1 and problems[0].path == str(copy) and "differs" in problems[0].message


def test_a_run_verifies_its_assets_before_and_after_the_work(ep: Store, tmp_path: Path) -> None:
    ep.add_asset("s", "e", wav(tmp_path), name="raw.wav")
    ep.advance("s", "e", "downloading")
    ep.advance("s", "e", "downloaded")
    with ep.run("s", "e", "converting", verify_assets=["raw.wav"]) as run:
        assert run.asset("raw.wav") == ep.asset_path("s", "e", "raw.wav")
        run.add_asset(b"converted", name="audio.mp3", kind="audio")
    done = ep.get("s", "e")
    assert done.stage == "converted" and "audio.mp3" in done.assets
    assert ep.events("s", "e")[-2].kind == "asset"
    assert ep.events("s", "e")[-2].model_extra["run_id"] == run.run_id  # type: ignore[index]

    # after: the work damaged its input; the stage does not count as done
    ep.create("s", "g")
    ep.add_asset("s", "g", wav(tmp_path, "g.wav", seed=3), name="raw.wav")
    for stage in ("downloading", "downloaded"):
        ep.advance("s", "g", stage)
    with (pytest.raises(CorruptFileError, match="after stage 'converting'"),
          ep.run("s", "g", "converting", verify_assets=("raw.wav",))):
        Path(ep.asset_path("s", "g", "raw.wav")).write_bytes(b"truncated")
    g = ep.get("s", "g")
    assert g.stage == "skipped" and g.error_history[-1].kind == "permanent_file_corruption"  # policy: give up
    assert g.lease is None and "raw.wav" in g.error_history[-1].message

    # before: a damaged input fails the run before its body
    ep.create("s", "h")
    ep.add_asset("s", "h", wav(tmp_path, "h.wav", seed=4), name="raw.wav")
    for stage in ("downloading", "downloaded"):
        ep.advance("s", "h", stage)
    Path(ep.asset_path("s", "h", "raw.wav")).unlink()
    ran = []
    with (pytest.raises(CorruptFileError, match="before stage 'converting'"),
          ep.run("s", "h", "converting", verify_assets=["raw.wav"])):
        ran.append(True)
    h = ep.get("s", "h")
    assert not ran and h.lease is None and h.error_history[-1].kind == "permanent_file_corruption"


def test_run_temp_files_are_removed_however_the_run_ends(ep: Store) -> None:
    ep.advance("s", "e", "downloading")
    paths = []
    with ep.run("s", "e", "downloading") as run:
        for suffix in (".wav", ".part"):
            path = run.temp_path(suffix)
            Path(path).write_bytes(b"x" * 100)
            paths.append(path)
        assert all(os.path.exists(p) for p in paths)
    assert not any(os.path.exists(p) for p in paths)
    assert not Path(ep.root, ".statekit/tmp/runs", run.run_id).exists()
    with pytest.raises(RuntimeError), ep.run("s", "f", "downloading") as run:
        path = run.temp_path(".wav")
        Path(path).write_bytes(b"y")
        raise RuntimeError("boom")
    assert not os.path.exists(path)
    ep.create("s", "k")
    with pytest.raises(ValidationError, match="suffix"), ep.run("s", "k", "downloading") as run:
        run.temp_path("a/b")


def test_gc_removes_the_temp_folder_of_a_run_that_died(ep: Store) -> None:
    dead = Path(ep.root, ".statekit/tmp/runs/0123456789abcdef")
    dead.mkdir(parents=True)
    (dead / "part.wav").write_bytes(b"z" * 5000)
    ep.advance("s", "e", "downloading")
    with ep.run("s", "e", "downloading") as run:
        live = Path(run.temp_path(".wav"))
        live.write_bytes(b"live")
        planned = ep.gc_run_temp(dry_run=True)
        assert [(r.path, r.size) for r in planned] == [(".statekit/tmp/runs/0123456789abcdef", 5000)]
        assert dead.exists()
        assert [r.path for r in ep.gc_run_temp()] == [".statekit/tmp/runs/0123456789abcdef"]
        assert not dead.exists() and live.exists()  # the live run keeps its files


def test_gc_removes_only_objects_nothing_refers_to(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store", backups=0)
    store.create("s", "e")
    store.create("s", "f")
    keep = store.add_asset("s", "e", wav(tmp_path, seed=1)).assets["a.wav"].sha256
    store.add_asset("s", "f", wav(tmp_path, seed=1))  # the same content
    drop = store.add_asset("s", "e", b"thumbnail", name="thumb.jpg").assets["thumb.jpg"].sha256
    assert store.gc_objects().removed == []
    store.remove_asset("s", "e", "thumb.jpg")
    assert not Path(store.root, "shows/s/episodes/e/assets/thumb.jpg").exists()
    planned = store.gc_objects(dry_run=True)
    assert sorted((Path(r.path).name, r.reason) for r in planned.removed) == [
        (drop, "unreferenced"), (drop + ".json", "sidecar of an unreferenced object")]
    assert objects(store) == sorted([keep, drop])  # a dry run removes nothing
    sidecar_size = Path(store.root, planned.removed[1].path).stat().st_size
    report = store.gc_objects()
    assert report.freed == len(b"thumbnail") + sidecar_size
    assert objects(store) == [keep]
    assert report.objects == 2 and report.referenced == 1
    # an asset still named by one episode stays after the other drops it
    store.remove_asset("s", "e", "a.wav")
    assert store.gc_objects().removed == [] and objects(store) == [keep]
    # a damaged episode file still keeps what it names (read as text)
    path = episode_file(store, "s", "f")
    path.write_text(path.read_text().replace("stage:", "stage: [", 1))
    assert store.gc_objects().removed == [] and objects(store) == [keep]


def test_backups_and_the_trash_keep_their_objects(store: Store, tmp_path: Path) -> None:
    store.create("s", "e")
    sha = store.add_asset("s", "e", b"kept by a backup", name="x.bin").assets["x.bin"].sha256
    store.remove_asset("s", "e", "x.bin")
    assert store.gc_objects().removed == []  # backup 1 names it: a restore would need it
    store.restore("s", "e", 1)
    assert store.verify_asset("s", "e", "x.bin")
    store.delete("s", "e")
    assert store.gc_objects().removed == [] and objects(store) == [sha]  # the trash names it


def test_a_failed_write_at_any_step_leaves_no_temp_file_and_the_episode_as_it_was(tmp_path: Path) -> None:
    source = wav(tmp_path, size=3 * 1024 * 1024)  # several chunks
    root = tmp_path / "store"
    Store.init(root).create("s", "e")
    disk = FaultyDisk()
    Store.open(root, disk=disk).add_asset("s", "e", source)
    steps = len(disk.steps)
    assert steps > 8
    for errno_ in (errno.ENOSPC, errno.EIO):
        for fail_at in range(steps):
            fresh = tmp_path / f"run-{errno_}-{fail_at}"
            Store.init(fresh).create("s", "e")
            before = episode_file(Store.open(fresh), "s", "e").read_bytes()
            disk = FaultyDisk()
            disk.fail_at, disk.errno = fail_at, errno_
            store = Store.open(fresh, disk=disk)
            try:
                ep = store.add_asset("s", "e", source)
            except StorageError as exc:
                assert os.strerror(errno_) in str(exc) or exc.errno == errno_, (disk.failed, exc)
                assert episode_file(store, "s", "e").read_bytes() == before, disk.failed
            else:  # the failure hit a best-effort step (the link in the episode folder)
                assert "a.wav" in ep.assets, disk.failed
                assert store.verify_asset("s", "e", "a.wav")
            assert temp_files(os.path.join(fresh, "objects")) == [], disk.failed
            for folder in Path(fresh, "objects").glob("*"):
                assert temp_files(str(folder)) == [], disk.failed
            clean = Store.open(fresh)
            clean.gc_objects()  # an object stored before the failure, never recorded, is collected
            assert clean.verify().clean, (disk.failed, clean.verify().problems)
            if "a.wav" not in clean.get("s", "e").assets:
                assert objects(clean) == [], disk.failed


KILLED_ADD = textwrap.dedent("""
    import os, sys, time
    from statekit import Store
    from statekit.files import Disk

    class Slow(Disk):
        copies = 0
        def copy_range(self, src, dst, count):
            Slow.copies += 1
            if Slow.copies == 2:  # 8 MB are in the temp file
                open(sys.argv[3], "w").close()
                time.sleep(60)
            return super().copy_range(src, dst, count)

    Store.open(sys.argv[1], disk=Slow()).add_asset("s", "e", sys.argv[2])
""")


def test_kill_9_in_the_middle_of_a_copy_leaves_a_temp_file_gc_removes(ep: Store, tmp_path: Path) -> None:
    source = wav(tmp_path, size=20 * 1024 * 1024)
    marker = tmp_path / "writing"
    before = episode_file(ep, "s", "e").read_bytes()
    child = subprocess.Popen([sys.executable, "-c", KILLED_ADD, ep.root, str(source), str(marker)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child never got to write"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = temp_files(os.path.join(ep.root, "objects"))
    assert len(left) == 1 and os.path.getsize(left[0]) > 0
    assert episode_file(ep, "s", "e").read_bytes() == before and ep.get("s", "e").assets == {}
    report = ep.gc_objects()
    assert [(r.path, r.reason) for r in report.removed] == [(os.path.relpath(left[0], ep.root), "interrupted write")]
    assert temp_files(os.path.join(ep.root, "objects")) == []
    ep.add_asset("s", "e", source)  # and the same add works afterwards
    assert ep.verify().clean


GC_RACE = textwrap.dedent("""
    import sys
    from statekit import Store
    store = Store.open(sys.argv[1], lock_timeout=30)
    if sys.argv[2] == "gc":
        for _ in range(int(sys.argv[3])):
            store.gc_objects()
    else:
        for i in range(int(sys.argv[3])):
            store.add_asset("s", sys.argv[2], f"{sys.argv[2]} content {i}".encode(), name="a.bin")
""")


def test_gc_never_removes_an_object_a_concurrent_add_is_recording(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store", backups=0)  # every replaced object becomes garbage at once
    for ep in ("e", "f"):
        store.create("s", ep)
    procs = [subprocess.Popen([sys.executable, "-c", GC_RACE, store.root, who, n], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
             for who, n in (("gc", "150"), ("e", "120"), ("f", "120"))]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    for ep in ("e", "f"):
        assert store.get("s", ep).assets["a.bin"].size > 0
        assert Path(store.verify_asset("s", ep, "a.bin")).read_bytes() == f"{ep} content 119".encode()
    store.gc_objects()
    assert len(objects(store)) == 2 and store.verify().clean


def test_a_symlinked_object_folder_is_refused(ep: Store, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, Path(ep.root, "objects"))
    with pytest.raises(UnsafePathError):
        ep.add_asset("s", "e", b"data")
    assert list(elsewhere.iterdir()) == []


def test_uploads_are_recorded_against_the_content_they_uploaded(ep: Store) -> None:
    sha = ep.add_asset("s", "e", b"audio bytes", name="audio.wav").assets["audio.wav"].sha256
    record = {"url": "gs://b/audio/1/audio.wav", "bucket": "b", "object": "audio/1/audio.wav", "generation": 7,
              "sha256": sha, "at": "2026-01-01T00:00:00Z"}
    done = ep.record_uploads("s", "e", {"audio.wav": record})
    assert done.uploads["audio.wav"].url == "gs://b/audio/1/audio.wav"
    assert ep.events("s", "e")[-1].kind == "upload"
    assert ep.record_uploads("s", "e", {"audio.wav": record}).version == done.version  # nothing new
    with pytest.raises(ValidationError, match="not the content that was uploaded"):
        ep.record_uploads("s", "e", {"audio.wav": {**record, "sha256": "0" * 64}})
    with pytest.raises(AssetNotFoundError):
        ep.record_uploads("s", "e", {"other.wav": record})
    with pytest.raises(ValidationError, match="upload record for 'audio.wav'"):
        ep.record_uploads("s", "e", {"audio.wav": {**record, "url": ""}})
    # new content under the name: the old upload no longer describes it
    assert ep.add_asset("s", "e", b"new audio", name="audio.wav").uploads == {}


def test_the_cli_adds_lists_verifies_and_collects(ep: Store, tmp_path: Path) -> None:
    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, ["--root", ep.root, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    source = wav(tmp_path)
    assert "s/e: asset a.wav = sha256 " in run("asset", "add", "s/e", str(source))
    assert "asset cover.jpg" in run("asset", "add", "s/e", str(source), "--name", "cover.jpg", "--kind", "image",
                                    "--media-type", "image/jpeg")
    listing = json.loads(run("asset", "list", "s/e", "--json"))
    assert sorted(listing) == ["a.wav", "cover.jpg"] and listing["a.wav"]["upload"] is None
    assert "a.wav" in run("asset", "list", "s/e")
    assert run("asset", "verify", "s/e").count("ok ") == 2
    Path(ep.asset_path("s", "e", "a.wav")).write_bytes(b"damaged")
    assert "damaged a.wav" in run("asset", "verify", "s/e", code=1)
    assert "asset 'a.wav' of s/e" in run("verify", code=1)
    missing = run("asset", "add", "s/e", str(tmp_path / "none.wav"), code=2)
    assert "does not exist" in missing and "Traceback" not in missing
    assert "no asset 'x'" in run("asset", "verify", "s/e", "x", code=2)
    run("asset", "add", "s/f", str(wav(tmp_path, "other.wav", seed=9)))
    ep.remove_asset("s", "f", "other.wav")
    dry = json.loads(run("gc", "--dry-run", "--json"))
    assert dry["dry_run"] and dry["assets"] == []  # its backups (younger than 30 days) still name it
    dry = json.loads(run("gc", "--dry-run", "--json", "--backups-older-than", "0s"))
    assert [a["reason"] for a in dry["assets"]] == ["unreferenced", "sidecar of an unreferenced object"]
    assert dry["freed"] == sum(r["size"] for part in ("assets", "backups", "temp", "cache") for r in dry[part])
    out = run("gc", "--backups-older-than", "0s")
    assert "unreferenced" in out and "freed" in out
    assert "would remove 0 backups (0 B), 0 assets (0 B)" in run("gc", "--dry-run", "--backups-older-than", "0s")


def test_disk_seam_is_used_for_every_object_write(ep: Store, tmp_path: Path) -> None:
    disk = FaultyDisk()
    store = Store.open(ep.root, disk=disk)
    store.add_asset("s", "e", wav(tmp_path))
    assert {"mkstemp", "write", "fsync", "close", "replace"} <= set(disk.steps)
    assert isinstance(disk, Disk)


class NoKernelCopy(Disk):
    """A file system (or kernel) without copy_file_range between these files."""

    def copy_range(self, src: int, dst: int, count: int) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))


def test_without_a_kernel_copy_the_file_is_copied_through_a_buffer(ep: Store, tmp_path: Path) -> None:
    source = wav(tmp_path, size=3 * 1024 * 1024 + 17)
    store = Store.open(ep.root, disk=NoKernelCopy())
    record = store.add_asset("s", "e", source).assets["a.wav"]
    assert record.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert Path(store.verify_asset("s", "e", "a.wav")).read_bytes() == source.read_bytes()


def test_show_lists_assets_and_their_events(ep: Store) -> None:
    sha = ep.add_asset("s", "e", b"abc", name="clip.wav").assets["clip.wav"].sha256
    ep.record_uploads("s", "e", {"clip.wav": {"url": "gs://b/audio/x/audio.wav", "bucket": "b",
                                              "object": "audio/x/audio.wav", "sha256": sha,
                                              "at": "2026-01-01T00:00:00Z"}})
    ep.remove_asset("s", "e", "clip.wav")
    result = CliRunner().invoke(main, ["--root", ep.root, "show", "s/e"], catch_exceptions=False)
    assert f"stored clip.wav ({sha[:12]}…)" in result.output
    assert "uploaded clip.wav" in result.output and "removed clip.wav" in result.output
    ep.add_asset("s", "e", b"abc", name="clip.wav")
    result = CliRunner().invoke(main, ["--root", ep.root, "show", "s/e"], catch_exceptions=False)
    assert f"clip.wav: audio, 3 B, sha256 {sha[:12]}…" in result.output


def test_gc_collects_expired_cache_entries_too(ep: Store) -> None:
    from datetime import timedelta

    from statekit.cache import Cache, cache_key

    result = CliRunner().invoke(main, ["--root", ep.root, "gc"], catch_exceptions=False)
    assert "0 cache (0 B)" in result.output
    assert not Path(ep.root, ".statekit/cache/cache.db").exists()  # gc made no cache
    now = ep.clock()
    with Cache.for_store(ep, clock=lambda: now - timedelta(days=40)) as cache:
        cache.set(cache_key({"url": "https://example.org/a.jpg"}), b"x" * 5000, kind="media")  # expires after 30 d
        cache.set(cache_key({"voice": "a", "text": "hi"}), b"y" * 7000, kind="tts")  # 90 d: still good
    out = CliRunner().invoke(main, ["--root", ep.root, "gc", "--json"], catch_exceptions=False).output
    report = json.loads(out)
    assert [(r["size"], r["reason"]) for r in report["cache"]] == [(5000, "cache entry, expired")]
    assert report["freed"] >= 5000
