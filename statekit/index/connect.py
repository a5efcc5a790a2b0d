"""Opening the index: connect, bring an old index to the current revision through
Alembic, rebuild from the files one that cannot be upgraded or was never filled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .. import folders
from ..errors import (
    IndexUnavailableError,
    StatekitError,
    UnsafePathError,
)
from .db import Index, create_schema, engine_for, read_only_engine_for, revision_of
from .dialect import (
    database_path,
    sqlite_url,
)
from .rebuild import has_tables, index_lock, rebuild_locked, stamp_revision
from .scan import RebuildReport, index_path, walk
from .tables import (
    INDEX_REVISION,
    ROWS_REVISION,
    episodes,
    index_meta,
)

if TYPE_CHECKING:
    from ..writes import Writer

log = logging.getLogger("statekit")

Progress = Callable[[int, int], None]
"""progress(done, total): called as a long operation goes."""

# --- opening -------------------------------------------------------------------


def migrations_dir() -> str:
    import statekit._migrations as migrations

    return os.path.dirname(os.path.abspath(migrations.__file__))


def alembic_upgrade(conn: Connection, revision: str = "head") -> None:
    """Run the Alembic migrations on ``conn`` (handed to env.py). Alembic is imported only here:
    an index at the current revision, every command's case, never loads it (with Mako and
    Pygments, about 0.1 s of a command's start). ``IndexUnavailableError`` if Alembic refuses."""
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", migrations_dir())
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, revision)
    except CommandError as exc:  # (an unknown revision, a broken history)
        raise IndexUnavailableError(f"Alembic cannot upgrade it: {exc}",
                                    hint="'statekit rebuild-index' builds it again from the files") from exc


def open_index(writer: Writer, url: str | None = None) -> Index:
    """The store's index, at the current revision and filled from the files.

    An index at an older revision is upgraded with Alembic (on its own
    connection); one that cannot be upgraded (damaged, foreign, or from a
    newer statekit) is rebuilt from the files instead of refusing to start.
    One whose rows were derived by another revision (``ROWS_REVISION``: after
    an upgrade here, or by ``alembic upgrade head`` alone) is rebuilt too, so
    every row is what this code derives from the files.
    """
    path = index_path(writer.root)
    if url is None:  # SQLite follows symlinks: refuse one in place of .statekit or of the database's files
        folders.check_dirs(writer.root, (".statekit",))
        for name in (path, path + "-wal", path + "-shm", path + "-journal"):
            if os.path.islink(name):
                raise UnsafePathError(f"refusing to follow a symlink at {name}", path=name)
    index = Index(engine_for(url or sqlite_url(path), busy_timeout=writer.config.lock_timeout), writer.pipeline,
                  writer.config.unique)
    if url is None and not os.path.exists(path):
        build_unless_built(writer, index)
        return index
    try:
        with index.engine.connect() as conn:
            current = revision_of(conn)
            if current != INDEX_REVISION:
                with conn.begin():
                    if current is None and not has_tables(conn):
                        create_schema(conn)
                        stamp_revision(conn)
                    else:
                        alembic_upgrade(conn)
            filled = conn.execute(select(episodes.c.show_id).limit(1)).first() is not None
            derived = rows_revision(conn)
    except (SQLAlchemyError, StatekitError, OSError) as exc:  # cannot be upgraded: rebuild
        if url is not None:
            raise
        log.warning("statekit: the index could not be opened or upgraded (%s); rebuilding it from the files", exc)
        build_unless_built(writer, index, damaged=True)
        return index
    if derived != ROWS_REVISION:
        log.info("statekit: the index's rows were derived by %s; rebuilding them from the files for revision %s",
                 f"revision {derived}" if derived else "a statekit older than revision 0005", ROWS_REVISION)
        build_unless_built(writer, index)
    elif not filled and any(walk(writer.root)):
        build_unless_built(writer, index)
    refresh_unique(writer, index)
    return index


def open_read_only(writer: Writer, url: str | None = None) -> Index:
    """The store's index opened read-only (the dashboard's): the database refuses
    every write, and nothing is upgraded or rebuilt here. ``IndexUnavailableError``
    if there is no index yet or it is not at this code's revision."""
    path = index_path(writer.root)
    hint = "run any statekit command once (e.g. 'statekit status'): it brings the index up to date"
    if url is None:
        folders.check_dirs(writer.root, (".statekit",))
        for name in (path, path + "-wal", path + "-shm", path + "-journal"):
            if os.path.islink(name):
                raise UnsafePathError(f"refusing to follow a symlink at {name}", path=name)
        if not os.path.exists(path):
            raise IndexUnavailableError(f"no index at {path} to open read-only", hint=hint)
    index = Index(read_only_engine_for(url or sqlite_url(path), busy_timeout=writer.config.lock_timeout),
                  writer.pipeline, writer.config.unique)
    try:
        with index.engine.connect() as conn:
            current, derived = revision_of(conn), rows_revision(conn)
    except SQLAlchemyError as exc:
        index.close()
        raise IndexUnavailableError(f"the index could not be opened read-only ({exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0]})", hint=hint) from exc
    if current != INDEX_REVISION or derived != ROWS_REVISION:
        index.close()
        raise IndexUnavailableError(f"the index is at revision {current} (rows {derived}); this statekit reads "
                                    f"{INDEX_REVISION} (rows {ROWS_REVISION})", hint=hint)
    return index


def refresh_unique(writer: Writer, index: Index) -> None:
    """Derive the index's unique values again if ``unique:`` changed since."""
    try:
        if index.unique_current():
            return
        with index_lock(writer):
            index.refresh_unique()
    except (SQLAlchemyError, StatekitError) as exc:
        log.warning("statekit: the index could not record the unique keys (%s); duplicates are caught again "
                    "once 'statekit rebuild-index' succeeds", exc)


def rows_revision(conn: Connection) -> str | None:
    """The ``ROWS_REVISION`` of the code that derived an index's rows (None:
    made before revision 0005 recorded it)."""
    return conn.execute(select(index_meta.c.value).where(index_meta.c.key == "rows_revision")).scalar()


def build_unless_built(writer: Writer, index: Index, damaged: bool = False) -> None:
    """Rebuild, unless another process built the index while we waited for it."""
    with index_lock(writer):
        if not damaged and is_ready(index):
            return
        rebuild_locked(writer, index, None, RebuildReport())


def is_ready(index: Index) -> bool:
    path = database_path(index.engine)
    if path is not None and not os.path.exists(path):
        return False
    try:
        with index.engine.connect() as conn:
            return (revision_of(conn) == INDEX_REVISION and rows_revision(conn) == ROWS_REVISION
                    and conn.execute(select(episodes.c.show_id).limit(1)).first() is not None)
    except SQLAlchemyError:
        return False


def upgrade(writer: Writer) -> str:
    """Bring the index to the current revision (``statekit db upgrade``); the revision."""
    index = writer.index
    with index.engine.connect() as conn, conn.begin():
        alembic_upgrade(conn)
        return revision_of(conn) or ""


