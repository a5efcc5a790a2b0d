"""Worker processes of the kill -9 and concurrency tests (tests/reliability).

Each worker is a real process: started by ``spawn`` (forked from a
multiprocessing forkserver that has statekit imported already, so a
replacement for a killed worker starts in milliseconds instead of the
second a fresh interpreter takes here) or run as a script,
``python workers.py MODE ARGS...``. It reports line by line, each line
sent at once (one pipe write), so a worker killed with SIGKILL has told its
parent about every write that returned. Modes:

    mix ROOT SHOW N SEED OWNER LEASE
        N transitions on the episodes of SHOW, mixing leased runs handed out
        by store.next() (start, checkpoints, heartbeat, finish or a failure)
        with plain advance / update / save_checkpoint under expected_version.
        Says "ready", then "ack SHOW EP VERSION STAGE KIND" after each call
        that returned (never before), then "done {json counters}".
    hold ROOT SHOW EP STAGE LEASE
        starts a leased run of STAGE, acknowledges it, then sleeps until killed.
    die-before-index ROOT SHOW EP STAGE
        advances EP to STAGE and is killed (SIGKILL, by itself) at the exact
        moment the file and its event are durable and the index is not yet
        written: the window a random kill hits now and then.
    cas ROOT SHOW EP N GO
        N compare-and-set advances on one episode (downloading <-> failed).
    own ROOT SHOW EP N GO
        N advances on an episode only this worker writes.
    update ROOT SHOW EP N GO [yield]
        N metadata updates of one episode (every call writes; no compare-and-set);
        ``yield``: the core yielded after each write (``os.sched_yield``), as a worker goes on
        to other work between its writes.

``cas``, ``own`` and ``update`` say "ready", wait until the file GO exists (so all
workers start together), then say one JSON summary: outcomes, the slowest
write, CPU seconds, and every record the ``statekit`` logger emitted at
WARNING or above. Those records also go to stderr, which the tests capture
(to a file per worker) and search.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from statekit import (
    Episode,
    InvalidTransitionError,
    LeaseExpiredError,
    LockTimeoutError,
    NotReadyError,
    StatekitError,
    Store,
    VersionConflictError,
)

# the pipeline of the kill test: a loop with two run stages, so episodes never run out of moves
LOOP_PIPELINE: dict[str, Any] = {
    "name": "loop",
    "initial": "queued",
    "terminal": ["skipped"],
    "stages": {
        "queued": ["fetching", "skipped"],
        "fetching": ["fetched", "failed"],
        "fetched": ["encoding", "queued"],
        "encoding": ["encoded", "failed"],
        "encoded": ["queued"],
        "failed": ["fetching", "encoding", "skipped"],
        "skipped": [],
    },
    # killed runs come back as failures: never run out of attempts (that would end in skipped)
    "max_attempts": {"fetching": 1_000_000, "encoding": 1_000_000},
    "retry": {"initial": 0.0, "maximum": 0.0, "jitter": 0.0, "max_attempts": 1_000_000, "lease_seconds": 1.0},
}
RUN_STAGES = ("fetching", "encoding")
FORBIDDEN = ("database is locked", "OperationalError", "Traceback", "index missed", "damaged",
             "could not be recorded")
"""Text that must never reach a worker's stderr: a surfaced SQLite error, a
crash, an index write given up, a damaged checkpoint, a failure not recorded."""


class Simulated(ConnectionError):
    """The failure a worker's stage run raises on purpose (transient_network: retried)."""


