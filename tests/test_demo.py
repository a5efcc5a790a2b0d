"""The demo (``statekit demo``): the archive pipeline over the sample data,
with injected failures, a worker killed with SIGKILL, and a restart."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import wave
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import Store
from statekit import objects as object_store
from statekit.cli import main
from statekit.demo import SAMPLE_DATA, DemoResult, Plan, read_catalog, run_demo

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make_sample_data.py"
# The demo the tests look at runs on a generated set, smaller than the shipped one (200 episodes) but
# with every case they check: 75 episodes is the fewest with >= 3 injected transient failures per stage,
# and an episode (number 51) names the clip that is not audio; 9 clips keep clip-07 (the stereo one) a
# real clip. The `plan` fixture asserts all of it, so a change of the generator or the plan fails there.
EPISODES, CLIPS = 75, 9
STEREO = "clip-07.wav"


def git_status() -> str | None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


Checkout = tuple[str | None, dict[str, str]]


def small_data(folder: Path, episodes: int = 40, clips: int = 6) -> Path:
    subprocess.run([sys.executable, str(SCRIPT), "--episodes", str(episodes), "--clips", str(clips),
                    "--seconds", "0.5", "--out", str(folder)], check=True, capture_output=True)
    return folder


def not_wav(audio: Path) -> set[str]:
    """The clips in ``audio`` that are not WAV files."""
    bad = set()
    for path in audio.glob("*.wav"):
        try:
            wave.open(str(path), "rb").close()
        except (wave.Error, EOFError):
            bad.add(path.name)
    return bad


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated set the demo runs on (once for the module)."""
    return small_data(tmp_path_factory.mktemp("data") / "archive", EPISODES, CLIPS)


@pytest.fixture(scope="module")
def not_audio(data: Path) -> str:
    (name,) = not_wav(data / "audio")  # exactly one clip is not audio
    return name


@pytest.fixture(scope="module")
def plan(data: Path, not_audio: str) -> Plan:
    """The plan of the generated set, checked to hold every case the tests below look at."""
    catalog = read_catalog(data)
    plan = Plan.of(catalog)
    assert len(plan.entries) == len(catalog) == EPISODES
    broken = {k for k, e in plan.entries.items() if e.audio == not_audio}
    assert broken, f"no episode names {not_audio}, the clip that is not audio"
    assert plan.never_uploads not in broken, "the upload that never gets through must convert first"
    assert 0 < len(plan.held_back) < len(plan.entries) - len(broken) - 1, "held-back and published episodes"
    with wave.open(str(data / "audio" / STEREO)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 22050), f"{STEREO} is not the stereo clip"
    # at least two (the kill may take one) stereo episodes that are neither skipped nor the never-upload
    assert len({k for k, e in plan.entries.items() if e.audio == STEREO} - {plan.never_uploads}) >= 2, STEREO
    for stage in ("downloading", "uploading"):  # >= 3 injected transient failures a stage
        injected = {k for k in plan.entries if k != plan.never_uploads and plan.fault(k, stage, 1) is not None}
        assert len(injected) >= 3, f"{len(injected)} injected transient failure(s) in {stage}"
    # the episodes that never convert never reach an upload, so none has an upload fault to retry
    assert not {k for k in broken if plan.fault(k, "uploading", 1) is not None}, "an upload fault never injected"
    assert 0 < plan.crash_at < len(plan.entries) - len(broken), "the kill happens in pass 1"
    return plan


def expected_skipped(plan: Plan, not_audio: str) -> set[str]:
    return {k for k, e in plan.entries.items() if e.audio == not_audio} | {plan.never_uploads}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, data: Path, plan: Plan
             ) -> tuple[DemoResult, list[str], Checkout, Checkout]:
    """One demo run on the generated set (module-wide: it takes seconds), with the checkout's state
    and the data folder's before and after."""
    def checkout() -> Checkout:
        return git_status(), {**tree(SAMPLE_DATA), **{f"data:{k}": v for k, v in tree(data).items()}}

    before = checkout()
    lines: list[str] = []
    result = run_demo(tmp_path_factory.mktemp("demo") / "run", data=data, say=lines.append)
    return result, lines, before, checkout()


@pytest.fixture
def demo(demo_run: tuple[DemoResult, list[str], Checkout, Checkout]) -> tuple[DemoResult, list[str]]:
    return demo_run[0], demo_run[1]


