"""Helpers of the model-based test (``test_model.py``): a fake clock, a disk
that SIGKILLs its own process at a chosen system call, forked writers, and
the edits and damage a person or a failing disk does to the files."""

from __future__ import annotations

import json
import os
import re
import signal
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from statekit.files import Disk

CALLS = ("open", "mkstemp", "write", "fsync", "close", "replace", "rename", "truncate", "unlink", "mkdir", "link")


class Clock:
    """The store's clock: a time the test moves on by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class KillDisk(Disk):
    """Counts the system calls that change the disk and SIGKILLs its own
    process just before the ``kill_at``-th (0-based) one: a ``kill -9`` or a
    power cut at that exact step. ``None``: never. Steps come in a fixed
    order (no overlapping syncs on a helper thread)."""

    overlap_syncs = False

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.steps = 0

    def _step(self) -> None:
        if self.kill_at is not None and self.steps == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.steps += 1


def _wrap(name: str) -> Callable[..., Any]:
    original = getattr(Disk, name)

    def call(self: KillDisk, *args: Any, **kwargs: Any) -> Any:
        self._step()
        return original(self, *args, **kwargs)

    return call


for _name in CALLS:
    setattr(KillDisk, _name, _wrap(_name))


class KillOnCall(Disk):
    """SIGKILLs its process just before the first ``name`` call that follows
    an ``after`` call (any, if ``after`` is None): a kill at a named step."""

    overlap_syncs = False

    def __init__(self, name: str, after: str | None = None) -> None:
        self.name, self.after = name, after
        self.armed = after is None

    def _call(self, name: str) -> None:
        if self.armed and name == self.name:
            os.kill(os.getpid(), signal.SIGKILL)
        if name == self.after:
            self.armed = True


def _wrap_named(name: str) -> Callable[..., Any]:
    original = getattr(Disk, name)

    def call(self: KillOnCall, *args: Any, **kwargs: Any) -> Any:
        self._call(name)
        return original(self, *args, **kwargs)

    return call


for _name in CALLS:
    setattr(KillOnCall, _name, _wrap_named(_name))


def in_child(work: Callable[[], None]) -> str:
    """Run ``work`` in a forked child and wait for it: ``"killed"`` (it
    SIGKILLed itself), ``"ok"``, or ``"error: <Type>: <message>"``.

    The child must open its own ``Store`` (never the parent's SQLite
    connection) and leaves with ``os._exit``: no atexit hooks, no buffered
    output of the parent flushed twice."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_end)
            work()
        except BaseException as exc:  # reported to the parent, never raised here
            code = 3
            try:
                line = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                os.write(write_end, line.encode("utf-8", "replace")[:60000])
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"child died of signal {os.WTERMSIG(status)}"
        return "killed"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return "ok"
    return "error: " + b"".join(chunks).decode("utf-8", "replace")


# --- what a person does to a file ----------------------------------------------------

COMMENT = "# checked by hand, see the ticket"


def write_like_an_editor(path: str, data: bytes, in_place: bool) -> None:
    """Save ``data`` at ``path`` the two ways editors do: overwrite the same
    file (same inode), or write a new file and rename it over the old one."""
    if in_place:
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(data)
    else:
        tmp = path + "~edit"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def set_top_level(raw: bytes, suffix: str, key: str, value: Any, comment: bool = False) -> bytes:
    """The file's text with one top-level field set, as a person would type
    it: for YAML the ``key: value`` line is rewritten in place (comments and
    layout kept); JSON is loaded and saved again by the "editor"."""
    if suffix == ".json":
        data = json.loads(raw)
        data[key] = value
        return (json.dumps(data, indent=2) + "\n").encode()
    text = raw.decode("utf-8")
    line = f"{key}: {json.dumps(value)}"
    pattern = re.compile(rf"^{re.escape(key)}:.*$", re.MULTILINE)
    assert pattern.search(text), f"no top-level {key!r} line in the file"
    text = pattern.sub(lambda _m: line, text, count=1)
    if comment and COMMENT not in text:
        text = text.replace(line, f"{COMMENT}\n{line}", 1)
    return text.encode("utf-8")


def damage(raw: bytes, how: str) -> bytes:
    """A file as a failing disk or a crashed copy leaves it, certainly not a
    valid episode: cut before its ``version`` field (which is required), or
    overwritten with garbage."""
    if how == "truncate":
        cut = raw.find(b"\nversion:")
        if cut < 0:
            cut = raw.find(b'"version"')
        assert cut > 0
        return raw[: max(1, cut * 2 // 3)]
    if how == "zeros":
        return b"\0" * len(raw)
    return b"\xff\xfe{[ garbage: : :\n\x00" + raw[: len(raw) // 3]
