"""statekit demo: the sample migration (statekit.demo) with a status table."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..store import Store
from .app import command, err, money, out, quiet_logs


@command()
@click.argument("directory", required=False, metavar="[DIR]", type=click.Path())
@click.option("--data", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Sample data: catalog.csv and audio/ (default: the repository's data/archive; "
                   "scripts/make_sample_data.py makes bigger sets).")
def demo(directory: str | None, data: str | None) -> None:
    """Migrate about 200 sample episodes through the archive pipeline: real work, injected
    failures, a worker killed with kill -9, a restart that redoes nothing. DIR: new or empty
    (default: a new temp dir)."""
    from ..demo import run_demo  # imported on use: only this command runs the demo

    root = directory or tempfile.mkdtemp(prefix="statekit-demo-")
    quiet_logs(logging.CRITICAL)  # the demo says what failed and why; the failure logs would repeat it
    with demo_progress() as progress:
        result = run_demo(root, data, say=lambda line: out.print(line, markup=False), progress=progress)
    table = Table(title="status", title_justify="left", box=None, header_style="bold")
    store = Store.open(result.root)
    stages = [s for s in store.pipeline.stages if s in result.counts]
    for column in ("show", *stages, "complete", "cost"):
        table.add_column(column, justify="left" if column == "show" else "right")
    for entry in store.status():
        table.add_row(entry["show_id"], *(str(entry["stages"].get(s, 0)) for s in stages),
                      f"{entry['completion']}%", money(entry["cost"]))
    out.print(table, markup=False)
    out.print(f"look at it: statekit --root {result.root} status   (or errors, show SHOW/EP, sql ...)", markup=False)
    out.print(f"report: {result.report}", markup=False)
    out.print(f"dashboard: statekit --root {result.root} serve   (then open http://127.0.0.1:9464/; Ctrl-C stops it)",
              markup=False)


@contextmanager
def demo_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A bar per phase on a terminal; when piped, a plain line at each quarter."""
    if out.is_terminal and err.is_terminal:
        with Progress(TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("episodes"), console=err, transient=True) as bar:
            tasks: dict[str, Any] = {}

            def update(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done, total=total)

            yield update
        return
    shown: dict[str, int] = {}

    def lines(label: str, done: int, total: int) -> None:
        quarter = 4 * done // max(1, total)
        if quarter > shown.get(label, 0):
            shown[label] = quarter
            out.print(f"  {label}: {done}/{total} episodes", markup=False)

    yield lines


COMMANDS = [demo]