def test_the_demo_leaves_the_checkout_alone(demo_run: tuple[DemoResult, list[str], Checkout, Checkout]) -> None:
    result, _, (status_before, data_before), (status_after, data_after) = demo_run
    assert data_after == data_before  # the shipped sample data and the data the demo reads are never written
    assert "data:catalog.csv" in data_before
    assert status_after == status_before  # nothing tracked changed, nothing new appeared (git status --porcelain)
    assert REPO not in result.directory.parents


def test_every_episode_ends_where_the_demo_sends_it(demo: tuple[DemoResult, list[str]], plan: Plan,
                                                   not_audio: str) -> None:
    result, _ = demo
    store = Store.open(result.root)
    episodes = {m.key: m for m in store.list()}
    assert len(episodes) == result.episodes == len(plan.entries) == EPISODES
    for key, m in episodes.items():
        entry = plan.entries[key]
        if entry.audio == not_audio:
            assert m.stage == "skipped", key
            assert m.error_history[-1].kind == "permanent_file_corruption"
            assert f"{not_audio} is not a WAV file" in (m.message or "")
        elif key == plan.never_uploads:
            assert m.stage == "skipped", key
            assert m.attempts["uploading"] == 3 and "3 of 3 attempts used" in (m.message or "")
        elif key in plan.held_back:
            assert m.stage == "scheduled", key
        else:
            assert m.stage == "published", key
    skipped = [k for k, m in episodes.items() if m.stage == "skipped"]
    assert set(skipped) == expected_skipped(plan, not_audio) and Counter(m.stage for m in episodes.values()) == Counter(result.counts)


def test_the_killed_worker_is_the_one_interrupted_run_and_is_recovered(demo: tuple[DemoResult, list[str]]) -> None:
    result, lines = demo
    store = Store.open(result.root)
    interrupted = [(m.key, e) for m in store.list() for e in m.error_history if e.kind == "interrupted"]
    assert [key for key, _ in interrupted] == [result.crashed] == result.recovered
    error = interrupted[0][1]
    assert error.stage == "converting" and error.action == "retry" and "worker-1" in error.message
    show, ep = result.crashed.split("/")
    m = store.get(show, ep)
    assert m.stage in ("published", "scheduled") and m.attempts["converting"] == 2
    assert [e.kind for e in store.events(show, ep)].count("recovered") == 1
    assert any(line.startswith("  kill -9 ") and result.crashed in line for line in lines)
    assert not (result.root / ".statekit" / "tmp" / "runs").exists() or not any(
        (result.root / ".statekit" / "tmp" / "runs").iterdir())  # the dead run's temp file was collected


def test_transient_failures_are_retried_as_injected(demo: tuple[DemoResult, list[str]], plan: Plan,
                                                    not_audio: str) -> None:
    result, _ = demo
    store = Store.open(result.root)
    for stage in ("downloading", "uploading"):
        injected = {k for k in plan.entries if k != plan.never_uploads and plan.fault(k, stage, 1) is not None}
        failed = {m.key for m in store.list() for e in m.error_history
                  if e.stage == stage and e.kind == "transient_network" and m.key != plan.never_uploads}
        assert failed == injected and len(injected) >= 3
        for key in injected:
            m = store.get(*key.split("/"))
            assert m.attempts[stage] == 2 and m.error_history[0].action == "retry"
            assert m.stage in ("published", "scheduled") or plan.entries[key].audio == not_audio
    retried = sum(sum(p.retried.values()) for p in result.passes)
    assert retried == sum(1 for m in store.list() for e in m.error_history
                          if e.action == "retry" and e.kind != "interrupted")


def test_the_restart_redoes_no_finished_stage(demo: tuple[DemoResult, list[str]]) -> None:
    result, lines = demo
    first, second = result.passes
    assert result.redone == [] and "  finished stages run again: 0" in "\n".join(lines)
    assert result.already_done == first.done > 0 and first.done + second.done == result.episodes
    assert first.created == result.episodes and second.created == 0
    store = Store.open(result.root)
    for m in store.list():  # from the audit log: no run stage finished twice
        finishes = Counter(e.from_stage for e in store.events(m.show_id, m.episode_id) if e.kind == "finish")
        assert all(n == 1 for n in finishes.values()), (m.key, finishes)


