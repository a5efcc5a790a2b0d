"""Simulated power loss: record what a write does to the disk, then build
every state a crash could leave under a weak persistence model.

``RecordingDisk`` is a ``statekit.files.Disk`` that performs each call for
real and logs it at the level a file system sees it: file creation, data
written at an offset, truncation, fsync of a file or of a directory,
rename, link, unlink, mkdir. Files are named by inode, so hard links
(backups) and renames are followed exactly.

``crash_states(before, ops, k)`` replays the first ``k`` operations over
the store as it was before (assumed durable) and yields every state the
model allows after a power cut at that point:

- a file's data written since its last fsync may be lost: any prefix of
  those writes survives, the next one may be torn (its first half only),
  or the file may keep its new size with the unsynced bytes zeroed;
- a directory's entries changed since its last fsync may be lost: any
  prefix of those changes survives (a rename not yet synced is undone, a
  new file may be missing, an unlinked one may come back). A rename
  between two directories is a change to each, lost independently.

Both are weaker than ext4 with ``data=ordered``, which is the point: the
store must be right on any POSIX file system, not only on a kind one.
``materialize`` writes one state out as a real directory tree.
"""

from __future__ import annotations

import itertools
import os
import random
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from statekit.files import TEMP_PREFIX, TEMP_SUFFIX, Disk, lexists

