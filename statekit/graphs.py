"""The pipeline graphs a store has run under: ``.statekit/pipelines/<hash>.yaml``.

Every event carries ``graph``, the short hash of the graph in force when it was
written (``graph_hash``), so a move is judged by the graph it was made under, not
by today's (``verify``). The file of each hash is written once, when a process
opens the store under that graph (``record``); it is never changed. A stage an
older graph had and the current one dropped stays readable (``retired_stages``):
an episode sitting in one is *stranded* until ``statekit pipeline migrate``
moves it (see ``stranding``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from . import files as diskio
from .codecs import YAML_CODEC, compact_json
from .errors import StatekitError
from .folders import Folders
from .parsing import sha256
from .pipeline import Pipeline, load_pipeline, ready_for

log = logging.getLogger("statekit")

HASH_LEN = 12
"""Hex digits of a graph's hash kept in events (48 bits: collisions among one store's graphs are not a concern)."""
FOLDER = (".statekit", "pipelines")

_hashes: dict[int, tuple[Pipeline, str]] = {}  # id(pipeline) -> (the pipeline, kept alive so its id is not reused; hash)
_lock = threading.Lock()


def graph_hash(p: Pipeline) -> str:
    """The short hash of a graph: its configuration as canonical JSON (computed once per ``Pipeline``)."""
    hit = _hashes.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    digest = sha256(compact_json(p.to_config(), sort_keys=True))[:HASH_LEN]
    with _lock:
        if len(_hashes) > 256:
            _hashes.clear()
        _hashes[id(p)] = (p, digest)
    return digest


def path_of(root: str, digest: str) -> str:
    return os.path.join(root, *FOLDER, digest + ".yaml")


def record(folders: Folders, p: Pipeline, now: datetime) -> str:
    """Write ``.statekit/pipelines/<hash>.yaml`` for ``p`` if it is not there yet
    (atomic and durable; one stat when it is); returns the hash. A store that
    cannot be written here (read-only) is only logged: its events still carry
    the hash, and moves under an unrecorded graph are not judged."""
    digest = graph_hash(p)
    path = path_of(folders.root, digest)
    if os.path.lexists(path):
        return digest
    body = {"hash": digest, "recorded_at": now.isoformat(), "pipeline": p.to_config()}
    try:
        with folders.open(FOLDER, create=True) as folder:
            diskio.atomic_write(diskio.DISK, path, b"# a pipeline graph this store ran under (machine-owned; "
                                b"never edited)\n" + YAML_CODEC.dump_plain(body, flow_leaves=True), dir_fd=folder)
    except (OSError, StatekitError) as exc:
        log.warning("statekit: could not record the pipeline graph %s in %s (%s)", digest, path, exc)
    return digest


class History:
    """The recorded graphs of one store, read on first use and cached (they never change)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._graphs: dict[str, Pipeline | None] = {}
        self._retired: dict[str, frozenset[str]] = {}

    def graph(self, digest: Any) -> Pipeline | None:
        """The graph recorded under ``digest``; None if there is none (or it is damaged)."""
        if not isinstance(digest, str) or len(digest) != HASH_LEN or not digest.isalnum():
            return None
        if digest not in self._graphs:
            self._graphs[digest] = self._read(path_of(self.root, digest))
        return self._graphs[digest]

    def _read(self, path: str) -> Pipeline | None:
        try:
            raw = diskio.read_file(path)
            if raw is None:
                return None
            data = YAML_CODEC.load(raw, path)
            spec = data.get("pipeline") if isinstance(data, Mapping) else None
            return load_pipeline(spec if isinstance(spec, Mapping) else {})
        except (OSError, StatekitError) as exc:
            log.warning("statekit: the recorded pipeline graph %s cannot be read (%s)", path, exc)
            return None

    def count(self) -> int:
        """How many graphs are recorded (one listing of the folder)."""
        try:
            return sum(n.endswith(".yaml") for n in os.listdir(os.path.join(self.root, *FOLDER)))
        except FileNotFoundError:
            return 0

    def listing(self) -> list[dict[str, Any]]:
        """Every recorded graph, oldest first: ``hash``, ``recorded_at``, ``name``, ``stages``."""
        folder = os.path.join(self.root, *FOLDER)
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".yaml"))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path = os.path.join(folder, name)
            try:
                data = YAML_CODEC.load(diskio.read_file(path) or b"{}", path)
            except StatekitError:
                continue
            graph = self.graph(name[: -len(".yaml")])
            if graph is not None and isinstance(data, Mapping):
                out.append({"hash": name[: -len(".yaml")], "recorded_at": str(data.get("recorded_at", "")),
                            "name": graph.name, "stages": list(graph.stages)})
        return sorted(out, key=lambda g: g["recorded_at"])

    def retired_stages(self, current: Pipeline) -> frozenset[str]:
        """Stages of recorded graphs that ``current`` no longer has."""
        key = graph_hash(current)
        if key not in self._retired:
            old: set[str] = set()
            for entry in self.listing():
                old.update(entry["stages"])
            self._retired[key] = frozenset(old - set(current.stages))
        return self._retired[key]

    def forget(self) -> None:
        """Read the folder again on next use (a graph was recorded meanwhile)."""
        self._retired.clear()


