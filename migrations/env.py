"""Alembic environment for a statekit index.

Three ways in:

- from statekit itself (``Store.open``, ``statekit db upgrade``): the open
  connection arrives in ``config.attributes["connection"]``;
- ``alembic -x root=DIR upgrade head``: the SQLite index of the store at DIR;
- ``alembic -x url=URL upgrade head``: any database URL.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import URL, make_url

from statekit.index.dialect import make_engine, sqlite_url
from statekit.index.tables import metadata

config = context.config
if config.config_file_name is not None and not config.attributes.get("connection"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str | URL:
    options = context.get_x_argument(as_dictionary=True)
    if "url" in options:
        return options["url"]
    if "root" in options:
        root = os.path.abspath(options["root"])
        if not os.path.isfile(os.path.join(root, "statekit.yaml")):
            raise SystemExit(f"no statekit store at {root} (statekit.yaml not found)")
        os.makedirs(os.path.join(root, ".statekit"), exist_ok=True)
        return sqlite_url(os.path.join(root, ".statekit", "index.db"))
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("say which index: alembic -x root=STORE_DIR ... (or -x url=DATABASE_URL)")
    return url


def _configure(**kw: object) -> None:
    context.configure(target_metadata=metadata, compare_type=True, **kw)


def run_offline() -> None:
    url = _url()
    _configure(url=url, literal_binds=True, render_as_batch=make_url(url).get_backend_name() == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def _migrate(conn: object) -> None:
    """Run the migrations on ``conn``; after an upgrade, the query planner's statistics taken
    again (an index a migration made, or made again, has none: SQLite would then take it for a
    few rows and read a show's every row through it)."""
    upgraded: list[object] = []
    _configure(connection=conn, render_as_batch=conn.dialect.name == "sqlite",  # type: ignore[attr-defined]
               on_version_apply=lambda *, step, **_: upgraded.append(step) if step.is_upgrade else None)
    with context.begin_transaction():
        context.run_migrations()
        if upgraded:
            conn.exec_driver_sql("ANALYZE")  # type: ignore[attr-defined]


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _migrate(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
