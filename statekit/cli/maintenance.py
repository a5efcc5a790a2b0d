"""The store itself: init, migrate (older episode files), import (legacy files)."""

from __future__ import annotations

import sys

import click

from ..store import Store
from .app import Context, command, dump_json, err, out, pass_ctx, progress_bar


@command()
@click.argument("directory", default=".", metavar="[DIR]", type=click.Path())
@click.option("--pipeline", default="archive", show_default=True, metavar="NAME|FILE", type=click.Path(),
              help="A preset (archive, podcast) or a YAML file with a pipeline.")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
              help="Episode file format.")
@click.option("--unique", multiple=True, metavar="KEY",
              help="A metadata key whose values no two episodes may share (repeatable).")
@click.option("--ledger/--no-ledger", default=True, show_default=True,
              help="Chain every event and record its patch (history, diff, revert; see the README). "
                   "--no-ledger: the format before it, for a store older statekit releases must still write.")
@click.option("--index-url", metavar="URL",
              help="Keep the index on PostgreSQL (postgresql+psycopg://user@host/db; ${VAR} is expanded "
                   "from the environment when the store opens).")
def init(directory: str, pipeline: str, fmt: str, unique: tuple[str, ...], index_url: str | None,
         ledger: bool) -> None:
    """Create a store in DIR (default: here). Stores do not nest: DIR may not be
    inside a store, nor hold one below it."""
    store = Store.init(directory, pipeline=pipeline, format=fmt, unique=list(unique), index_url=index_url,
                        ledger=ledger)
    keys = f", unique {', '.join(unique)}" if unique else ""
    out.print(f"created store {store.root} (pipeline {store.pipeline.name}, format {fmt}{keys})", markup=False)


@command()
@click.option("--dry-run", is_flag=True, help="Only list the files that would be rewritten.")
@click.option("--ledger", is_flag=True, help="Also seal every event log and move the store to the ledger.")
@pass_ctx
def migrate(ctx: Context, dry_run: bool, ledger: bool) -> None:
    """Rewrite episode and show files of an older schema (each backed up first); with
    --ledger, seal the event logs of a store made before the ledger and move it there."""
    with progress_bar("migrating") as progress:
        report = ctx.store.migrate(dry_run=dry_run, progress=progress, ledger=ledger)
    verb = "would migrate" if dry_run else "migrated"
    for f in report.files:
        out.print(f"{verb} {f['path']} (schema {f['from']} -> {f['to']})", markup=False)
    if not report.files:
        out.print("every file is at the current schema", markup=False)
    elif report.backup_dir:
        out.print(f"{len(report.files)} file(s) migrated; originals in {report.backup_dir}", markup=False)
    if report.store_format is not None:
        old, new = report.store_format
        sealed = "would seal" if dry_run else "sealed"
        out.print(f"{sealed} the event logs of {len(report.sealed)} episode(s); statekit.yaml "
                  f"{'would move' if dry_run else 'moved'} from format {old} to {new} (the ledger: every event "
                  "chained; statekit releases without it refuse the store)", markup=False)


@command("import")
@click.argument("legacy_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--show", "show_id", required=True, help="Show to import into (created if missing).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every file, and the counts).")
@pass_ctx
def import_(ctx: Context, legacy_dir: str, show_id: str, as_json: bool) -> None:
    """Bring schema-0 episode YAML files from LEGACY_DIR into a show. A bad file
    does not stop it: each is reported with why; exit 1 if any was rejected."""
    with progress_bar("importing") as progress:
        report = ctx.store.import_legacy(legacy_dir, show_id, progress)
    if as_json:
        dump_json({"counts": report.counts, "imported": report.imported, "skipped": report.skipped,
                   "rejected": report.rejected})
    else:
        for r in report.rejected:
            err.print(f"rejected {r['file']}: {r['reason']}", markup=False)
        counts = report.counts
        out.print(f"imported {counts['imported']}, skipped {counts['skipped']} already present, "
                  f"rejected {counts['rejected']}", markup=False)
    if report.rejected:
        sys.exit(1)


COMMANDS = [init, migrate, import_]
