"""Failures and recovery of stage runs: recover, retry, errors."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from .app import Context, command, dump_json, err, out, pass_ctx, progress_bar, split_ref
from .bulk import parse_since, print_bulk


@command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def recover(ctx: Context, as_json: bool) -> None:
    """Bring back episodes whose worker died (their lease expired) for a retry."""
    report = ctx.store.recover()
    if as_json:
        dump_json({"recovered": report.recovered, "gave_up": report.gave_up, "problems": report.problems})
    else:
        for r in report.recovered:
            then = "ready now" if r["action"] == "retry" else "skipped: attempts used up" \
                if r["action"] == "give_up" else "held for a person"
            out.print(f"recovered {r['episode']}: {r['stage']} by {r['owner']} stopped (attempt {r['attempt']}); "
                      f"{then}", markup=False)
        for key in report.gave_up:
            if not any(r["episode"] == key for r in report.recovered):
                out.print(f"gave up   {key} (a give-up a stopped process left half done)", markup=False)
        for problem in report.problems:
            err.print(f"could not recover {problem}", markup=False)
        out.print(f"{len(report.recovered)} recovered, {len(report.gave_up)} skipped", markup=False)
    if report.problems:
        sys.exit(1)


@command()
@click.argument("ref", metavar="[SHOW/EP]", required=False)
@click.option("--stage", default=None, help="Every failed, held or given-up episode of this stage instead.")
@click.option("--kind", default=None, help="With --stage: only those whose last error is of this kind.")
@click.option("--show", "show_id", default=None, help="With --stage: only this show.")
@click.option("--since", default=None, metavar="TIME|AGE",
              help="With --stage: only those that failed since (2026-01-31T12:00Z, or an age: 2h, 7d).")
@click.option("--by", default=None, help="Who releases it (recorded in the event).")
@click.option("--note", default=None, help="What was fixed.")
@click.option("--dry-run", is_flag=True, help="With --stage: list what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --stage: machine-readable output.")
@pass_ctx
def retry(ctx: Context, ref: str | None, stage: str | None, kind: str | None, show_id: str | None,
          since: str | None, by: str | None, note: str | None, dry_run: bool, as_json: bool) -> None:
    """Release SHOW/EP for its next attempt now (after fixing what held it, or skipping a backoff);
    with --stage, every failed, held or given-up episode of that stage (one event each)."""
    if (ref is None) == (stage is None):
        raise click.UsageError("give SHOW/EP, or --stage STAGE (not both)")
    if stage is None:
        if kind or show_id or since or dry_run or as_json:
            raise click.UsageError("--kind, --show, --since, --dry-run and --json go with --stage")
        ep = ctx.store.retry_now(*split_ref(ref or ""), by=by, note=note)
        out.print(f"{ep.key}: ready to retry {ep.previous_stage} (version {ep.version})", markup=False)
        return
    when = parse_since(since, ctx.store.clock())
    with progress_bar("retrying") as progress:
        report = ctx.store.retry(stage, kind=kind, show=show_id, since=when, note=note, by=by, dry_run=dry_run,
                                 progress=progress)
    print_bulk(report, as_json, ("release", "released"))


@command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many, newest last.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def errors(ctx: Context, limit: int, as_json: bool) -> None:
    """The latest failures of stage runs (.statekit/errors.jsonl)."""
    lines = ctx.store.error_log()[-limit:]
    if as_json:
        dump_json(lines)
        return
    if not lines:
        err.print("no failures recorded", markup=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("at (UTC)", "episode", "stage", "kind", "action", "attempt", "message"):
        table.add_column(column, justify="right" if column == "attempt" else "left")
    for line in lines:
        table.add_row(str(line.get("at", ""))[:19].replace("T", " "), f"{line.get('show_id')}/{line.get('episode_id')}",
                      str(line.get("stage", "")), str(line.get("kind", "")), str(line.get("action", "")),
                      str(line.get("attempt", "")), str(line.get("message", "")))
    out.print(table, markup=False)


COMMANDS = [recover, retry, errors]
