"""``statekit worker``: run a stage written in any language; and the commands
such a stage's program calls under its run's lease (``checkpoint``, ``cost``).

The worker claims episodes (``Store.claim``) and runs COMMAND once per
episode with the run's coordinates in its environment. Exit 0 is success;
another exit code is a failure, recorded with the tail of the output and
classified (``worker: {exit_codes: {75: transient_network}}`` in
statekit.yaml). SIGTERM: finish the current run, then exit. A second
SIGTERM stops COMMAND's process group (SIGTERM, SIGKILL after ``--grace``)
and gives the lease back only once the group is gone, so two runs of one
episode never overlap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

import click

from ..errors import ValidationError
from ..runs import Run
from ..taxonomy import ErrorKind
from .app import Context, command, err, out, pass_ctx

TAIL_BYTES = 4000
"""How much of a failed command's output its recorded failure keeps."""

LIMIT_WAIT_MAX_S = 60.0
"""The longest a worker refused for a rate limit sleeps before asking again
(a resume or a change elsewhere is then seen within it)."""

RUN_ENV = ("STATEKIT_SHOW", "STATEKIT_EPISODE", "STATEKIT_STAGE", "STATEKIT_RUN_ID")


class CommandFailed(Exception):
    """A worker's command exited with a non-zero code (or was stopped)."""

    def __init__(self, message: str, kind: ErrorKind | None) -> None:
        super().__init__(message)
        self.statekit_kind = kind


