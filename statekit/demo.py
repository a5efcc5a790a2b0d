"""The archive demo: about 200 episodes migrated through the ``archive`` pipeline.

``statekit demo [DIR]`` (``make demo``) builds a store from the sample data
(``data/archive``: a catalog and short WAV clips, made by
``scripts/make_sample_data.py``) and does real local work in leased stage
runs (``Store.run``):

- downloading: copy the episode's clip into the store as an asset (stored by
  content: the clips episodes share are stored once);
- converting: decode the WAV with the standard library, downmix to mono,
  resample to 16 kHz, peak-normalise, measure duration and loudness; the
  result is an asset, the measurements a checkpoint;
- uploading: copy the converted audio to ``DIR/uploads/<show>/<ep>/audio.wav``
  (atomically) and checkpoint where it went;
- then uploaded -> scheduled -> published (the newest episodes of each show
  stay scheduled for later).

Faults are injected, all deterministic: some downloads and uploads fail once
with a network error and are retried after the store's (short, for the demo)
backoff; one clip is not audio, so its episodes are skipped as a permanent
failure; one upload never gets through and is skipped when its attempts are
used up. Pass 1 runs in a worker process that is killed with SIGKILL in the
middle of a converting run, as if the machine went down. Pass 2 opens the
store again, recovers the dead worker's episode once its lease has run out,
and finishes the rest without redoing any finished stage (checked from the
attempt counts). Then the store is verified and the HTML report written.

Pass 2 runs two worker threads on one store: leases and version checks keep
them off each other's episodes. ``DIR`` must be new or empty; the demo writes
only there (``store/``, ``uploads/``, ``report.html``, ``pass1-worker.log``)
and only reads the sample data.

Nothing here prints: ``run_demo`` says what happens through callbacks and the
CLI renders it. The pass-1 worker is this module run as a process
(``python -m statekit.demo worker ...``), reporting one JSON line per step.
"""

from __future__ import annotations

import argparse
import array
import csv
import errno
import json
import math
import operator
import os
import signal
import subprocess
import sys
import threading
import time
import wave
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import objects as object_store
from .errors import (
    AudioProcessingError,
    InvalidTransitionError,
    LeaseExpiredError,
    NotReadyError,
    ValidationError,
    VersionConflictError,
)
from .models import Episode
from .pipeline import ARCHIVE, Pipeline
from .runs import Run
from .store import Store

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "data" / "archive"
CATALOG_FIELDS = ("show", "show_title", "episode", "date", "title", "identifier", "audio")
TARGET_RATE = 16_000
PEAK = 10 ** (-1 / 20)  # normalise to -1 dBFS
LEASE_SECONDS = 1.0  # short, so the demo need not wait long for a dead worker's lease to run out
AUDIO_SECONDS_PER_LEASE_SECOND = 20  # longer clips (bigger generated sets) get a longer lease
BATCH = 16  # episodes a worker asks next() for at a time
WORKERS = 2  # pass 2's worker threads
DONE = ("published", "scheduled", "skipped")  # where an episode's work in the demo ends
WORKER_TIMEOUT = 300.0

Note = Callable[[dict[str, Any]], None]


def demo_pipeline(lease_seconds: float = LEASE_SECONDS) -> Pipeline:
    """The ``archive`` preset with a retry policy for a demo: backoffs of a
    tenth of a second instead of minutes, and a short lease."""
    config = ARCHIVE.to_config()
    config["retry"] = {**config["retry"], "initial": 0.05, "maximum": 0.2, "jitter": 0.05,
                       "lease_seconds": lease_seconds}
    return Pipeline.model_validate(config)


def lease_for(audio: Path) -> float:
    """A lease long enough to convert the longest clip without a heartbeat
    (the WAV headers say how long; files that are not WAV count as nothing)."""
    longest = 0.0
    for path in audio.glob("*.wav"):
        try:
            with wave.open(str(path), "rb") as w:
                longest = max(longest, w.getnframes() / max(1, w.getframerate()))
        except (wave.Error, EOFError):
            continue
    return max(LEASE_SECONDS, round(longest / AUDIO_SECONDS_PER_LEASE_SECOND, 1))