# --- recording -----------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One file-system operation. ``kind`` is one of create, mkdir, write,
    truncate, fsync, fsync_dir, rename, link, unlink."""

    kind: str
    ino: int = 0  # the file (or directory, for mkdir and fsync_dir)
    parent: int = 0  # the directory whose entry changes
    name: str = ""
    to_parent: int = 0  # rename: the target directory and name
    to_name: str = ""
    offset: int = 0
    data: bytes = b""
    size: int = 0
    path: str = ""  # for reading the log; not used by the model

    def __str__(self) -> str:
        detail = {"write": f" {len(self.data)} bytes at {self.offset}", "truncate": f" to {self.size}"}
        return f"{self.kind} {self.path}{detail.get(self.kind, '')}"


class RecordingDisk(Disk):
    """Performs every call and records it as ``Op``s.

    ``skip``: a test-only switch that removes calls from the write path, to
    prove the harness catches their absence: ``"file_fsync"`` drops the
    fsync of a temp file before its rename, ``"dir_fsync"`` drops the fsync
    of a directory. A skipped call is neither made nor recorded.
    """

    overlap_syncs = False  # one thread: the log is in the order the calls were made

    def __init__(self, skip: frozenset[str] = frozenset()) -> None:
        self.ops: list[Op] = []
        self.skip = skip
        self.skipped = 0
        self._fds: dict[int, tuple[int, bool, str, bool]] = {}  # fd -> (ino, append, path, is_dir)

    def _parent(self, path: str, dir_fd: int | None = None) -> tuple[int, str]:
        directory, name = os.path.split(path)
        return (os.lstat(directory) if dir_fd is None else os.fstat(dir_fd)).st_ino, name

    def open(self, path: str, flags: int, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
        existed = lexists(path, dir_fd=dir_fd)
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        st = os.fstat(fd)
        is_dir = stat.S_ISDIR(st.st_mode)
        if not existed and flags & os.O_CREAT:
            parent, name = self._parent(path, dir_fd)
            self.ops.append(Op("create", ino=st.st_ino, parent=parent, name=name, path=path))
        if flags & os.O_TRUNC and existed and not is_dir:
            self.ops.append(Op("truncate", ino=st.st_ino, size=0, path=path))
        self._fds[fd] = (st.st_ino, bool(flags & os.O_APPEND), path, is_dir)
        return fd

    def mkstemp(self, directory: str, prefix: str, suffix: str, *, dir_fd: int | None = None) -> tuple[int, str]:
        fd, path = super().mkstemp(directory, prefix, suffix, dir_fd=dir_fd)
        ino = os.fstat(fd).st_ino
        self.ops.append(Op("create", ino=ino, parent=self._parent(path, dir_fd)[0], name=os.path.basename(path),
                           path=path))
        self._fds[fd] = (ino, False, path, False)
        return fd, path

    def _described(self, fd: int) -> tuple[int, bool, str, bool]:
        """What ``fd`` is: one this disk opened, or a folder statekit holds open (``files.open_dir``)."""
        if fd in self._fds:
            return self._fds[fd]
        st = os.fstat(fd)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = f"<fd {fd}>"
        return st.st_ino, False, path, stat.S_ISDIR(st.st_mode)

    def write(self, fd: int, data: memoryview) -> int:
        ino, append, path, _ = self._fds[fd]
        offset = os.fstat(fd).st_size if append else os.lseek(fd, 0, os.SEEK_CUR)
        n = super().write(fd, data)
        self.ops.append(Op("write", ino=ino, offset=offset, data=bytes(data[:n]), path=path))
        return n

    def truncate(self, fd: int, size: int) -> None:
        super().truncate(fd, size)
        ino, _, path, _ = self._fds[fd]
        self.ops.append(Op("truncate", ino=ino, size=size, path=path))

    def fsync(self, fd: int) -> None:
        ino, _, path, is_dir = self._described(fd)
        name = os.path.basename(path)
        if ("dir_fsync" in self.skip and is_dir) or (
                "file_fsync" in self.skip and not is_dir and name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
            self.skipped += 1
            return
        super().fsync(fd)
        self.ops.append(Op("fsync_dir" if is_dir else "fsync", ino=ino, path=path))

    def close(self, fd: int) -> None:
        self._fds.pop(fd, None)
        super().close(fd)

    def _rename(self, src: str, dst: str, src_dir_fd: int | None, dst_dir_fd: int | None) -> Op:
        parent, name = self._parent(src, src_dir_fd)
        to_parent, to_name = self._parent(dst, dst_dir_fd)
        return Op("rename", ino=_lstat(src, src_dir_fd).st_ino, parent=parent, name=name, to_parent=to_parent,
                  to_name=to_name, path=f"{src} -> {dst}")

    def replace(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        op = self._rename(src, dst, src_dir_fd, dst_dir_fd)
        super().replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        self.ops.append(op)

    def rename(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        op = self._rename(src, dst, src_dir_fd, dst_dir_fd)
        super().rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        self.ops.append(op)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        parent, name = self._parent(path, dir_fd)
        ino = _lstat(path, dir_fd).st_ino
        super().unlink(path, dir_fd=dir_fd)
        self.ops.append(Op("unlink", ino=ino, parent=parent, name=name, path=path))

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        super().mkdir(path, dir_fd=dir_fd)
        parent, name = self._parent(path, dir_fd)
        self.ops.append(Op("mkdir", ino=_lstat(path, dir_fd).st_ino, parent=parent, name=name, path=path))

    def link(self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        ino = _lstat(src, src_dir_fd).st_ino
        super().link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        to_parent, to_name = self._parent(dst, dst_dir_fd)
        self.ops.append(Op("link", ino=ino, parent=to_parent, name=to_name, path=f"{src} -> {dst}"))


def _lstat(path: str, dir_fd: int | None) -> os.stat_result:
    """``os.lstat`` of ``path``, or of its last component in the folder ``dir_fd``."""
    return os.lstat(path) if dir_fd is None else os.stat(os.path.basename(path), dir_fd=dir_fd, follow_symlinks=False)


# --- the store before: a durable image -----------------------------------------------


@dataclass
class Image:
    """A directory tree by inode: ``dirs`` maps a directory's inode to its
    entries (name -> inode), ``files`` a file's inode to its bytes,
    ``links`` a symlink's inode to its target."""

    root: int
    dirs: dict[int, dict[str, int]] = field(default_factory=dict)
    files: dict[int, bytes] = field(default_factory=dict)
    links: dict[int, str] = field(default_factory=dict)


def capture(root: str) -> Image:
    """The tree under ``root`` as it is now (taken as durable)."""
    image = Image(root=os.lstat(root).st_ino)

    def walk(path: str, ino: int) -> None:
        entries: dict[str, int] = {}
        image.dirs[ino] = entries
        for entry in os.scandir(path):
            st = entry.stat(follow_symlinks=False)
            entries[entry.name] = st.st_ino
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path, st.st_ino)
            elif stat.S_ISLNK(st.st_mode):
                image.links[st.st_ino] = os.readlink(entry.path)
            elif st.st_ino not in image.files:
                with open(entry.path, "rb") as f:
                    image.files[st.st_ino] = f.read()

    walk(root, image.root)
    return image


# --- replay ------------------------------------------------------------------------------