class Stopper:
    """SIGTERM (and SIGINT) once: stop after this run; twice: stop the command now."""

    def __init__(self) -> None:
        self.signals = 0
        self.child: subprocess.Popen[bytes] | None = None
        self.killed = False

    def __call__(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if self.signals >= 2 and self.child is not None and self.child.poll() is None:
            self.killed = True
            try:
                os.killpg(self.child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def exit_kinds(ctx: Context) -> dict[int, ErrorKind]:
    config = ctx.store.config.worker
    kinds: dict[int, ErrorKind] = {}
    for code, name in (config.exit_codes.items() if config is not None else ()):
        try:
            kinds[int(code)] = ErrorKind(name)
        except ValueError:
            raise ValidationError(f"statekit.yaml: worker.exit_codes maps {code} to {name!r}, not an error kind",
                                  hint="kinds: " + ", ".join(k.value for k in ErrorKind)) from None
    return kinds


def pump(stream: Any, tail: deque[bytes], sink: Any) -> None:
    """Copy the command's output through, keeping its tail."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        tail.append(chunk)
        while sum(map(len, tail)) > TAIL_BYTES * 2 and len(tail) > 1:
            tail.popleft()
        try:
            sink.write(chunk)
            sink.flush()
        except (OSError, ValueError):
            pass


def run_command(argv: tuple[str, ...], env: dict[str, str], stopper: Stopper, grace: float) -> tuple[int, bytes]:
    """Run ``argv`` in its own process group; its exit code (negative: a
    signal) and the tail of its output (stdout and stderr together)."""
    tail: deque[bytes] = deque()
    try:
        child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    except OSError as exc:
        return 127, f"could not start {argv[0]}: {exc.strerror}".encode()
    stopper.child = child
    reader = threading.Thread(target=pump, args=(child.stdout, tail, sys.stdout.buffer), daemon=True)
    reader.start()
    killed_at: float | None = None
    while True:
        try:
            code = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if stopper.killed and killed_at is None:
                killed_at = time.monotonic()
            if killed_at is not None and time.monotonic() - killed_at > grace:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    if stopper.killed:  # the group, not only its leader: nothing of this run may outlive the lease
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reader.join(timeout=5)
    stopper.child = None
    return code, b"".join(tail)[-TAIL_BYTES:]


@command()
@click.argument("stage")
@click.option("--owner", default=None, help="The worker's name in leases and events (default: host:pid).")
@click.option("--lease", "lease", type=float, default=None,
              help="Lease length in seconds (renewed in the background; default 20, or the pipeline's if shorter).")
@click.option("--max", "max_runs", type=click.IntRange(min=1), default=None, help="Stop after N runs.")
@click.option("--idle-exit", is_flag=True, help="Exit 0 when nothing is ready instead of waiting.")
@click.option("--poll", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="Seconds between looks when nothing is ready.")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when a second SIGTERM stops the command.")
@click.option("--show", "show_id", default=None, help="Only episodes of this show.")
@click.argument("argv", nargs=-1, required=True, metavar="-- COMMAND [ARGS]...")
@pass_ctx
def worker(ctx: Context, stage: str, owner: str | None, lease: float | None, max_runs: int | None,
           idle_exit: bool, poll: float, grace: float, show_id: str | None, argv: tuple[str, ...]) -> None:
    """Claim episodes ready for STAGE and run COMMAND once for each, with
    STATEKIT_ROOT, STATEKIT_SHOW, STATEKIT_EPISODE, STATEKIT_STAGE,
    STATEKIT_RUN_ID and STATEKIT_RUN_DIR (a scratch folder, removed after) in
    its environment. Exit 0 is success; any other code a failure, recorded
    with the output's tail. SIGTERM: finish this run, then exit; a second
    SIGTERM stops COMMAND and gives the episode back. A paused stage, or one
    at its concurrency or rate limit (limits: in statekit.yaml), makes the
    worker wait, saying why (--idle-exit: a paused stage exits 0)."""
    store = ctx.store
    kinds = exit_kinds(ctx)
    stopper = Stopper()
    signal.signal(signal.SIGTERM, stopper)
    signal.signal(signal.SIGINT, stopper)
    done = 0
    said: str | None = None
    while not stopper.signals and (max_runs is None or done < max_runs):
        run = store.try_claim(stage, owner=owner, lease_seconds=lease, show=show_id, reraise=False)
        if not isinstance(run, Run):
            wait = poll
            if run is not None:  # paused, or at a limit: say why (once per reason), then wait
                if run.message != said:
                    err.print(f"statekit worker: waiting: {run.message}", markup=False)
                    said = run.message
                if run.retry_after is not None:
                    wait = min(max(run.retry_after, 0.05), LIMIT_WAIT_MAX_S)
            if idle_exit and (run is None or run.reason == "paused"):
                break
            deadline = time.monotonic() + wait
            while not stopper.signals and time.monotonic() < deadline:
                time.sleep(min(0.1, wait))
            continue
        said = None
        with run:
            scratch = os.path.dirname(run.temp_path())
            env = dict(os.environ, STATEKIT_ROOT=store.root, STATEKIT_SHOW=run.show_id,
                       STATEKIT_EPISODE=run.episode_id, STATEKIT_STAGE=run.stage, STATEKIT_RUN_ID=run.run_id,
                       STATEKIT_RUN_DIR=scratch)
            code, tail = run_command(argv, env, stopper, grace)
            if code != 0:
                text = tail.decode("utf-8", "replace").strip()
                why = "stopped by a second SIGTERM" if stopper.killed else (
                    f"exited with {code}" if code > 0 else f"was killed by signal {-code}")
                kind = ErrorKind.INTERRUPTED if stopper.killed else kinds.get(code)
                raise CommandFailed(f"{argv[0]} {why}" + (f": {text[-TAIL_BYTES:]}" if text else ""), kind)
        done += 1
        out.print(f"{run.show_id}/{run.episode_id} {stage}: {run.outcome}"
                  + (f" ({run.kind.value})" if run.kind is not None else ""), markup=False)


def current_run(ctx: Context) -> Any:
    """The run a worker's command belongs to (from its environment)."""
    missing = [name for name in RUN_ENV if not os.environ.get(name)]
    if missing:
        raise ValidationError(f"not inside a statekit worker's run: {', '.join(missing)} not set",
                              hint="run this from the command 'statekit worker STAGE -- COMMAND' starts")
    env = os.environ
    return ctx.store.attach_run(env["STATEKIT_SHOW"], env["STATEKIT_EPISODE"], env["STATEKIT_STAGE"],
                                env["STATEKIT_RUN_ID"])


@command()
@click.argument("data")
@click.option("--cost", type=float, default=None, help="What the work so far cost.")
@pass_ctx
def checkpoint(ctx: Context, data: str, cost: float | None) -> None:
    """Save the current run's checkpoint (DATA: a JSON object), inside a
    worker's command; refused once the run's lease is lost."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"DATA is not JSON: {exc.msg} at position {exc.pos}",
                              hint='e.g. statekit checkpoint \'{"done": 12}\'') from None
    if not isinstance(value, dict):
        raise ValidationError("DATA must be a JSON object", hint='e.g. statekit checkpoint \'{"done": 12}\'')
    episode = current_run(ctx).checkpoint(value, cost=cost)
    out.print(f"{episode.key} checkpoint saved (version {episode.version})", markup=False)


@command()
@click.argument("amount", type=float)
@click.option("--note", default=None, help="What the money was spent on.")
@pass_ctx
def cost(ctx: Context, amount: float, note: str | None) -> None:
    """Record money the current run spent, inside a worker's command."""
    episode = current_run(ctx).cost(amount, note=note)
    out.print(f"{episode.key} cost {amount:g} recorded (version {episode.version})", markup=False)


COMMANDS = [worker, checkpoint, cost]