# --- the sample data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One row of ``catalog.csv``."""

    show: str
    show_title: str
    episode: str
    date: str
    title: str
    identifier: str
    audio: str

    @property
    def key(self) -> str:
        return f"{self.show}/{self.episode}"


def read_catalog(data: Path) -> list[Entry]:
    path = data / "catalog.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValidationError(f"no sample data at {data} (no catalog.csv)",
                              hint="make it with 'python scripts/make_sample_data.py --out DIR', "
                                   "then 'statekit demo --data DIR'") from None
    missing = [f for f in CATALOG_FIELDS if rows and f not in rows[0]]
    if not rows or missing:
        raise ValidationError(f"{path} has no episodes or lacks the columns {missing}",
                              hint="regenerate it with scripts/make_sample_data.py")
    return [Entry(**{f: row[f] for f in CATALOG_FIELDS}) for row in rows]


@dataclass(frozen=True)
class Plan:
    """Which episodes the demo treats specially, derived from the catalog alone
    (the worker process and the demo agree on it without talking)."""

    entries: dict[str, Entry]
    never_uploads: str
    """The episode whose upload always times out: skipped when its attempts are used up."""
    held_back: frozenset[str]
    """The newest eighth of each show: scheduled, not yet published."""
    crash_at: int
    """Pass 1's worker is killed in the middle of its converting run number ``crash_at`` (half way through)."""

    @classmethod
    def of(cls, catalog: list[Entry]) -> Plan:
        newest: dict[str, list[Entry]] = {}
        for entry in catalog:
            newest.setdefault(entry.show, []).append(entry)
        held = frozenset(e.key for show in newest.values()
                         for e in sorted(show, key=lambda e: e.date)[len(show) - max(1, len(show) // 8):])
        return cls(entries={e.key: e for e in catalog}, never_uploads=catalog[len(catalog) // 3].key,
                   held_back=held, crash_at=max(1, len(catalog) // 2))

    def fault(self, key: str, stage: str, attempt: int) -> Exception | None:
        """The failure injected into this attempt, if any: 5% of downloads and
        10% of uploads fail on their first attempt, one upload always."""
        roll = zlib.crc32(f"{stage}:{key}".encode()) % 100
        if stage == "uploading" and key == self.never_uploads:
            return ConnectionError("upload timed out (the server dropped the connection again)")
        if attempt == 1 and stage == "downloading" and roll < 5:
            return ConnectionResetError(errno.ECONNRESET, "connection reset by the archive's server")
        if attempt == 1 and stage == "uploading" and roll < 10:
            return ConnectionError("upload timed out")
        return None


# --- audio, with the standard library ------------------------------------------------------


def decode_wav(path: str, name: str) -> tuple[list[float], int, int]:
    """Samples of a 16-bit PCM WAV file downmixed to mono (floats in [-1, 1)),
    its frame rate and channel count. ``AudioProcessingError`` (a permanent
    failure) if it is not one."""
    try:
        with wave.open(path, "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise AudioProcessingError(f"{name} is not a WAV file ({exc})", path=path) from exc
    if width != 2:
        raise AudioProcessingError(f"{name} has {8 * width}-bit samples; only 16-bit PCM is supported", path=path)
    pcm = array.array("h")
    pcm.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder == "big":
        pcm.byteswap()  # WAV is little-endian
    if not frames or len(pcm) != frames * channels:
        raise AudioProcessingError(f"{name} is cut short ({len(pcm)} of {frames * channels} samples)", path=path)
    if channels == 1:
        return [s / 32768 for s in pcm], rate, 1
    scale = 1 / (32768 * channels)
    return [sum(frame) * scale for frame in zip(*(pcm[c::channels] for c in range(channels)))], rate, channels


def resample(x: list[float], src: int, dst: int) -> list[float]:
    """Linear interpolation from ``src`` to ``dst`` samples a second."""
    if src == dst:
        return x
    step = src / dst
    positions = [j * step for j in range(max(1, round(len(x) * dst / src)))]
    padded = [*x, x[-1]]  # the last positions may reach one past the end
    return [padded[i] + (padded[i + 1] - padded[i]) * (p - i) for p, i in zip(positions, map(int, positions))]


def pcm16(samples: list[float], gain: float = 1.0) -> bytes:
    """16-bit PCM bytes of ``samples`` times ``gain`` (which must keep them in [-1, 1])."""
    scale = 32767 * gain
    pcm = array.array("h", [int(s * scale) for s in samples])
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()


def write_wav(path: str, pcm: bytes, rate: int) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def convert_audio(src: str, name: str) -> tuple[bytes, dict[str, Any]]:
    """Decode, downmix, resample to 16 kHz and peak-normalise: the 16-bit PCM
    samples and what was measured."""
    mono, rate, channels = decode_wav(src, name)
    audio = resample(mono, rate, TARGET_RATE)
    peak = max(map(abs, audio))
    if peak == 0:
        raise AudioProcessingError(f"{name} is silent: nothing to normalise", path=src)
    gain = PEAK / peak
    rms = gain * math.sqrt(sum(map(operator.mul, audio, audio)) / len(audio))
    return pcm16(audio, gain), {
        "source": {"file": name, "rate": rate, "channels": channels, "peak_dbfs": round(20 * math.log10(peak), 2)},
        "rate": TARGET_RATE, "channels": 1, "duration_s": round(len(audio) / TARGET_RATE, 3),
        "gain_db": round(20 * math.log10(gain), 2), "rms_dbfs": round(20 * math.log10(rms), 2),
    }


def copy_atomically(src: str, dst: Path, fail: Exception | None = None) -> int:
    """Copy ``src`` to ``dst`` through a temp file that is fsynced and renamed
    into place, so ``dst`` is the whole file or absent. ``fail``: raised half
    way (an injected fault); the temp file is removed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    data = Path(src).read_bytes()
    try:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            if fail is not None:
                raise fail
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


# --- the worker ----------------------------------------------------------------------------------


class Worker:
    """Asks the store what is ready, stage by stage (downstream first, so work
    started is finished before new work begins), and runs it. ``note``
    receives one dict per step (``created``, ``run``, ``done``, ``crash``)."""

    def __init__(self, store: Store, data: Path, uploads: Path, plan: Plan, *, owner: str, note: Note,
                 crash: bool = False, from_the_back: bool = False) -> None:
        self.store = store
        self.data = data
        self.uploads = uploads
        self.plan = plan
        self.owner = owner
        self.note = note
        self.crash = crash
        self.from_the_back = from_the_back
        """Take what next() hands out last first: two workers sharing a queue then meet in the middle."""
        self.converts = 0

    def discover(self) -> int:
        """Create the catalog's episodes the store does not have yet (a restart creates none)."""
        known = {e.key for e in self.store.list()}
        shows = set(self.store.shows())
        created = 0
        for entry in self.plan.entries.values():
            if entry.key in known:
                continue
            if entry.show not in shows:
                self.store.create_show(entry.show, title=entry.show_title)
                shows.add(entry.show)
            self.store.create(entry.show, entry.episode, title=entry.title, metadata={
                "date": entry.date, "archive_identifier": entry.identifier, "source": f"audio/{entry.audio}"})
            created += 1
            self.note({"t": "created", "key": entry.key})
        return created

    def work(self) -> None:
        """Run everything that is ready until nothing is left to do (waiting
        out retry backoffs, which the demo keeps short)."""
        self.release(self.store.list(stage="scheduled"))  # a stop between the two moves leaves some there
        stages: tuple[tuple[str, Callable[[Run, Entry], None]], ...] = (
            ("uploading", self.upload), ("converting", self.convert), ("downloading", self.download))
        while True:
            busy = False
            for stage, body in stages:
                ready = self.store.next(stage, BATCH)
                for ep in reversed(ready) if self.from_the_back else ready:
                    busy = True
                    if not self.attempt(ep, stage, body):
                        break  # another worker got there first: it is working through this batch too
            ready = self.store.next("scheduled", BATCH)
            self.release(ready[::-1] if self.from_the_back else ready)
            if busy or ready:
                continue
            waits = [(e.due_at - self.store.clock()).total_seconds() for e in self.store.list(stage="failed")
                     if e.due_at is not None and e.hold is None]
            if not waits:
                return
            time.sleep(min(1.0, max(0.01, min(waits))))

    def attempt(self, ep: Episode, stage: str, body: Callable[[Run, Entry], None]) -> bool:
        """Run ``stage`` for ``ep``; False if another worker has it or has done it."""
        entry = self.plan.entries[ep.key]
        run = self.store.run(ep.show_id, ep.episode_id, stage, owner=self.owner, reraise=False)
        try:
            with run:
                body(run, entry)
        except NotReadyError:  # another worker has it, or has done it already
            self.note({"t": "busy", "key": ep.key, "stage": stage})
            return False
        except LeaseExpiredError as exc:  # our lease ran out mid-run: recover() gives it back
            self.note({"t": "run", "key": ep.key, "stage": stage, "ok": False, "kind": "lease_lost",
                       "message": exc.one_line()})
            return True
        m = run.episode
        assert m is not None
        if run.outcome == "succeeded":
            self.note({"t": "run", "key": ep.key, "stage": stage, "ok": True})
        else:
            last = m.error_history[-1]
            self.note({"t": "run", "key": ep.key, "stage": stage, "ok": False, "kind": last.kind,
                       "action": last.action, "message": last.message})
        if m.stage in DONE:
            self.finished(m)
        return True

    def finished(self, m: Episode) -> None:
        self.note({"t": "done", "key": m.key, "stage": m.stage, "message": m.message})

    def download(self, run: Run, entry: Entry) -> None:
        fault = self.plan.fault(entry.key, run.stage, self.attempt_number(run))
        if fault is not None:
            raise fault
        episode = run.add_asset(self.data / "audio" / entry.audio, kind="audio", name="source.wav")
        size = episode.assets["source.wav"].size
        run.message = f"fetched {entry.audio} ({size / 1000:.1f} kB)"

    def convert(self, run: Run, entry: Entry) -> None:
        source = run.asset("source.wav")  # hashed first: a damaged download is caught here
        pcm, measured = convert_audio(source, entry.audio)
        out = run.temp_path(".wav")
        self.converts += 1
        if self.crash and self.converts == self.plan.crash_at:
            self.die(run, out, pcm)
        write_wav(out, pcm, TARGET_RATE)
        run.add_asset(out, kind="audio", name="audio.wav", label=f"converted from {entry.audio}")
        run.checkpoint(measured, cost=round(0.0002 * measured["duration_s"], 6))
        run.message = f"{measured['duration_s']:.2f} s at 16 kHz mono, gain {measured['gain_db']:+.1f} dB"

    def die(self, run: Run, out: str, pcm: bytes) -> None:
        """The machine goes down in the middle of this run: half the output is
        written, the lease is held, and the parent kills this process."""
        with open(out, "wb") as f:
            f.write(pcm[: len(pcm) // 2])
        assert run.episode is not None and run.episode.lease is not None
        self.note({"t": "crash", "key": f"{run.show_id}/{run.episode_id}", "pid": os.getpid(),
                   "lease_expires_at": run.episode.lease.expires_at.isoformat()})
        time.sleep(60)
        os._exit(70)  # nobody killed us: stop anyway, as the demo promised

    def upload(self, run: Run, entry: Entry) -> None:
        source = run.asset("audio.wav")
        assert run.episode is not None
        sha256 = run.episode.assets["audio.wav"].sha256
        target = self.uploads / run.show_id / run.episode_id / "audio.wav"
        size = copy_atomically(source, target, self.plan.fault(entry.key, run.stage, self.attempt_number(run)))
        run.checkpoint({"url": target.as_uri(), "bytes": size, "sha256": sha256}, cost=round(0.002 * size / 1e6, 6))
        run.message = f"uploaded to {target.relative_to(self.uploads.parent)}"

    def release(self, ready: list[Episode]) -> None:
        """uploaded -> scheduled, then -> published unless the episode is held back."""
        for ep in ready:
            held = ep.key in self.plan.held_back
            try:  # expected_version: if another worker moved it first, this move is refused
                m = ep
                if m.stage == "uploaded":
                    m = self.store.advance(m.show_id, m.episode_id, "scheduled", expected_version=m.version,
                                           message="held back for a later release" if held else "in the next release")
                if m.stage == "scheduled" and not held:
                    m = self.store.advance(m.show_id, m.episode_id, "published", expected_version=m.version,
                                           message=f"published: uploads/{m.show_id}/{m.episode_id}/audio.wav")
            except (VersionConflictError, InvalidTransitionError, NotReadyError):
                self.note({"t": "busy", "key": ep.key, "stage": "scheduled"})
                break
            if m is not ep:
                self.finished(m)

    @staticmethod
    def attempt_number(run: Run) -> int:
        assert run.episode is not None
        return run.episode.attempts.get(run.stage, 0)


# --- the two passes ---------------------------------------------------------------------------


@dataclass
class Pass:
    """What one pass did, from its workers' notes."""

    name: str
    created: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    """Successful runs per stage."""
    retried: Counter[str] = field(default_factory=Counter)
    """Failed runs that go back for another attempt, per stage."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Episodes that ended skipped: the reason."""
    done: int = 0
    busy: int = 0
    """Times a worker found an episode it was handed already taken or moved on by another."""
    seconds: float = 0.0
    crashed: dict[str, Any] | None = None

    def add(self, note: dict[str, Any]) -> None:
        kind = note["t"]
        if kind == "busy":
            self.busy += 1
        elif kind == "created":
            self.created += 1
        elif kind == "run" and note["ok"]:
            self.runs[note["stage"]] += 1
        elif kind == "run" and note.get("action") == "retry":
            self.retried[note["stage"]] += 1
        elif kind == "done":
            self.done += 1
            if note["stage"] == "skipped":
                self.skipped[note["key"]] = note["message"]
        elif kind == "crash":
            self.crashed = note

    def summary(self) -> str:
        runs = ", ".join(f"{n} {stage}" for stage, n in self.runs.items())
        retried = sum(self.retried.values())
        busy = f"; {self.busy} time(s) a lease or a version check kept a worker off another's episode" \
            if self.busy else ""
        return (f"{self.name}: {self.done} episodes done in {self.seconds:.1f} s; runs: {runs or 'none'}; "
                f"{retried} transient failure(s) retried, {len(self.skipped)} skipped{busy}")


@dataclass
class DemoResult:
    directory: Path
    root: Path
    uploads: Path
    report: Path
    episodes: int
    passes: list[Pass]
    crashed: str
    """The episode whose converting run the kill interrupted."""
    recovered: list[str]
    already_done: int
    """Episodes pass 2 found done and left alone."""
    redone: list[str]
    """``show/ep stage`` for every finished stage pass 2 ran again (none, if all is well)."""
    objects: int
    clips: int
    verify_clean: bool
    counts: dict[str, int]


def workspace(directory: str | os.PathLike[str], data: Path) -> Path:
    """``DIR``, checked: new or empty, and nowhere near the sample data (the
    demo never writes over anything)."""
    path = Path(directory).expanduser().resolve()
    for guarded in {data.resolve(), SAMPLE_DATA.parent.resolve()}:
        if path == guarded or guarded in path.parents:
            raise ValidationError(f"the demo does not write inside the sample data ({guarded})",
                                  hint="leave DIR out for a new temp dir, or pick a new directory elsewhere")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValidationError(f"{path} is not a new or empty directory",
                              hint="leave DIR out for a new temp dir, or pick a new directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _seconds_since(start: float) -> float:
    return time.monotonic() - start


def first_pass(root: Path, data: Path, uploads: Path, total: int, log: Path, *, say: Callable[[str], None],
               progress: Callable[[str, int, int], None]) -> Pass:
    """A worker process discovers the catalog and works until it is killed with
    SIGKILL in the middle of a converting run."""
    tally = Pass("pass 1")
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "statekit.demo", "worker", str(root), "--data", str(data),
               "--uploads", str(uploads), "--owner", "worker-1", "--crash"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    watchdog = threading.Timer(WORKER_TIMEOUT, proc.kill)
    watchdog.start()
    say(f"pass 1: worker process {proc.pid} discovers the catalog, then downloads, converts, uploads, publishes "
        f"(its log: {log.name})")
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            note = json.loads(line)
            tally.add(note)
            if note["t"] == "created":
                progress("discovering", tally.created, total)
            elif note["t"] == "done":
                progress("pass 1", tally.done, total)
            elif note["t"] == "crash":
                os.kill(proc.pid, signal.SIGKILL)
                say(f"  kill -9 {proc.pid}: the machine goes down in the middle of converting {note['key']}")
        code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    tally.seconds = _seconds_since(start)
    if tally.crashed is None or code != -signal.SIGKILL:
        raise RuntimeError(f"the pass-1 worker stopped on its own (exit code {code}); its log: {log}\n"
                           + log.read_text(errors="replace")[-2000:])
    say(f"  created {tally.created} episodes; " + tally.summary())
    return tally


def finished_runs(pipeline: Pipeline, m: Episode) -> set[str]:
    """Run stages this episode has finished for good (their success target is
    at or behind where it stands)."""
    if m.stage in pipeline.terminal:
        return set(pipeline.runs)
    where = m.previous_stage if m.stage == pipeline.failure_stage and m.previous_stage else m.stage
    return {s for s, target in pipeline.runs.items()
            if target is not None and pipeline.rank(target) <= pipeline.rank(where)}


def second_pass(root: Path, data: Path, uploads: Path, plan: Plan, crashed: dict[str, Any], *,
                say: Callable[[str], None], progress: Callable[[str, int, int], None]
                ) -> tuple[Pass, list[str], int, list[str]]:
    """The store opened again: recover the dead worker's episode, then finish
    everything; returns the tally, the recovered episodes, how many were
    already done, and the finished stages run again (none)."""
    tally = Pass("pass 2")
    start = time.monotonic()
    store = Store.open(root)
    before = {m.key: m for m in store.list()}
    already = sum(m.stage in DONE for m in before.values())
    part_way = sum(m.stage not in DONE and bool(finished_runs(store.pipeline, m)) for m in before.values())
    say(f"pass 2: the store is opened again: {already} of {len(before)} episodes already done (left alone), "
        f"{part_way} part-way (resumed where they stopped), {len(before) - already - part_way} not started")
    lease = before[crashed["key"]].lease
    lease_left = (lease.expires_at - store.clock()).total_seconds() if lease is not None else 0.0
    if lease_left > 0:
        say(f"  waiting {lease_left:.1f} s for the dead worker's lease on {crashed['key']} to run out")
        time.sleep(lease_left + 0.05)
    report = store.recover()
    for line in report.recovered:
        say(f"  recover: {line['episode']} was {line['stage']} under {line['owner']}: recorded as interrupted, "
            f"{'ready again' if line['action'] == 'retry' else line['action']}")
    for removed in store.gc_run_temp():
        say(f"  gc: removed {removed.path} ({removed.size / 1000:.1f} kB), {removed.reason}")
    lock = threading.Lock()

    def note(item: dict[str, Any]) -> None:
        with lock:
            tally.add(item)
            if item["t"] == "done":
                progress("pass 2", already + tally.done, len(plan.entries))

    workers = [Worker(store, data, uploads, plan, owner=f"worker-2{c}", note=note, from_the_back=i % 2 == 1)
               for i, c in enumerate("ab"[:WORKERS])]
    created = workers[0].discover()
    say(f"  the catalog again: {created} new episodes (discovery is idempotent); "
        f"{len(workers)} workers share the queue (threads, one store)")
    progress("pass 2", already, len(plan.entries))
    with ThreadPoolExecutor(len(workers)) as pool:
        for future in [pool.submit(w.work) for w in workers]:
            future.result()
    tally.seconds = _seconds_since(start)
    after = {m.key: m for m in store.list()}
    redone = [f"{key} {stage}" for key, m in before.items() for stage in sorted(finished_runs(store.pipeline, m))
              if after[key].attempts.get(stage, 0) != m.attempts.get(stage, 0)]
    say("  " + tally.summary())
    say(f"  finished stages run again: {len(redone)} (attempt counts of every stage done before pass 2 unchanged)"
        if not redone else f"  REDONE: {', '.join(redone)}")
    return tally, [line["episode"] for line in report.recovered], already, redone


def run_demo(directory: str | os.PathLike[str], data: str | os.PathLike[str] | None = None, *,
             say: Callable[[str], None] = lambda line: None,
             progress: Callable[[str, int, int], None] = lambda label, done, total: None) -> DemoResult:
    """Run the whole demo in ``directory`` (new or empty): the store in
    ``DIR/store``, uploads in ``DIR/uploads``, the report ``DIR/report.html``,
    the pass-1 worker's log ``DIR/pass1-worker.log``. ``data``: a folder
    with ``catalog.csv`` and ``audio/`` (default: the repository's sample data).
    ``say`` gets one line at a time; ``progress`` (label, done, total) as
    episodes finish."""
    data_dir = Path(data).resolve() if data is not None else SAMPLE_DATA
    catalog = read_catalog(data_dir)
    plan = Plan.of(catalog)
    work_dir = workspace(directory, data_dir)
    root, uploads = work_dir / "store", work_dir / "uploads"
    lease = lease_for(data_dir / "audio")
    store = Store.init(root, pipeline=demo_pipeline(lease))
    shows = Counter(e.show for e in catalog)
    clips = {e.audio for e in catalog}
    say(f"the archive pipeline over {len(catalog)} episodes of {len(shows)} shows "
        f"({', '.join(f'{s} {n}' for s, n in shows.items())}), {len(clips)} distinct clips in {data_dir}")
    say(f"store: {root} (retry backoff 0.05-0.2 s, lease {lease:g} s); uploads: {uploads}")
    first = first_pass(root, data_dir, uploads, len(catalog), work_dir / "pass1-worker.log", say=say,
                       progress=progress)
    assert first.crashed is not None
    second, recovered, already, redone = second_pass(root, data_dir, uploads, plan, first.crashed, say=say,
                                                     progress=progress)
    store = Store.open(root)
    counts = {stage: n for stage, n in store.counts().items() if n}
    say(f"uploaded -> scheduled -> published: {counts.get('published', 0)} episodes; "
        f"{counts.get('scheduled', 0)} scheduled for a later release")
    for key, reason in {**first.skipped, **second.skipped}.items():
        say(f"skipped {key}: {reason}")
    a_skipped = next(iter(sorted({**first.skipped, **second.skipped})), None)
    if a_skipped is not None:  # a person tries to publish one anyway: the graph says no
        show, ep = a_skipped.split("/")
        try:
            store.advance(show, ep, "published")
        except InvalidTransitionError as exc:
            say(f"refused: {exc.one_line()}")
    objects = [(sha, st) for sha, path, st in object_store.stored_objects(str(root)) if sha and not path.endswith(".json")]
    recorded = sum(len(m.assets) for m in store.list())
    size = sum(st.st_size for _, st in objects)
    say(f"assets: {recorded} recorded by episodes, {len(objects)} objects stored ({size / 1e6:.1f} MB): "
        f"each distinct clip and each distinct converted file once")
    uploaded = sum(1 for _ in uploads.rglob("audio.wav"))
    say(f"uploads: {uploaded} files in {uploads}")
    verified = store.verify()
    say("verify: " + ("ok: files, event logs, index, checkpoints and assets agree" if verified.clean
                      else f"{len(verified.problems)} problem(s): " + "; ".join(p.message for p in verified.problems)))
    from .report import write_report

    report = work_dir / "report.html"
    write_report(store, report)
    return DemoResult(directory=work_dir, root=root, uploads=uploads, report=report, episodes=len(catalog),
                      passes=[first, second], crashed=first.crashed["key"], recovered=recovered,
                      already_done=already, redone=redone, objects=len(objects), clips=len(clips),
                      verify_clean=verified.clean, counts=counts)


# --- the worker process ------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """``python -m statekit.demo worker STORE --data DIR --uploads DIR [--crash]``:
    one JSON line on stdout per step."""
    parser = argparse.ArgumentParser(prog="python -m statekit.demo worker")
    parser.add_argument("root", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--uploads", type=Path, required=True)
    parser.add_argument("--owner", default=f"worker-{os.getpid()}")
    parser.add_argument("--crash", action="store_true", help="stop dead in a converting run half way through")
    args = parser.parse_args(argv)

    def note(item: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(item) + "\n")
        sys.stdout.flush()

    store = Store.open(args.root)
    worker = Worker(store, args.data, args.uploads, Plan.of(read_catalog(args.data)), owner=args.owner,
                    note=note, crash=args.crash)
    worker.discover()
    worker.work()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m statekit.demo worker STORE --data DIR --uploads DIR [--crash]")
    sys.exit(worker_main(sys.argv[2:]))
