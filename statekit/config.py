"""A store's configuration file (``statekit.yaml``): reading, writing, finding stores.

``read_config`` checks the file (schema, pipeline graph, fields);
``write_new_store`` lays down a new store's files; ``refuse_nesting`` keeps
stores from nesting; ``pipeline_from`` takes a pipeline in any form a caller
may give it (preset name, path, mapping, ``Pipeline``).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from . import files as diskio
from .codecs import YAML_CODEC
from .errors import PipelineError, StoreExistsError, StoreNotFoundError, ValidationError
from .folders import Folders
from .models import STORE_SCHEMA, StoreConfig
from .parsing import invalid
from .pipeline import PRESETS, Pipeline, load_pipeline
from .schema import schema_of

CONFIG_FILE = "statekit.yaml"

CONFIG_HEADER = b"""\
# statekit store configuration.
# pipeline: the stage graph every move is checked against (edit with care:
# statekit checks the graph when it opens the store).
# unique: metadata keys whose values no two episodes may share, e.g.
# [archive_identifier] (restart running workers after changing it).
"""

NEST_SCAN_DIRS = 2000
NEST_SCAN_ENTRIES = 50_000
"""How far ``Store.init`` looks for a store below its folder: breadth first
(the nearest levels first), not into ``.git``, ``.statekit`` or through
symlinks, and at most this many folders and directory entries, so init in
a huge folder stays fast; a store deeper in a bigger tree is not found."""


def read_config(root: str) -> StoreConfig:
    """The checked configuration of the store at ``root``."""
    path = os.path.join(root, CONFIG_FILE)
    raw = diskio.read_file(path)
    if raw is None:
        raise StoreNotFoundError(f"no statekit store at {root} ({CONFIG_FILE} not found)")
    data = YAML_CODEC.load(raw, path)
    schema_of(data, path, current=STORE_SCHEMA, legacy_ok=False)
    pipeline = data.get("pipeline")
    try:
        load_pipeline(pipeline if isinstance(pipeline, Mapping) else {})
    except PipelineError as exc:
        raise PipelineError(f"{path}: {exc.message}", problems=exc.problems) from None
    try:
        return StoreConfig.model_validate(data)
    except PydanticValidationError as exc:
        raise invalid(exc, raw, path, "statekit.yaml") from None


INDEX_URL_ENV = "STATEKIT_INDEX_URL"
"""The environment variable naming the index's database; overrides ``index: {url}``."""

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def index_url(config: StoreConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The URL of the store's server index (``STATEKIT_INDEX_URL``, else
    ``index: {url}`` with ``${VAR}`` expanded), or None for the SQLite index."""
    env = os.environ if environ is None else environ
    url = env.get(INDEX_URL_ENV) or (config.index.url if config.index is not None else None)
    if not url:
        return None

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ValidationError(f"the index url names ${{{name}}}, which is not set in the environment",
                                  field="index.url", hint=f"export {name}=... before running statekit")
        return env[name]

    return server_url(check_index_url(_VAR.sub(expand, url)))


def check_index_url(url: str) -> str:
    """``url`` if it names a database statekit can keep its index in."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("postgresql", "postgresql+psycopg", "postgres"):
        raise ValidationError(
            f"the index url must be a PostgreSQL url (postgresql+psycopg://user@host/db), got {scheme or url!r}",
            field="index.url", hint="e.g. postgresql+psycopg://statekit:${PGPASSWORD}@db.example/statekit")
    return url