class Recorder(logging.Handler):
    """Keeps every statekit log record (and lets a StreamHandler print it)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.getMessage()}")


def _logging() -> Recorder:
    logger = logging.getLogger("statekit")
    recorder = Recorder()
    logger.addHandler(recorder)
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(logging.WARNING)
    logger.addHandler(stream)
    return recorder


def _to_stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


_say: Callable[[str], None] = _to_stdout


def say(line: str) -> None:
    _say(line)


def ack(ep: Episode, kind: str) -> None:
    """Acknowledge a write that returned: the version and stage it produced."""
    say(f"ack {ep.show_id} {ep.episode_id} {ep.version} {ep.stage} {kind}")


def wait_for(go: str) -> None:
    say("ready")
    deadline = time.monotonic() + 120
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("the go signal never came")
        time.sleep(0.002)


# --- mix: the kill test's worker -------------------------------------------------------------


def _run_once(store: Store, show: str, rng: random.Random, owner: str, lease: float, counts: Counter[str]) -> int:
    """One leased run of a ready episode; returns the writes acknowledged."""
    stage = rng.choice(RUN_STAGES)
    ready = store.next(stage, limit=32)
    if not ready:
        counts["none_ready"] += 1
        return 0
    ep = rng.choice(ready).episode_id
    acked = 0
    try:
        with store.run(show, ep, stage, owner=owner, lease_seconds=lease, reraise=False) as run:
            assert run.episode is not None
            ack(run.episode, "start")
            acked += 1
            data = dict(run.resume or {})
            for _ in range(rng.randint(0, 2)):
                data["n"] = data.get("n", 0) + 1
                data[owner] = rng.random()
                ack(run.checkpoint(data, cost=0.001), "checkpoint")
                acked += 1
            if rng.random() < 0.2:
                ack(run.heartbeat(), "heartbeat")
                acked += 1
            if rng.random() < 0.2:
                raise Simulated(f"{owner}: simulated network failure")
    except (NotReadyError, InvalidTransitionError):
        counts["run_refused"] += 1  # another worker took it since next() was asked, or the index lagged
        return acked
    except LeaseExpiredError:
        counts["lease_lost"] += 1  # this run was too slow: another worker recovered the episode
        return acked
    assert run.episode is not None
    if run.outcome == "succeeded":
        ack(run.episode, "finish")
    else:
        assert run.kind is not None, run.error
        ack(run.episode, "fail")
    counts[f"run_{run.outcome}"] += 1
    return acked + 1


def _plain_once(store: Store, show: str, eps: list[str], rng: random.Random, owner: str, serial: int,
                counts: Counter[str]) -> int:
    """One plain write under compare-and-set; returns the writes acknowledged."""
    ep = rng.choice(eps)
    current = store.get(show, ep)
    op = rng.choices(("advance", "update", "checkpoint"), weights=(5, 2, 1))[0]
    try:
        if op == "advance":
            targets = [t for t in store.pipeline.next_stages(current.stage) if t != "skipped"]
            new = store.advance(show, ep, rng.choice(targets), cost=0.002, message=f"{owner} #{serial}",
                                expected_version=current.version)
        elif op == "update":
            new = store.update(show, ep, metadata={"by": owner, "serial": serial, "r": rng.random()},
                               expected_version=current.version)
        else:  # stage "queued" is never run: a run's own checkpoints are not touched
            new = store.save_checkpoint(show, ep, "queued", {"by": owner, "serial": serial})
    except VersionConflictError:
        counts["conflict"] += 1
        return 0
    except NotReadyError:
        counts["leased"] += 1
        return 0
    ack(new, op)
    counts[op] += 1
    return 1


def mix(root: str, show: str, n: int, seed: int, owner: str, lease: float) -> None:
    _logging()
    store = Store.open(root)
    rng = random.Random(seed)
    eps = [e.episode_id for e in store.list(show=show)]
    say("ready")
    counts: Counter[str] = Counter()
    done = serial = 0
    while done < n:
        serial += 1
        try:
            if rng.random() < 0.4:
                done += _run_once(store, show, rng, owner, lease, counts)
            else:
                done += _plain_once(store, show, eps, rng, owner, serial, counts)
        except LockTimeoutError:
            counts["lock_timeout"] += 1
    counts["acked"] = done
    say("done " + json.dumps(counts))


def hold(root: str, show: str, ep: str, stage: str, lease: float) -> None:
    store = Store.open(root)
    run = store.run(show, ep, stage, owner="doomed", lease_seconds=lease).__enter__()
    assert run.episode is not None
    ack(run.episode, "start")
    time.sleep(3600)


def die_before_index(root: str, show: str, ep: str, stage: str) -> None:
    store = Store.open(root)

    def killed(**_changes: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    store.index.write = killed  # type: ignore[method-assign]
    store.advance(show, ep, stage)
    raise SystemExit("not killed")


# --- cas / own: one episode, many processes ---------------------------------------------------


def hammer(root: str, show: str, ep: str, n: int, go: str, mode: str, pause: str = "") -> dict[str, Any]:
    """``n`` writes on one episode: ``cas`` advances under expected_version,
    ``own`` advances (the episode is this worker's alone), ``update``
    metadata updates (always a write; ``versions`` says which ones were ours)."""
    recorder = _logging()
    store = Store.open(root)
    store.get(show, ep)  # warm: the first read parses the file
    wait_for(go)
    out: dict[str, Any] = {"ok": 0, "conflict": 0, "lock_timeout": 0, "other": [], "slowest_s": 0.0,
                           "versions": []}
    times: list[float] = []
    start = time.monotonic()
    for i in range(n):
        current = store.get(show, ep)
        target = "failed" if current.stage == "downloading" else "downloading"
        began = time.monotonic()
        try:
            if mode == "update":
                out["versions"].append(store.update(show, ep, metadata={"by": os.getpid(), "i": i}).version)
            else:
                store.advance(show, ep, target, expected_version=current.version if mode == "cas" else None)
            out["ok"] += 1
        except VersionConflictError:
            out["conflict"] += 1
        except LockTimeoutError:
            out["lock_timeout"] += 1
        except StatekitError as exc:  # anything else surfaced to a worker is a finding
            out["other"].append(exc.one_line())
        took = time.monotonic() - began
        if took > out["slowest_s"]:
            out["slowest_s"], out["slowest_at"] = took, len(times)
        times.append(took)
        if pause == "yield":
            os.sched_yield()
    out["seconds"] = time.monotonic() - start
    times.sort()
    out["median_s"], out["p99_s"] = times[len(times) // 2], times[len(times) * 99 // 100]
    out["cpu_s"] = sum(os.times()[:2])
    out["logged"] = recorder.records
    return out


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "mix":
        root, show, n, seed, owner, lease = argv[1:7]
        mix(root, show, int(n), int(seed), owner, float(lease))
    elif mode == "hold":
        root, show, ep, stage, lease = argv[1:6]
        hold(root, show, ep, stage, float(lease))
    elif mode == "die-before-index":
        root, show, ep, stage = argv[1:5]
        die_before_index(root, show, ep, stage)
    elif mode in ("cas", "own", "update"):
        root, show, ep, n, go = argv[1:6]
        say(json.dumps(hammer(root, show, ep, int(n), go, mode, argv[6] if len(argv) > 6 else "")))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def child(argv: list[str], conn: Connection, stderr_path: str) -> None:
    """A forkserver child's entry: stderr to ``stderr_path``, lines to ``conn``."""
    global _say
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own stderr, for good)

    def send(line: str) -> None:
        conn.send_bytes(line.encode())  # a short message is one pipe write: whole or not at all

    _say = send
    main(argv)


_CONTEXT: Any = None


def spawn(argv: list[str], stderr_path: str | os.PathLike[str]) -> tuple[Any, Connection]:
    """Start a worker process; (its multiprocessing.Process, the end to read its lines from)."""
    import multiprocessing

    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload([__name__, "statekit.store", "statekit.index.connect", "statekit.index.sync"])
    reader, writer = _CONTEXT.Pipe(duplex=False)
    proc = _CONTEXT.Process(target=child, args=(argv, writer, os.fspath(stderr_path)), daemon=True)
    proc.start()
    writer.close()
    return proc, reader


if __name__ == "__main__":
    main(sys.argv[1:])