def test_assets_are_stored_once_and_uploads_match_them(demo: tuple[DemoResult, list[str]], plan: Plan,
                                                       data: Path, not_audio: str) -> None:
    result, _ = demo
    store = Store.open(result.root)
    objects = {sha for sha, path, _ in object_store.stored_objects(str(result.root)) if sha and not path.endswith(".json")}
    clips = {e.audio for e in plan.entries.values()}
    assert result.objects == len(objects) == 2 * len(clips) - 1  # each clip once, each converted clip once
    uploaded = sorted(result.uploads.rglob("audio.wav"))
    done = [m for m in store.list() if m.stage in ("published", "scheduled")]
    assert len(uploaded) == len(done) == len(plan.entries) - len(expected_skipped(plan, not_audio))
    for m in done:
        source = data / "audio" / plan.entries[m.key].audio
        assert m.assets["source.wav"].sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        target = result.uploads / m.show_id / m.episode_id / "audio.wav"
        assert hashlib.sha256(target.read_bytes()).hexdigest() == m.assets["audio.wav"].sha256
        assert store.load_checkpoint(m.show_id, m.episode_id, "uploading")["url"] == target.as_uri()  # type: ignore[index]
    assert store.verify().clean and result.verify_clean


def test_convert_downmixes_resamples_and_normalises(demo: tuple[DemoResult, list[str]], plan: Plan,
                                                    data: Path) -> None:
    result, _ = demo
    store = Store.open(result.root)
    stereo = next(k for k, e in plan.entries.items() if e.audio == STEREO and k not in
                  (plan.never_uploads, result.crashed))
    show, ep = stereo.split("/")
    measured = store.load_checkpoint(show, ep, "converting")
    assert measured is not None
    assert measured["source"] == {**measured["source"], "rate": 22050, "channels": 2}
    with wave.open(str(result.uploads / show / ep / "audio.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        pcm = w.readframes(w.getnframes())
        # the audio's length (not a timing): frames, within 1/100 s of the measured length
        assert abs(w.getnframes() - measured["duration_s"] * 16000) < 16000 / 100
    samples = memoryview(pcm).cast("h")
    assert 0.88 < max(abs(s) for s in samples) / 32767 <= 0.892  # -1 dBFS
    with wave.open(str(data / "audio" / STEREO)) as w:
        rate = w.getframerate()
        assert abs(w.getnframes() - measured["duration_s"] * rate) < rate / 100


def test_the_report_is_written(demo: tuple[DemoResult, list[str]], plan: Plan, not_audio: str) -> None:
    result, _ = demo
    assert result.report == result.directory / "report.html"
    page = result.report.read_text()
    assert page.lower().startswith("<!doctype html") and page.count("<svg") == 3
    assert f'<div class="label">Episodes</div><div class="value">{len(plan.entries)}<' in page  # the episodes card
    for skipped in sorted(expected_skipped(plan, not_audio)):
        show, ep = skipped.split("/")  # listed under "needs attention"
        assert f'{show}/</span><wbr><span class="nowrap">{ep}<' in page


def test_cli_demo_on_a_small_generated_set(tmp_path: Path) -> None:
    data = small_data(tmp_path / "data")
    result = CliRunner().invoke(main, ["demo", str(tmp_path / "run"), "--data", str(data)])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in ("over 40 episodes of 3 shows", "kill -9 ", "recover: ", "interrupted, ready again",
                     "the catalog again: 0 new episodes", "finished stages run again: 0",
                     "-> published", "refused: illegal move 'skipped' -> 'published'", "verify: ok",
                     f"report: {tmp_path / 'run' / 'report.html'}",
                     f"dashboard: statekit --root {tmp_path / 'run' / 'store'} serve"):
        assert expected in out, expected
    assert "  pass 2: 40/40 episodes" in out  # piped: plain progress lines, no bar
    assert "Traceback" not in out
    counts = Counter(m.stage for m in Store.open(tmp_path / "run" / "store").list())
    assert sum(counts.values()) == 40 and set(counts) <= {"published", "scheduled", "skipped"}


def test_cli_demo_refuses_a_used_directory_and_the_sample_data(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    for target, expected in ((tmp_path / "used", "is not a new or empty directory"),
                             (SAMPLE_DATA / "out", "does not write inside the sample data")):
        result = CliRunner().invoke(main, ["demo", str(target)])
        assert result.exit_code == 2 and expected in result.output, result.output
    assert not (SAMPLE_DATA / "out").exists()
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "used").iterdir())) == 1


def test_sample_data_is_small_and_regenerates_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    assert tree(tmp_path) == tree(SAMPLE_DATA)
    assert sum(p.stat().st_size for p in SAMPLE_DATA.rglob("*") if p.is_file()) < 5e6
    catalog = read_catalog(SAMPLE_DATA)
    assert len(catalog) == 200 and len({e.key for e in catalog}) == 200
    assert len({e.audio for e in catalog}) == 24 and {e.show for e in catalog} == {
        "hooting-yard", "tidal-notes", "lamp-room"}
