"""Changing many episodes at once: requeue, and the pipeline graph: pipeline check|migrate|history.
(``statekit retry --stage`` lives with ``retry`` in ``runs`` and renders with ``print_bulk`` here.)"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from ..bulk import BulkReport
from .app import Context, command, dump_json, err, group, out, parse_age, pass_ctx, progress_bar


def parse_since(value: str | None, now: datetime) -> datetime | None:
    """An ISO time (UTC unless it says otherwise) or an age ('2h': two hours ago)."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return now - parse_age(value)
    except click.BadParameter:
        raise click.BadParameter(f"expected a time (2026-01-31T12:00Z) or an age ('2h', '7d'), got {value!r}",
                                 param_hint="--since") from None


def print_bulk(report: BulkReport, as_json: bool, what: tuple[str, str]) -> None:
    """The episodes changed (or, in a dry run, to be changed) and those left alone, with why."""
    if as_json:
        dump_json(report.to_json())
        return
    verb = "would " + what[0] if report.dry_run else what[1]
    if report.changed:
        table = Table(box=None, header_style="bold", title=f"{verb}" + (" (dry run: nothing written)"
                                                                     if report.dry_run else ""), title_justify="left")
        for column in ("episode", "from", "to", "action"):
            table.add_column(column)
        for c in report.changed:
            table.add_row(c["episode"], c.get("from") or "", c.get("to") or "", c.get("action") or "")
        out.print(table, markup=False)
    for s in report.skipped:
        out.print(f"left alone {s['episode']}: {s['reason']}", markup=False)
    out.print(f"{report.selected} selected, {len(report.changed)} {verb}, {len(report.skipped)} left alone",
              markup=False)


@command()
@click.option("--query", "where", required=True, metavar="WHERE",
              help="A SQL condition on table episodes (what follows WHERE), run read-only on the index.")
@click.option("--to", "to", default=None, metavar="STAGE",
              help="Move them to STAGE (default: release each where it is: hold and backoff cleared).")
@click.option("--note", default=None, help="Why (recorded in each episode's event).")
@click.option("--by", default=None, help="Who (recorded in each event).")
@click.option("--dry-run", is_flag=True, help="List what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def requeue(ctx: Context, where: str, to: str | None, note: str | None, by: str | None, dry_run: bool,
            as_json: bool) -> None:
    """Requeue the episodes a SQL condition selects, each through the write path (one event)."""
    with progress_bar("requeueing") as progress:
        report = ctx.store.requeue(where, to=to, note=note, by=by, dry_run=dry_run, progress=progress)
    print_bulk(report, as_json, ("requeue", "requeued"))


@group()
def pipeline() -> None:
    """The pipeline graph: what a change strands, moving stranded episodes, the graphs recorded."""


@pipeline.command("check")
@click.option("--config", "proposed", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="A proposed statekit.yaml (or pipeline file), judged before it is saved.")
@click.option("--show", "show_id", default=None, help="Only this show.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def pipeline_check(ctx: Context, proposed: str | None, show_id: str | None, as_json: bool) -> None:
    """List the episodes a graph change strands (exit 1 if any): with --config before saving it,
    without it the graph in force against the one each episode last moved under."""
    stranded = ctx.store.pipeline_check(proposed, show_id)
    if as_json:
        dump_json({"stranded": stranded})
    elif stranded:
        table = Table(box=None, header_style="bold")
        for column in ("episode", "stage", "from", "why"):
            table.add_column(column)
        for s in stranded:
            table.add_row(s["episode"], s["stage"], s["previous_stage"] or "", s["reason"])
        out.print(table, markup=False)
        out.print(f"{len(stranded)} episode(s) stranded" + (" by the proposed graph" if proposed else "")
                  + "; move them with 'statekit pipeline migrate --map OLD=NEW' (after saving) or "
                    "'statekit requeue'", markup=False)
    else:
        err.print("no episode is stranded" + (" by the proposed graph" if proposed else ""), markup=False)
    if stranded:
        sys.exit(1)


def parse_map(values: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise click.BadParameter(f"expected OLD=NEW such as 'converting=transcoding', got {value!r}",
                                     param_hint="--map")
        mapping[old.strip()] = new.strip()
    return mapping


@pipeline.command("migrate")
@click.option("--map", "maps", multiple=True, required=True, metavar="OLD=NEW",
              help="A stage the pipeline no longer has, and the stage its episodes go to (repeatable).")
@click.option("--note", default=None, help="Why (recorded in each episode's event).")
@click.option("--by", default=None, help="Who (recorded in each event).")
@click.option("--dry-run", is_flag=True, help="List what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def pipeline_migrate(ctx: Context, maps: tuple[str, ...], note: str | None, by: str | None, dry_run: bool,
                     as_json: bool) -> None:
    """Move the episodes the saved graph stranded, by --map OLD=NEW (one event each)."""
    mapping = parse_map(maps)
    with progress_bar("migrating") as progress:
        report = ctx.store.pipeline_migrate(mapping, note=note, by=by, dry_run=dry_run, progress=progress)
    print_bulk(report, as_json, ("move", "moved"))


@pipeline.command("history")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def pipeline_history(ctx: Context, as_json: bool) -> None:
    """The graphs the store ran under (.statekit/pipelines), oldest first; events name theirs by hash."""
    graphs: list[dict[str, Any]] = ctx.store.pipeline_history()
    if as_json:
        dump_json(graphs)
        return
    table = Table(box=None, header_style="bold")
    for column in ("hash", "recorded (UTC)", "name", "stages"):
        table.add_column(column)
    for g in graphs:
        table.add_row(g["hash"], g["recorded_at"][:19].replace("T", " "), g["name"], ", ".join(g["stages"]))
    out.print(table, markup=False)


COMMANDS = [requeue, pipeline]
