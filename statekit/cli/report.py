"""Progress: status (per show), report (text, JSON, CSV or HTML; --daily/--weekly into the
store's reports/), and compact (retention: compress what finished episodes keep)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .app import Context, command, dump_json, err, human_size, money, out, parse_age, pass_ctx, progress_bar
from .controls import print_controls


@command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Progress per show: episodes per stage, completion %, cost so far."""
    shows = ctx.store.status()
    stranded = ctx.store.stranded_counts()  # issue 19: episodes a change of the graph left behind
    if as_json:
        for entry in shows:
            entry["stranded"] = sum(s["n"] for s in stranded if s["show_id"] == entry["show_id"])
        dump_json(shows)
        return
    print_controls(out, ctx.store.controls_overview())  # paused stages, limits in use ('controls --json')
    if not shows:
        err.print("no episodes yet", markup=False)
        return
    print_status(out, shows)
    print_stranded(out, stranded)


def print_stranded(console: Console, stranded: list[dict[str, Any]]) -> None:
    """One line: the episodes a change of the pipeline graph stranded, per stage (none: nothing)."""
    if not stranded:
        return
    per: dict[str, int] = {}
    for s in stranded:
        per[s["stage"]] = per.get(s["stage"], 0) + s["n"]
    console.print(f"stranded by a pipeline change: {sum(per.values())} episode(s) ("
                  + ", ".join(f"{n} in {stage}" for stage, n in per.items())
                  + "); see 'statekit pipeline check'", markup=False)


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
@click.option("--daily", "period", flag_value="daily", default=None,
              help="Write today's report into the store: reports/daily_report_YYYY-MM-DD.<format> and "
                   "reports/summary.json (format: reporting.report_format, else html); re-running replaces it.")
@click.option("--weekly", "period", flag_value="weekly",
              help="The same for this ISO week: reports/weekly_report_YYYY-Www.<format>.")
@pass_ctx
def report_(ctx: Context, fmt: str | None, output: str | None, show_id: str | None, days: int,
            stuck_after: str, period: str | None) -> None:
    """Progress report: counts, completion, failures, costs, throughput, estimated completion date."""
    from ..report import build_report, render, write_report  # imported on use: only this command reports

    if period is not None:
        if output is not None or show_id is not None:
            raise click.UsageError(f"--{period} writes the whole store's report into reports/; "
                                   "leave out -o and --show (or leave out --" + period + ")")
        from ..report.writing import write_scheduled

        with progress_bar("reporting") as progress:
            paths = write_scheduled(ctx.store, period, fmt, progress=progress)
        out.print(f"wrote {period} report to {paths[0]} ({human_size(os.path.getsize(paths[0]))}) "
                  f"and {paths[1]}", markup=False)
        return
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


@command()
@click.option("--older-than", default=None, metavar="AGE",
              help="Compress episodes untouched for this long (default: retention.older_than in statekit.yaml, "
                   "else 30d).")
@click.option("--dry-run", is_flag=True, help="Only say what would be compressed and how much it would save.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def compact(ctx: Context, older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Compress the event logs and checkpoints of finished episodes nobody touched for a while.

    An episode in a terminal stage whose files are all older than the age gets
    events.jsonl.gz (and checkpoints/<stage>.json.gz) in place of the plain
    files; every command reads them as before, and a later write makes the
    log plain again. Prints the space saved."""
    age = parse_age(older_than) if older_than is not None else None
    with progress_bar("compacting") as progress:
        report = ctx.store.compact(older_than=age, dry_run=dry_run, progress=progress)
    if as_json:
        dump_json(report.as_dict())
    else:
        verb = "would compress" if dry_run else "compressed"
        files = sum(len(c.files) for c in report.compacted)
        out.print(f"{verb} {files} files of {len(report.compacted)} episodes (of {report.checked} checked; "
                  f"{report.already} compressed before): {human_size(report.bytes_before)} -> "
                  f"{human_size(report.bytes_after)}, {human_size(report.saved)} saved"
                  + (f" ({100 * report.saved / report.bytes_before:.0f}%)" if report.bytes_before else ""),
                  markup=False)
        for problem in report.problems:
            err.print(problem, markup=False)
    if report.problems:
        sys.exit(1)


COMMANDS = [status, report_, compact]