@dataclass
class _File:
    durable: bytes
    pending: list[Op] = field(default_factory=list)


@dataclass
class _Dir:
    durable: dict[str, int]
    pending: list[tuple[str, str, Any]] = field(default_factory=list)  # (set|remove|rename, name, ino)


def _apply_data(content: bytes, op: Op) -> bytes:
    if op.kind == "truncate":
        return content[:op.size] + b"\0" * max(0, op.size - len(content))
    end = op.offset + len(op.data)
    if len(content) < op.offset:
        content += b"\0" * (op.offset - len(content))
    return content[:op.offset] + op.data + content[end:]


def _apply_entries(entries: dict[str, Any], changes: list[tuple[str, str, Any]]) -> dict[str, Any]:
    out = dict(entries)
    for action, name, ino in changes:
        if action == "rename":  # within one directory: both names change together
            src, dst = name.split("\0")
            if out.get(src) == ino:
                del out[src]
            out[dst] = ino
        elif action == "set":
            out[name] = ino
        else:
            out.pop(name, None)
    return out


class Replay:
    """The state after the first ``k`` operations: what is durable, and what
    is still pending per file and per directory."""

    def __init__(self, before: Image, ops: list[Op], k: int) -> None:
        self.root = before.root
        self.links = before.links
        self.files: dict[Any, _File] = {ino: _File(data) for ino, data in before.files.items()}
        self.dirs: dict[Any, _Dir] = {ino: _Dir(dict(entries)) for ino, entries in before.dirs.items()}
        # inode numbers can be reused once a file is gone: name each life of an inode apart
        self._life: dict[int, Any] = {ino: ino for ino in itertools.chain(before.files, before.dirs, before.links)}
        for op in ops[:k]:
            self._do(op)

    def _id(self, ino: int) -> Any:
        return self._life.get(ino, ino)

    def _new(self, ino: int) -> Any:
        known = ino in self._life and (self._life[ino] in self.files or self._life[ino] in self.dirs)
        ident = (ino, len(self.files) + len(self.dirs)) if known else ino
        self._life[ino] = ident
        return ident

    def _do(self, op: Op) -> None:
        if op.kind == "create":
            ident = self._new(op.ino)
            self.files[ident] = _File(b"")
            self.dirs[self._id(op.parent)].pending.append(("set", op.name, ident))
        elif op.kind == "mkdir":
            ident = self._new(op.ino)
            self.dirs[ident] = _Dir({})
            self.dirs[self._id(op.parent)].pending.append(("set", op.name, ident))
        elif op.kind in ("write", "truncate"):
            self.files[self._id(op.ino)].pending.append(op)
        elif op.kind == "fsync":
            f = self.files[self._id(op.ino)]
            for pending in f.pending:
                f.durable = _apply_data(f.durable, pending)
            f.pending = []
        elif op.kind == "fsync_dir":
            d = self.dirs[self._id(op.ino)]
            d.durable = _apply_entries(d.durable, d.pending)
            d.pending = []
        elif op.kind == "rename":
            ident = self._id(op.ino)
            if op.parent == op.to_parent:  # one directory: the rename is atomic, all or nothing
                self.dirs[self._id(op.parent)].pending.append(("rename", f"{op.name}\0{op.to_name}", ident))
            else:
                self.dirs[self._id(op.parent)].pending.append(("remove", op.name, ident))
                self.dirs[self._id(op.to_parent)].pending.append(("set", op.to_name, ident))
        elif op.kind == "link":
            self.dirs[self._id(op.parent)].pending.append(("set", op.name, self._id(op.ino)))
        elif op.kind == "unlink":
            self.dirs[self._id(op.parent)].pending.append(("remove", op.name, self._id(op.ino)))
        else:
            raise ValueError(f"unknown operation {op.kind}")

    # the choices a crash leaves, per object

    def file_choices(self, ident: Any) -> list[bytes]:
        f = self.files[ident]
        out = []
        content = f.durable
        out.append(content)
        for op in f.pending:
            if op.kind == "write" and len(op.data) > 1:  # torn: the first half reached the disk
                half = Op("write", offset=op.offset, data=op.data[: len(op.data) // 2])
                out.append(_apply_data(content, half))
            content = _apply_data(content, op)
            out.append(content)
        if f.pending:  # the new size reached the disk, the data did not
            zeroed = bytearray(content)
            for op in f.pending:
                if op.kind == "write":
                    zeroed[op.offset: op.offset + len(op.data)] = b"\0" * len(op.data)
            out.append(bytes(zeroed))
        return list(dict.fromkeys(out))

    def dir_choices(self, ident: Any) -> list[dict[str, int]]:
        d = self.dirs[ident]
        out = [_apply_entries(d.durable, d.pending[:j]) for j in range(len(d.pending) + 1)]
        unique: dict[tuple[tuple[str, Any], ...], dict[str, int]] = {}
        for entries in out:
            unique.setdefault(tuple(sorted(entries.items(), key=repr)), entries)
        return list(unique.values())


@dataclass(frozen=True)
class State:
    """One crash state: the entries of every directory and the bytes of every file."""

    root: Any
    dirs: dict[Any, dict[str, Any]]
    files: dict[Any, bytes]
    links: dict[Any, str]

    def key(self) -> tuple[Any, ...]:
        """What a reader could tell apart (the tree as paths and bytes)."""
        out: list[tuple[str, bytes | str]] = []

        def walk(ident: Any, prefix: str, depth: int) -> None:
            for name, child in sorted(self.dirs[ident].items()):
                path = f"{prefix}/{name}"
                if child in self.dirs and depth < 64:
                    out.append((path, "/"))
                    walk(child, path, depth + 1)
                elif child in self.links:
                    out.append((path, "-> " + self.links[child]))
                else:
                    out.append((path, self.files.get(child, b"")))

        walk(self.root, "", 0)
        return tuple(out)


def crash_states(before: Image, ops: list[Op], k: int, *, limit: int | None = None,
                 rng: random.Random | None = None) -> Iterator[State]:
    """Every distinct state a power cut after ``ops[:k]`` may leave (all
    combinations of per-file and per-directory choices; at most ``limit``,
    drawn at random with ``rng``, if there are more)."""
    replay = Replay(before, ops, k)
    files = {ident: [f.durable] for ident, f in replay.files.items()}
    dirs = {ident: [d.durable] for ident, d in replay.dirs.items()}
    varying: list[tuple[str, Any, list[Any]]] = []
    for ident, f in replay.files.items():
        if f.pending:
            varying.append(("file", ident, replay.file_choices(ident)))
    for ident, d in replay.dirs.items():
        if d.pending:
            varying.append(("dir", ident, replay.dir_choices(ident)))
    combos: Iterator[tuple[int, ...]]
    sizes = [len(choices) for _, _, choices in varying]
    total = 1
    for n in sizes:
        total *= n
    if limit is not None and total > limit:
        rng = rng or random.Random(0)
        drawn = {tuple(rng.randrange(n) for n in sizes) for _ in range(limit)}
        drawn.add(tuple(n - 1 for n in sizes))  # everything that was written, persisted
        drawn.add(tuple(0 for _ in sizes))  # nothing since the last syncs
        combos = iter(sorted(drawn))
    else:
        combos = itertools.product(*(range(n) for n in sizes))
    seen: set[tuple[Any, ...]] = set()
    for combo in combos:
        state_files = {ident: choices[0] for ident, choices in files.items()}
        state_dirs = {ident: choices[0] for ident, choices in dirs.items()}
        for (what, ident, choices), pick in zip(varying, combo):
            (state_files if what == "file" else state_dirs)[ident] = choices[pick]
        state = State(replay.root, state_dirs, state_files, replay.links)
        key = state.key()
        if key not in seen:
            seen.add(key)
            yield state


def materialize(state: State, target: str) -> None:
    """Write ``state`` out under ``target`` (which must not exist). Names of
    one inode become hard links of one file, as they were."""
    made: dict[Any, str] = {}

    def walk(ident: Any, path: str, depth: int) -> None:
        os.mkdir(path)
        for name, child in sorted(state.dirs[ident].items()):
            child_path = os.path.join(path, name)
            if child in state.dirs:
                if depth < 64 and child not in made:
                    made[child] = child_path
                    walk(child, child_path, depth + 1)
            elif child in state.links:
                os.symlink(state.links[child], child_path)
            elif child in made:
                os.link(made[child], child_path)
            else:
                made[child] = child_path
                with open(child_path, "wb") as f:
                    f.write(state.files.get(child, b""))

    walk(state.root, target, 0)
