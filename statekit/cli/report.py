"""Progress: status (per show) and report (text, JSON, CSV or HTML)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .app import Context, command, dump_json, err, human_size, money, out, parse_age, pass_ctx, progress_bar


@command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Progress per show: episodes per stage, completion %, cost so far."""
    shows = ctx.store.status()
    if as_json:
        dump_json(shows)
        return
    if not shows:
        err.print("no episodes yet", markup=False)
        return
    print_status(out, shows)


def print_status(console: Console, shows: list[dict[str, Any]]) -> None:
    """Each show: a heading, episodes per stage, the totals. The heading
    stays one line (cut with '…' on a narrow terminal): as the table's
    title it was wrapped to the narrow table's width, mid-phrase."""
    for entry in shows:
        heading = entry["show_id"] + (f"  {entry['title']}" if entry["title"] != entry["show_id"] else "")
        console.print(heading, style="italic", no_wrap=True, overflow="ellipsis", markup=False)
        table = Table(box=None, header_style="bold")
        table.add_column("stage", no_wrap=True, overflow="ellipsis")
        table.add_column("episodes", justify="right", no_wrap=True)
        for stage, n in entry["stages"].items():
            table.add_row(stage, str(n))
        console.print(table, markup=False)
        pending = (f"; {entry['pending']} with a pending hand edit ('statekit sync' adopts, 'statekit revert' "
                   "throws away)") if entry.get("pending") else ""
        console.print(f"  {entry['episodes']} episodes, {entry['done']} done ({entry['completion']}%), "
                      f"cost so far {money(entry['cost'])}{pending}\n", markup=False)


REPORT_SUFFIXES = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv", ".txt": "text"}


@command("report")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default=None,
              help="text, json, csv or html (default: from -o's suffix, else text).")
@click.option("-o", "--output", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the report to FILE (atomically) instead of standard output.")
@click.option("--show", "show_id", default=None, help="Only this show.")
@click.option("--days", type=click.IntRange(1, 3660), default=30, show_default=True,
              help="Days of throughput history (also the basis of the estimated completion date).")
@click.option("--stuck-after", default="24h", show_default=True, metavar="AGE",
              help="An episode with no change for this long (outside the first and terminal stages) is stuck.")
@pass_ctx
def report_(ctx: Context, fmt: str | None, output: str | None, show_id: str | None, days: int,
            stuck_after: str) -> None:
    """Progress report: counts, completion, failures, costs, throughput, estimated completion date."""
    from ..report import build_report, render, write_report  # imported on use: only this command reports

    fmt = fmt or (REPORT_SUFFIXES.get(Path(output).suffix.lower(), "text") if output else "text")
    stuck = parse_age(stuck_after)
    with progress_bar("reporting") as progress:
        if output is None:
            text = render(build_report(ctx.store, show=show_id, days=days, stuck_after=stuck, progress=progress), fmt)
        else:
            path = write_report(ctx.store, output, fmt, show=show_id, days=days, stuck_after=stuck,
                                progress=progress)
    if output is None:
        click.echo(text, nl=False)
    else:
        out.print(f"wrote {fmt} report to {path} ({human_size(os.path.getsize(path))})", markup=False)


COMMANDS = [status, report_]
