"""The index: rebuild-index, sync, verify, sql, db upgrade."""

from __future__ import annotations

import csv
import io
import sys
from typing import Any

import click
from rich.table import Table

from .app import Context, command, dump_json, group, out, pass_ctx, progress_bar


def print_problems(problems: list[Any]) -> None:
    for p in problems:
        out.print(f"  {p.message}", markup=False)


@command("rebuild-index")
@pass_ctx
def rebuild_index(ctx: Context) -> None:
    """Rebuild the index from the files alone and swap it in."""
    with progress_bar("rebuilding") as progress:
        report = ctx.store.rebuild_index(progress)
    out.print(f"indexed {report.episodes} episodes, {report.events} events, {report.shows} shows", markup=False)
    if report.problems:
        out.print(f"{len(report.problems)} file(s) could not be indexed:", markup=False)
        print_problems(report.problems)
        sys.exit(1)


@command()
@pass_ctx
def sync(ctx: Context) -> None:
    """Pick up files added, edited or deleted outside statekit."""
    with progress_bar("syncing") as progress:
        report = ctx.store.sync(progress)
    for key in report.added:
        out.print(f"added    {key}", markup=False)
    for change in report.changed:
        out.print(f"changed  {change['episode']}: {', '.join(change['fields']) or 'no field'} "
                  f"(now version {change['version']})", markup=False)
    for key in report.reindexed:
        out.print(f"indexed  {key} (written by statekit, missed by the index)", markup=False)
    for key in report.removed:
        out.print(f"removed  {key}", markup=False)
    for problem in report.rejected:
        out.print(f"rejected {problem.message}", markup=False)
    touched = len(report.added) + len(report.changed) + len(report.removed) + len(report.reindexed)
    out.print(f"{touched} change(s), {len(report.rejected)} rejected, {report.unchanged} unchanged", markup=False)
    if report.rejected:
        sys.exit(1)


@command()
@click.option("--full", is_flag=True,
              help="Check every episode again, also those unchanged since the last clean verify.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (exit status as without).")
@pass_ctx
def verify(ctx: Context, full: bool, as_json: bool) -> None:
    """Check the index against the files, the files against their event logs, checkpoints, backups and assets.

    An episode whose files, log and index rows are unchanged since its last clean
    check (remembered in .statekit/verified.db) is not parsed again; --full checks it too."""
    if as_json:
        report = ctx.store.verify(full=full)
        dump_json({"clean": report.clean, "checked": report.checked, "full": report.full,
                   "unchanged": report.unchanged, "checkpoints": report.checkpoints, "backups": report.backups,
                   "assets": report.assets, "problems": [vars(p) for p in report.problems]})
        if not report.clean:
            sys.exit(1)
        return
    with progress_bar("verifying") as progress:
        report = ctx.store.verify(progress, full=full)
    checked = f"{report.checked} episodes checked ({report.full} in full, {report.unchanged} unchanged since " \
              "the last clean verify)"
    if report.clean:
        out.print(f"ok: {checked}; files, event logs and index agree; "
                  f"{report.checkpoints} checkpoints, {report.backups} backups and {report.assets} assets intact",
                  markup=False)
        return
    out.print(f"{len(report.problems)} problem(s) in {checked}:", markup=False)
    print_problems(report.problems)
    sys.exit(1)


@command()
@click.argument("query")
@click.option("--json", "fmt", flag_value="json", help="Rows as a JSON list of objects.")
@click.option("--csv", "fmt", flag_value="csv", help="Rows as CSV with a header.")
@click.option("--timeout", type=float, default=None, metavar="S",
              help="Stop the query after S seconds (default 30).")
@pass_ctx
def sql(ctx: Context, query: str, fmt: str | None, timeout: float | None) -> None:
    """Run one read-only SQL statement on the index (tables: episodes, events, shows, stage_counts)."""
    columns, rows = ctx.store.sql(query) if timeout is None else ctx.store.sql(query, timeout=timeout)
    if fmt == "json":
        dump_json([dict(zip(columns, row)) for row in rows])
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        table = Table(box=None, header_style="bold")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        out.print(table, markup=False)


@group()
def db() -> None:
    """The index database."""


@db.command()
@pass_ctx
def upgrade(ctx: Context) -> None:
    """Bring the index to the current schema revision (Alembic)."""
    revision = ctx.store.upgrade_index()
    out.print(f"index at revision {revision}", markup=False)


COMMANDS = [rebuild_index, sync, verify, sql, db]
