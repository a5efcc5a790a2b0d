"""Backups and housekeeping: restore, repair, gc."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from ..operations import collect_garbage
from .app import (
    Context,
    command,
    dump_json,
    err,
    human_size,
    out,
    parse_age,
    pass_ctx,
    progress_bar,
    ref_arg,
    split_ref,
    when,
)


@command()
@ref_arg
@click.option("--backup", "number", type=int, default=1, show_default=True, help="Which backup (1 = the newest).")
@click.option("--list", "listing", is_flag=True, help="Only list the backups.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with --list).")
@pass_ctx
def restore(ctx: Context, ref: str, number: int, listing: bool, as_json: bool) -> None:
    """Put a backup of SHOW/EP back (a new version, one 'restore' event)."""
    show_id, ep_id = split_ref(ref)
    if as_json and not listing:
        raise click.UsageError("--json goes with --list (a restore prints one line)")
    if listing:
        found = ctx.store.backups(show_id, ep_id)
        if as_json:
            dump_json([{"backup": b.number, "version": b.version, "path": b.path, "size": b.size,
                        "saved_at": b.saved_at.isoformat(), "problem": b.problem} for b in found])
            return
        if not found:
            err.print(f"{ref} has no backups", markup=False)
            return
        table = Table(box=None, header_style="bold")
        for column in ("backup", "version", "saved (UTC)", "size", "state"):
            table.add_column(column, justify="right" if column in ("backup", "version", "size") else "left")
        for b in found:
            table.add_row(str(b.number), str(b.version), when(b.saved_at), str(b.size), b.problem or "ok")
        out.print(table, markup=False)
        return
    ep = ctx.store.restore(show_id, ep_id, number)
    out.print(f"{ep.key}: restored backup {number}; now at {ep.stage} (version {ep.version})", markup=False)


@command()
@click.option("--dry-run", is_flag=True, help="Only list what would be done.")
@pass_ctx
def repair(ctx: Context, dry_run: bool) -> None:
    """Restore damaged episode files from backups, drop uncommitted event tails, remove temp files, fix the index."""
    with progress_bar("repairing") as progress:
        report = ctx.store.repair(dry_run=dry_run, progress=progress)
    for action in report.actions:
        out.print(("would " if dry_run else "") + action, markup=False)
    for problem in report.problems:
        out.print(f"cannot fix: {problem}", markup=False)
    if not report.actions and not report.problems:
        out.print("nothing to repair", markup=False)
    else:
        out.print(f"{len(report.actions)} action(s){' planned' if dry_run else ''}, "
                  f"{len(report.problems)} problem(s) left for a person", markup=False)
    if report.problems:
        sys.exit(1)


@command()
@click.option("--backups-older-than", "age", default="30d", show_default=True, metavar="AGE",
              help="Remove episode backups older than this, e.g. 7d, 12h, 1w2d.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def gc(ctx: Context, age: str, dry_run: bool, as_json: bool) -> None:
    """Remove what nothing needs: stored assets no episode refers to, temp files of
    interrupted work, expired cache entries, and episode backups older than AGE
    (the newest backup of a damaged episode is kept)."""
    parts = collect_garbage(ctx.store, backups_older_than=parse_age(age), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    if as_json:
        dump_json({"dry_run": dry_run, "freed": sum(r.size for rs in parts.values() for r in rs),
                   **{part: [{"path": r.path, "size": r.size, "reason": r.reason} for r in rs]
                      for part, rs in parts.items()}})
        return
    for removed in parts.values():
        for r in removed:
            out.print(f"{verb} {r.path} ({human_size(r.size)}, {r.reason})", markup=False)
    summary = ", ".join(f"{len(rs)} {part} ({human_size(sum(r.size for r in rs))})" for part, rs in parts.items())
    freed = sum(r.size for rs in parts.values() for r in rs)
    out.print(f"{verb} {summary}; {'would free' if dry_run else 'freed'} {human_size(freed)}", markup=False)


COMMANDS = [restore, repair, gc]
