"""Workers as if on separate machines (issue 15, item 6).

Each "machine" is a process group in its own UTS and mount namespace
(``unshare --uts --mount``): its own hostname, its own empty ``/tmp``, its
own private ``.statekit/locks`` (a tmpfs mounted over the shared one), and a
clock skewed by +-20 s (``faketime``). They share only the store's files and
the PostgreSQL server. A statekit that coordinated through file locks or
local clocks fails here: the machines would not see each other's locks, and
a clock 20 s ahead would judge live 3 s leases expired.

Needs root (or permission to unshare), faketime (Debian package; .ci/run
installs it) and STATEKIT_TEST_PG_URL; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit import Store

from .test_workers import PG, REPO, fill

SKEWS = ("+20s", "-20s", "+0s")


def namespaces_work() -> str | None:
    if not PG:
        return "STATEKIT_TEST_PG_URL is not set (.ci/run sets it)"
    if shutil.which("unshare") is None or shutil.which("faketime") is None:
        return "unshare or faketime is missing (apt-get install faketime)"
    probe = subprocess.run(["unshare", "--uts", "--mount", "--fork", "sh", "-c",
                            "hostname probe && mount -t tmpfs tmpfs /tmp"], capture_output=True)
    if probe.returncode != 0:
        return "namespaces are not permitted here: " + probe.stderr.decode(errors="replace").strip()
    return None


pytestmark = pytest.mark.skipif(namespaces_work() is not None, reason=str(namespaces_work()))


def machine(name: str, skew: str, store: Store, url: str, out: Path, *, pause: float, lease: float,
            started: Path, done: Path) -> subprocess.Popen[bytes]:
    locks = os.path.join(store.root, ".statekit", "locks")
    os.makedirs(locks, exist_ok=True)
    script = (f"hostname {name} && mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs {locks} && "
              f'exec faketime -f "{skew}" "$@"')
    argv = ["unshare", "--uts", "--mount", "--fork", "--kill-child", "sh", "-c", script, "sh",
            sys.executable, "-m", "tests.claim_worker", store.root, "downloading", str(out), str(pause), str(lease),
            str(started)]
    # idle: 200 looks (10 s), or until ``done`` exists (the test saw every episode finished)
    env = dict(os.environ, PYTHONPATH=str(REPO), STATEKIT_INDEX_URL=url, CLAIM_WORKER_IDLE="200",
               CLAIM_WORKER_DONE=str(done))
    return subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder every "machine" sees: never under /tmp, which each machine replaces with its own
    (pytest's tmp_path is under /tmp unless --basetemp says otherwise)."""
    if not str(tmp_path).startswith("/tmp/"):
        yield tmp_path
        return
    top = Path(__file__).resolve().parent.parent / ".pytest-shared"
    top.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="machines-", dir=top))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_machines_share_the_work_and_survive_a_machine_killed(shared: Path, pg_url: str) -> None:
    tmp_path = shared
    store = Store.init(tmp_path / "store", index_url=pg_url)
    keys = fill(store, 24)
    out, started, finished = tmp_path / "done.txt", tmp_path / "started.txt", tmp_path / "all-finished"
    lease = 3.0
    # the victim machine takes one episode and works on it "forever"
    victim = machine("victim", "+20s", store, pg_url, out, pause=600, lease=lease, started=started,
                     done=finished)
    deadline = time.monotonic() + 60
    while (not started.exists() or not started.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    taken = started.read_text().split()[0]
    os.killpg(victim.pid, signal.SIGKILL)  # the whole machine, mid-run
    victim.wait()
    killed_at = time.monotonic()
    machines = [machine(f"m{i}", skew, store, pg_url, out, pause=0.05, lease=lease, started=started, done=finished)
                for i, skew in enumerate(SKEWS)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(m.poll() is None for m in machines):
        if out.exists() and {line.split()[0] for line in out.read_text().splitlines()} >= set(keys):
            finished.touch()  # every episode's run finished: the machines stop at their next empty look
            break
        time.sleep(0.05)
    for m in machines:
        assert m.wait(timeout=300) == 0
    lines = [line.split() for line in out.read_text().splitlines()]
    done = Counter(parts[0] for parts in lines)
    assert sorted(done) == keys and set(done.values()) == {1}, done  # each stage completed exactly once
    hosts = Counter(parts[3] for parts in lines)
    assert len(hosts) >= 2 and "victim" not in hosts, hosts  # spread over the machines
    fresh = Store.open(store.root)
    assert all(e.stage == "downloaded" for e in fresh.list())
    for key in keys:
        kinds = [e.kind for e in fresh.events(*key.split("/"))]
        if key == taken:  # only the killed run is repeated
            assert kinds.count("start") == 2 and kinds.count("recovered") == 1, kinds
        else:
            assert kinds.count("start") == 1, (key, kinds)
        assert kinds.count("finish") == 1
    # taken over within 30 s of its lease expiring
    restarted = [e for e in fresh.events(*taken.split("/")) if e.kind == "start"][1]
    assert time.monotonic() - killed_at < lease + 30 + 60  # a sanity bound on the whole wait
    first = [e for e in fresh.events(*taken.split("/")) if e.kind == "start"][0]
    # the two starts were stamped by skewed clocks (+20 s, then one of +-20 s): allow the skew
    assert (restarted.at - first.at).total_seconds() < lease + 30 + 40