def server_url(url: str) -> str:
    """``url`` as SQLAlchemy takes it (``postgresql://`` means psycopg 3 here)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def write_new_store(folders: Folders, config: StoreConfig, graph: Pipeline) -> None:
    """Lay down a new store's files in its (existing, empty of a store) root:
    ``shows/``, ``.statekit/.gitignore`` and ``statekit.yaml``."""
    top, disk = folders.root, folders.disk
    folders.make(("shows",))
    with folders.open((".statekit",), create=True) as machine:
        ignore = os.path.join(top, ".statekit", ".gitignore")
        if not diskio.lexists(ignore, dir_fd=machine):
            diskio.atomic_write(disk, ignore, b"# machine-owned: index, locks, backups, trash\n*\n", dir_fd=machine)
    body = config.model_dump(mode="json")
    for optional in ("index", "worker", "alerts", "events", "reporting", "retention"):  # written only when set: a plain store's file stays as it was
        if body.get(optional) is None:
            body.pop(optional, None)
    if not body.get("limits"):  # limits: written by a person when a stage needs them
        body.pop("limits", None)
    body["pipeline"] = graph.to_config()
    diskio.atomic_write(disk, os.path.join(top, CONFIG_FILE), CONFIG_HEADER + YAML_CODEC.dump_plain(body, flow_leaves=True),
                        dir_fd=folders.root_fd)


def refuse_nesting(top: str) -> None:
    """``StoreExistsError`` if ``top`` is inside a store or holds one below it
    (a command run inside would find the wrong one, and a rebuild of the
    outer store would index the inner one's files)."""
    real = os.path.realpath(top)
    for folder in Path(real).parents:
        if os.path.lexists(os.path.join(folder, CONFIG_FILE)):
            raise StoreExistsError(
                f"{top} is inside the statekit store at {folder}; stores cannot be nested",
                hint=f"use that store (statekit --root {folder} ...), or choose a directory outside it")
    inner = store_below(real)
    if inner is not None:
        raise StoreExistsError(
            f"{top} holds a statekit store below it, at {inner}; stores cannot be nested",
            hint=f"use that store (statekit --root {inner} ...), or choose a directory that does not hold one")


def store_below(top: str) -> str | None:
    """The first folder below ``top`` holding ``statekit.yaml``, within the
    bounds of ``NEST_SCAN_DIRS`` and ``NEST_SCAN_ENTRIES``; None if none."""
    queue = deque([top])
    folders = entries = 0
    while queue and folders < NEST_SCAN_DIRS and entries < NEST_SCAN_ENTRIES:
        folder = queue.popleft()
        folders += 1
        try:
            listing = os.scandir(folder)
        except OSError:  # missing (init makes it) or unreadable: nothing to find there
            continue
        with listing:
            for entry in listing:
                entries += 1
                if entry.name == CONFIG_FILE and folder != top:
                    return entry.path[: -len(CONFIG_FILE) - 1]
                if entry.name not in (".git", ".statekit") and entry.is_dir(follow_symlinks=False):
                    queue.append(entry.path)
                if entries >= NEST_SCAN_ENTRIES:
                    break
    return None


def pipeline_from(spec: Pipeline | Mapping[str, Any] | str | os.PathLike[str]) -> Pipeline:
    """A pipeline from a preset name, a YAML file's path, a mapping or a ``Pipeline``."""
    if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and spec in PRESETS):
        path = os.fspath(spec)
        raw = diskio.read_file(path)
        if raw is None:
            if isinstance(spec, str) and os.sep not in spec and not spec.endswith((".yaml", ".yml")):
                return load_pipeline(spec)  # an unknown preset name: say so
            raise PipelineError(f"pipeline file {path} not found")
        data = YAML_CODEC.load(raw, path)
        return load_pipeline(data.get("pipeline", data))
    return load_pipeline(spec)


def upgrade_store_format(folders: Folders, version: int) -> None:
    """Set ``schema_version`` in ``statekit.yaml`` (comments and layout kept), atomically."""
    path = os.path.join(folders.root, CONFIG_FILE)
    raw = diskio.read_file(path)
    if raw is None:
        raise StoreNotFoundError(f"no statekit store at {folders.root} ({CONFIG_FILE} not found)")
    parsed = YAML_CODEC.parse(raw, path)
    data = dict(parsed.data)
    data["schema_version"] = version
    written = YAML_CODEC.dump(data, parsed)
    diskio.atomic_write(folders.disk, path, written.raw, dir_fd=folders.root_fd)