# --- stranded episodes (pure) ---------------------------------------------------------

JUDGED_MOVES = frozenset({"advance", "start", "finish", "fail", "recovered", "give_up", "external_edit"})
"""Event kinds whose move the graph decided (``verify`` judges them by the graph they name).
An operator's override (``retry`` from a give-up, ``requeue``, ``pipeline_migrate``,
``restore``, ``revert``) is recorded as such and not judged."""


def stranding(new: Pipeline, stage: str, previous: str | None, *, done: bool = False,
              old: Pipeline | None = None) -> str | None:
    """Why an episode at ``stage`` (came from ``previous``) is stranded under the graph
    ``new``, or None. ``old``: the graph it last moved under (its last event's), if known.

    Stranded: its stage is gone; or it waits to retry a stage (``previous``, from the
    failure stage) it can no longer go back to (it would silently go elsewhere); or it
    had a next move (``pipeline.ready_for`` under ``old``) and has none now. An episode
    the new graph merely routes another way (a stage renamed or added ahead of it) is
    not stranded: ``rebuild-index`` brings the index's ``ready_for`` up to date."""
    if stage not in new.stages:
        return f"in stage {stage!r}, which pipeline {new.name!r} no longer has"
    retrying = stage == new.failure_stage and previous is not None
    if old is None or stage not in old.stages:
        if retrying and previous not in new.stages:
            return f"waiting to retry stage {previous!r}, which pipeline {new.name!r} no longer has"
        return None
    target = ready_for(old, stage, previous, dict.fromkeys(old.gates), done=done)  # gates: not this question
    if target is None or target == stage:
        return None
    if retrying and previous == target and target not in new.next_stages(stage):
        gone = f"which pipeline {new.name!r} no longer has" if target not in new.stages else \
            f"but pipeline {new.name!r} has no move {stage!r} -> {target!r} any more"
        return f"waiting to retry stage {target!r}, {gone}"
    if ready_for(new, stage, previous, dict.fromkeys(new.gates), done=done) is None:
        return f"waiting to move on from {stage!r}, which has no next stages in pipeline {new.name!r} any more"
    return None


def illegal_move(p: Pipeline, event: Mapping[str, Any]) -> str | None:
    """Why ``event``'s move is not one graph ``p`` allows (None: legal, or not a judged move)."""
    src, dst = event.get("from_stage"), event.get("to_stage")
    if event.get("kind") not in JUDGED_MOVES or not src or not dst or src == dst:
        return None
    if dst in p.next_stages(src):
        return None
    return f"version {event.get('version')} moved {src!r} -> {dst!r}, which graph {graph_hash(p)} " \
           f"({p.name!r}, in force then) does not allow"
