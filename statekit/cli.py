"""The ``statekit`` command line: parse, call one Store method, render.

Tables for people, ``--json`` for programs. A user error prints one line
(what is wrong, what to do) to stderr and exits 2; exit 1 means a check
found problems; 0 means all is well. No traceback reaches a user unless
``--debug`` is given.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import __version__
from .errors import CorruptFileError, StatekitError, StoreNotFoundError, ValidationError
from .models import Episode, Event, not_utf8
from .schema import legacy_id
from .store import CONFIG_FILE, Store

# Piped output is not wrapped at 80 columns: programs and grep read it.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"statekit: error: {message}", markup=False)
    sys.exit(code)


def check_params(ctx: click.Context) -> None:
    """Refuse an argument or option that is not valid UTF-8 (Python turns such
    bytes into lone surrogates, which no file can hold), naming it, before the
    command does anything. Paths are exempt: a file name may be any bytes."""
    for param in ctx.command.params:
        if isinstance(param.type, click.Path):
            continue
        value = ctx.params.get(param.name or "")
        for item in value if isinstance(value, (tuple, list)) else (value,):
            reason = not_utf8(item) if isinstance(item, str) else None
            if reason is not None:
                name = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
                raise ValidationError(f"{name} is {reason}", field=param.name,
                                      hint="give it as UTF-8 text (check the terminal's encoding, LANG and "
                                           "LC_ALL); nothing was changed")


class Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        check_params(ctx)
        return super().invoke(ctx)


class Group(click.Group):
    """Turns every statekit error into one line and exit code 2."""

    command_class = Command
    group_class = type  # subgroups are Groups too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            check_params(ctx)
            return super().invoke(ctx)
        except StatekitError as exc:
            if ctx.meta.get("statekit.debug"):
                raise
            fail(exc.one_line())
        except click.UsageError as exc:  # bad arguments: one line too, with where to look
            where = " ".join(["statekit", *(exc.ctx.command_path if exc.ctx else ctx.command_path).split()[1:]])
            fail(f"{exc.format_message()} (see '{where} --help')")
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:  # the last line of defence: a bug, reported without a traceback
            if ctx.meta.get("statekit.debug"):
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (this is a bug; run with --debug for details)", 70)


def find_root(given: str | None) -> str:
    """--root, then $STATEKIT_ROOT (click fills it), else the nearest parent
    of the working directory holding statekit.yaml (like git)."""
    if given:
        return given
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return str(folder)
    raise StoreNotFoundError(f"no statekit store in {here} or any parent directory")


class Context:
    def __init__(self, root: str | None) -> None:
        self.root = root
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(find_root(self.root))
        return self._store


pass_ctx = click.make_pass_decorator(Context)


def split_ref(value: str) -> tuple[str, str]:
    show, sep, ep = value.partition("/")
    if not sep or not show or not ep or "/" in ep:
        raise click.BadParameter(f"expected SHOW/EP such as 'oliver/ep001', got {value!r}")
    return show, ep


def ref_arg(func: Any) -> Any:
    return click.argument("ref", metavar="SHOW/EP")(func)


def dump_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def money(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="STATEKIT_ROOT", metavar="DIR", type=click.Path(),
              help="The store (default: $STATEKIT_ROOT, else the nearest parent holding statekit.yaml).")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="statekit")
@click.pass_context
def main(ctx: click.Context, root: str | None, debug: bool) -> None:
    """Durable, human-editable state for multi-stage media pipelines."""
    ctx.meta["statekit.debug"] = debug
    ctx.obj = Context(root)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as escapes, never crashes
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    quiet_logs()


class StderrLines(logging.Handler):
    """Each record as one line on the current stderr."""

    statekit_cli = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
            line = text if text.startswith("statekit:") else f"statekit: {record.levelname.lower()}: {text}"
            sys.stderr.write(line + "\n")
        except Exception:
            self.handleError(record)


def quiet_logs(level: int = logging.WARNING) -> None:
    """statekit's log records on stderr, one line each (once per process)."""
    logger = logging.getLogger("statekit")
    if not any(getattr(h, "statekit_cli", False) for h in logger.handlers):
        logger.addHandler(StderrLines())
    logger.setLevel(level)


@main.command()
@click.argument("directory", default=".", metavar="[DIR]", type=click.Path())
@click.option("--pipeline", default="archive", show_default=True, metavar="NAME|FILE", type=click.Path(),
              help="A preset (archive, podcast) or a YAML file with a pipeline.")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
              help="Episode file format.")
@click.option("--unique", multiple=True, metavar="KEY",
              help="A metadata key whose values no two episodes may share (repeatable).")
def init(directory: str, pipeline: str, fmt: str, unique: tuple[str, ...]) -> None:
    """Create a store in DIR (default: here). Stores do not nest: DIR may not be
    inside a store, nor hold one below it."""
    store = Store.init(directory, pipeline=pipeline, format=fmt, unique=list(unique))
    keys = f", unique {', '.join(unique)}" if unique else ""
    out.print(f"created store {store.root} (pipeline {store.pipeline.name}, format {fmt}{keys})", markup=False)


def parse_meta(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """``--set-meta KEY=TEXT`` (a text value) or ``KEY:=JSON`` (any JSON value: ``year:=2004``)."""
    found: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or key == ":":
            raise click.BadParameter(f"expected KEY=TEXT or KEY:=JSON, got {item!r}")
        if key.endswith(":"):
            key = key[:-1]
            try:
                found[key] = json.loads(value)
            except ValueError:
                raise click.BadParameter(f"{key}:= takes a JSON value (e.g. 2004, true, \"text\"), "
                                         f"got {value!r}") from None
        else:
            found[key] = value
    return found


def meta_option(func: Any) -> Any:
    return click.option("--set-meta", "set_meta", multiple=True, metavar="KEY=TEXT|KEY:=JSON", callback=parse_meta,
                        help="Set one metadata key (repeatable); KEY:=JSON for a number, list, true...")(func)


@main.command()
@ref_arg
@click.option("--title", default="", help="Episode title.")
@meta_option
@pass_ctx
def create(ctx: Context, ref: str, title: str, set_meta: dict[str, Any]) -> None:
    """Create episode SHOW/EP at the pipeline's initial stage."""
    ep = ctx.store.create(*split_ref(ref), title=title, metadata=set_meta)
    out.print(f"created {ep.key} at {ep.stage} (version {ep.version})", markup=False)


@main.command()
@ref_arg
@click.argument("stage")
@click.option("--message", "-m", default=None, help="A note recorded with the move.")
@click.option("--cost", type=float, default=None, help="Cost of the work just done (added to the stage left).")
@click.option("--expected-version", type=int, default=None,
              help="Refuse unless the episode is at this version (compare-and-set).")
@meta_option
@pass_ctx
def advance(ctx: Context, ref: str, stage: str, message: str | None, cost: float | None,
            expected_version: int | None, set_meta: dict[str, Any]) -> None:
    """Move SHOW/EP to STAGE (checked against the pipeline), setting metadata in the same write."""
    show, ep_id = split_ref(ref)
    current = ctx.store.get(show, ep_id)
    metadata = None
    if set_meta:  # the other keys as read: the write is refused if someone wrote in between
        metadata = {**current.metadata, **set_meta}
        if expected_version is None:
            expected_version = current.version
    ep = ctx.store.advance(show, ep_id, stage, message=message, cost=cost, expected_version=expected_version,
                           metadata=metadata)
    out.print(f"{ep.key}: {current.stage} -> {ep.stage} (version {ep.version})", markup=False)


@main.command()
@ref_arg
@click.argument("stage")
@click.option("--by", required=True, help="Who approves.")
@click.option("--note", default=None, help="Why, or what was checked.")
@pass_ctx
def approve(ctx: Context, ref: str, stage: str, by: str, note: str | None) -> None:
    """Approve SHOW/EP to enter the gated STAGE."""
    ep = ctx.store.approve(*split_ref(ref), stage, by=by, note=note)
    out.print(f"{ep.key}: {stage} approved by {by} (version {ep.version})", markup=False)


@main.command()
@ref_arg
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def show(ctx: Context, ref: str, as_json: bool) -> None:
    """State and event history of SHOW/EP."""
    show_id, ep_id = split_ref(ref)
    store = ctx.store
    ep = store.get(show_id, ep_id)
    events = store.events(show_id, ep_id)
    resume = store.resume_stage(show_id, ep_id)
    if as_json:
        dump_json({"episode": ep.model_dump(mode="json"), "resume_stage": resume,
                   "events": [e.model_dump(mode="json", exclude_none=True) for e in events]})
        return
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("episode", f"{ep.key}  {ep.title}")
    facts.add_row("stage", f"{ep.stage} (since {when(ep.stage_entered_at)} UTC)")
    facts.add_row("version", str(ep.version))
    facts.add_row("created", when(ep.created_at))
    facts.add_row("updated", when(ep.updated_at))
    if ep.message:
        facts.add_row("message", ep.message)
    costs = ", ".join(f"{k} {money(v)}" for k, v in ep.costs.items())
    facts.add_row("cost", money(ep.cost_total) + (f"  ({costs})" if costs else ""))
    facts.add_row("attempts", ", ".join(f"{k} {v}" for k, v in ep.attempts.items()))
    for gate, a in ep.approvals.items():
        facts.add_row("approved", f"{gate} by {a.by} at {when(a.at)}" + (f": {a.note}" if a.note else ""))
    if ep.checkpoints:
        facts.add_row("checkpoints", ", ".join(f"{k} ({c.size} B)" for k, c in ep.checkpoints.items()))
        facts.add_row("resume from", resume or "(no intact checkpoint)")
    for name, path in ep.files.items():
        facts.add_row("file", f"{name}: {path}")
    for name, record in ep.assets.items():
        upload = f" -> {ep.uploads[name].url}" if name in ep.uploads else ""
        facts.add_row("asset", f"{name}: {record.kind}, {human_size(record.size)}, "
                               f"sha256 {record.sha256[:12]}…{upload}")
    if ep.lease is not None:
        facts.add_row("leased", f"by {ep.lease.owner} until {when(ep.lease.expires_at)} UTC (run {ep.lease.run_id})")
    if ep.stage_done:
        facts.add_row("done", f"{ep.stage}'s work is done; waiting to move on")
    if ep.due_at is not None:
        facts.add_row("retry at", f"{when(ep.due_at)} UTC ('statekit retry {ep.key}' to retry now)")
    if ep.hold is not None:
        facts.add_row("held", f"{ep.hold}")
    if ep.error_history:
        last = ep.error_history[-1]
        action = f", {last.action}" if last.action else ""
        facts.add_row("errors", f"{len(ep.error_history)}, last: [{last.kind}{action}] {last.message}")
    out.print(facts, markup=False)
    table = Table(title="events", title_justify="left", box=None, header_style="bold")
    for column in ("v", "at (UTC)", "kind", "move", "cost", "message"):
        table.add_column(column, justify="right" if column in ("v", "cost") else "left")
    for e in events:
        table.add_row(str(e.version), when(e.at), e.kind, describe(e), money(e.cost), e.message or "")
    out.print(table, markup=False)


def describe(e: Event) -> str:
    """The change an event made, in a few words."""
    extra = e.model_extra or {}
    move = f"{e.from_stage or ''} -> {e.to_stage}".strip() if e.to_stage else ""
    if e.kind in ("fail", "recovered"):
        return f"{move} [{extra.get('error_kind', '')}, {extra.get('action', '')}]"
    if e.kind == "start":
        return f"{move + ' ' if move else ''}run by {extra.get('owner', '')}"
    if move:
        return move + (f", changed {', '.join(e.fields)}" if e.fields else "")
    if e.kind == "checkpoint":
        return f"saved {extra.get('checkpoint', '')}"
    if e.kind == "heartbeat":
        return f"lease to {str(extra.get('lease_expires_at', ''))[:19]}"
    if e.kind == "finish":
        return "done, stays"
    if e.kind == "retry":
        return f"released ({extra.get('released', '')})" + (f" by {extra['by']}" if extra.get("by") else "")
    if e.kind == "approve":
        return f"{extra.get('gate', '')} approved by {extra.get('by', '')}"
    if e.kind == "asset":
        return f"stored {extra.get('asset', '')} ({str(extra.get('content_sha256', ''))[:12]}…)"
    if e.kind == "asset_removed":
        return f"removed {extra.get('asset', '')}"
    if e.kind == "upload":
        return "uploaded " + ", ".join(extra.get("assets", []))
    if e.fields:
        return "changed " + ", ".join(e.fields)
    return ""


def episode_rows(episodes: list[Episode]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("show", "episode", "stage", "version", "updated (UTC)", "cost", "title"):
        table.add_column(column, justify="right" if column in ("version", "cost") else "left")
    for e in episodes:
        table.add_row(e.show_id, e.episode_id, e.stage, str(e.version), when(e.updated_at), money(e.cost_total),
                      e.title)
    return table


@main.command("list")
@click.option("--show", "show_id", default=None, help="Only this show.")
@click.option("--stage", default=None, help="Only episodes at this stage.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def list_(ctx: Context, show_id: str | None, stage: str | None, as_json: bool) -> None:
    """Episodes, optionally of one show and/or at one stage."""
    episodes = ctx.store.list(show=show_id, stage=stage)
    if as_json:
        dump_json([e.model_dump(mode="json") for e in episodes])
    elif episodes:
        out.print(episode_rows(episodes), markup=False)
    else:
        err.print("no episodes", markup=False)


@main.command()
@click.option("--dry-run", is_flag=True, help="Only list the files that would be rewritten.")
@pass_ctx
def migrate(ctx: Context, dry_run: bool) -> None:
    """Rewrite episode files of an older schema (each backed up first)."""
    with progress_bar("migrating") as progress:
        report = ctx.store.migrate(dry_run=dry_run, progress=progress)
    verb = "would migrate" if dry_run else "migrated"
    for f in report.files:
        out.print(f"{verb} {f['path']} (schema {f['from']} -> {f['to']})", markup=False)
    if not report.files:
        out.print("every file is at the current schema", markup=False)
    elif report.backup_dir:
        out.print(f"{len(report.files)} file(s) migrated; originals in {report.backup_dir}", markup=False)


@main.command("import")
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


@main.command()
@ref_arg
@pass_ctx
def delete(ctx: Context, ref: str) -> None:
    """Remove SHOW/EP (its folder is moved to .statekit/trash, not erased)."""
    where = ctx.store.delete(*split_ref(ref))
    out.print(f"deleted {ref}; its files are kept in {where}", markup=False)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal (stderr); nothing when piped."""
    if not err.is_terminal:
        yield None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_problems(problems: list[Any]) -> None:
    for p in problems:
        out.print(f"  {p.message}", markup=False)


@main.command("rebuild-index")
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


@main.command()
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


@main.command()
@pass_ctx
def verify(ctx: Context) -> None:
    """Check the index against the files, the files against their event logs, checkpoints, backups and assets."""
    with progress_bar("verifying") as progress:
        report = ctx.store.verify(progress)
    if report.clean:
        out.print(f"ok: {report.checked} episodes checked; files, event logs and index agree; "
                  f"{report.checkpoints} checkpoints, {report.backups} backups and {report.assets} assets intact",
                  markup=False)
        return
    out.print(f"{len(report.problems)} problem(s) in {report.checked} episodes:", markup=False)
    print_problems(report.problems)
    sys.exit(1)


@main.command()
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
        console.print(f"  {entry['episodes']} episodes, {entry['done']} done ({entry['completion']}%), "
                      f"cost so far {money(entry['cost'])}\n", markup=False)


# --- reports (issue 7): statekit report -------------------------------------------------

REPORT_SUFFIXES = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv", ".txt": "text"}


@main.command("report")
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
    from .report import build_report, render, write_report

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


@main.command("next")
@click.argument("stage")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="How many.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def next_(ctx: Context, stage: str, limit: int, as_json: bool) -> None:
    """Episodes ready for STAGE (to enter it, or to be run in it), longest-waiting first."""
    episodes = ctx.store.next(stage, limit=limit)
    if as_json:
        dump_json([e.model_dump(mode="json") for e in episodes])
    elif episodes:
        out.print(episode_rows(episodes), markup=False)
    else:
        err.print(f"nothing is ready for {stage}", markup=False)


# --- failures and recovery --------------------------------------------------------------


@main.command()
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


@main.command()
@ref_arg
@click.option("--by", default=None, help="Who releases it (recorded in the event).")
@click.option("--note", default=None, help="What was fixed.")
@pass_ctx
def retry(ctx: Context, ref: str, by: str | None, note: str | None) -> None:
    """Release SHOW/EP for its next attempt now (after fixing what held it, or skipping a backoff)."""
    ep = ctx.store.retry_now(*split_ref(ref), by=by, note=note)
    out.print(f"{ep.key}: ready to retry {ep.previous_stage} (version {ep.version})", markup=False)


@main.command()
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


@main.command()
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


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(value: str) -> timedelta:
    """'7d', '12h', '1w2d', '90m', '30s' -> a timedelta."""
    text = value.strip().lower()
    parts = re.findall(r"(\d+)\s*([smhdw])", text)
    if not text or not parts or re.sub(r"(\d+)\s*([smhdw])", "", text).strip():
        raise click.BadParameter(f"expected an age such as '7d', '12h' or '1w2d', got {value!r}")
    try:
        return timedelta(seconds=sum(int(n) * UNITS[u] for n, u in parts))
    except OverflowError:
        raise click.BadParameter(f"{value!r} is too long an age; give at most a few thousand years") from None


def human_size(n: float) -> str:
    """Bytes for people: 512 B, 1.5 kB, 12.3 MB (powers of 1000, like ls -h --si)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@main.command()
@click.option("--backups-older-than", "age", default="30d", show_default=True, metavar="AGE",
              help="Remove episode backups older than this, e.g. 7d, 12h, 1w2d.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def gc(ctx: Context, age: str, dry_run: bool, as_json: bool) -> None:
    """Remove what nothing needs: stored assets no episode refers to, temp files of
    interrupted work, expired cache entries, and episode backups older than AGE
    (the newest backup of a damaged episode is kept)."""
    store = ctx.store
    cutoff = parse_age(age)
    parts: dict[str, list[Any]] = {}
    # backups first: an object only an old backup named is then collected in the same run
    parts["backups"] = store.gc_backups(backups_older_than=cutoff, dry_run=dry_run)
    gone = {os.path.join(store.root, r.path) for r in parts["backups"]} if dry_run else set()
    parts["assets"] = store.gc_objects(dry_run=dry_run, ignoring=gone).removed
    parts["temp"] = store.gc_run_temp(dry_run=dry_run)
    parts["cache"] = gc_cache(store, dry_run)
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


def gc_cache(store: Store, dry_run: bool) -> list[Any]:
    """The cache's expired and damaged entries (and LRU ones past its cap),
    and files of interrupted cache writes, as gc lines."""
    from .cache import Cache
    from .objects import Removed

    if not os.path.exists(os.path.join(store.root, ".statekit", "cache", "cache.db")):
        return []  # no cache yet: nothing to collect, and none made
    with Cache.for_store(store) as cache:
        report = cache.gc(dry_run=dry_run)
    return ([Removed(f".statekit/cache/{r.kind}/{r.key}", r.size, f"cache entry, {r.reason}") for r in report.removed]
            + [Removed(f.path, f.size, f"cache {f.reason} file") for f in report.strays])


@main.group()
def asset() -> None:
    """Media files of episodes (content-addressed: the same bytes are stored once)."""


@asset.command("add")
@ref_arg
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--kind", default="audio", show_default=True, help="What the file is (audio, image, video, ...).")
@click.option("--name", default=None, help="Name in the episode (default: the file's name).")
@click.option("--media-type", default=None, help="e.g. audio/wav (default: guessed from the name).")
@pass_ctx
def asset_add(ctx: Context, ref: str, file: str, kind: str, name: str | None, media_type: str | None) -> None:
    """Store FILE as an asset of SHOW/EP."""
    show_id, ep_id = split_ref(ref)
    added = name or legacy_id(os.path.basename(file))
    ep = ctx.store.add_asset(show_id, ep_id, file, kind, added, media_type=media_type)
    record = ep.assets[added]
    out.print(f"{ep.key}: asset {added} = sha256 {record.sha256[:12]}… ({human_size(record.size)}, "
              f"{record.media_type}); version {ep.version}", markup=False)


@asset.command("list")
@ref_arg
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def asset_list(ctx: Context, ref: str, as_json: bool) -> None:
    """The assets of SHOW/EP, and where each was uploaded."""
    show_id, ep_id = split_ref(ref)
    ep = ctx.store.get(show_id, ep_id)
    if as_json:
        dump_json({name: {**r.model_dump(mode="json"), "path": ctx.store.asset_path(show_id, ep_id, name),
                          "upload": ep.uploads[name].model_dump(mode="json") if name in ep.uploads else None}
                   for name, r in ep.assets.items()})
        return
    if not ep.assets:
        err.print(f"{ep.key} has no assets", markup=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "kind", "size", "media type", "sha256", "uploaded to"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for name, r in sorted(ep.assets.items()):
        table.add_row(name, r.kind, human_size(r.size), r.media_type, r.sha256[:12] + "…",
                      ep.uploads[name].url if name in ep.uploads else "")
    out.print(table, markup=False)


@asset.command("upload")
@ref_arg
@click.argument("name")
@click.option("--thumbnail", default=None, metavar="NAME", help="An image asset to upload beside it as thumbnail.jpg.")
@pass_ctx
def asset_upload(ctx: Context, ref: str, name: str, thumbnail: str | None) -> None:
    """Upload asset NAME of SHOW/EP to the bucket in statekit.yaml's gcs: settings
    (audio/<uuid>/audio.<ext>), once: a repeat finds the same object and writes nothing."""
    show_id, ep_id = split_ref(ref)
    store = ctx.store
    if store.config.gcs is None:
        fail("this store has no 'gcs:' settings; add e.g. 'gcs: {bucket: my-bucket}' to statekit.yaml")
    try:
        from .gcs import GCSUploader, upload_asset
    except ImportError:
        fail("uploads need google-cloud-storage: pip install 'statekit[gcs]'")
    uploader = GCSUploader.from_config(store.config.gcs)
    before = store.get(show_id, ep_id).version
    ep = upload_asset(store, show_id, ep_id, name, uploader, thumbnail=thumbnail)
    for n in [name] + ([thumbnail] if thumbnail else []):
        verb = "uploaded" if ep.version != before else "already at"
        out.print(f"{ep.key}: {n} {verb} {ep.uploads[n].url} (generation {ep.uploads[n].generation})", markup=False)


@asset.command("verify")
@ref_arg
@click.argument("name", required=False)
@pass_ctx
def asset_verify(ctx: Context, ref: str, name: str | None) -> None:
    """Hash the assets of SHOW/EP (or only NAME); exit 1 if one is missing or changed."""
    show_id, ep_id = split_ref(ref)
    names = [name] if name else sorted(ctx.store.get(show_id, ep_id).assets)
    bad = 0
    for n in names:
        try:
            path = ctx.store.verify_asset(show_id, ep_id, n)
        except CorruptFileError as exc:
            bad += 1
            out.print(f"damaged {n}: {exc.message}", markup=False)
        else:
            out.print(f"ok      {n} ({os.path.relpath(path, ctx.store.root)})", markup=False)
    if bad:
        sys.exit(1)


@main.command()
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


@main.command()
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


@main.group()
def db() -> None:
    """The index database."""


@db.command()
@pass_ctx
def upgrade(ctx: Context) -> None:
    """Bring the index to the current schema revision (Alembic)."""
    revision = ctx.store.upgrade_index()
    out.print(f"index at revision {revision}", markup=False)


@main.command()
@click.argument("directory", required=False, metavar="[DIR]", type=click.Path())
@click.option("--data", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Sample data: catalog.csv and audio/ (default: the repository's data/archive; "
                   "scripts/make_sample_data.py makes bigger sets).")
def demo(directory: str | None, data: str | None) -> None:
    """Migrate about 200 sample episodes through the archive pipeline: real work, injected
    failures, a worker killed with kill -9, a restart that redoes nothing. DIR: new or empty
    (default: a new temp dir)."""
    from .demo import run_demo

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


# --- the cache (issue 6): statekit cache stats|clear|gc ---------------------------------


@contextmanager
def store_cache(ctx: Context) -> Iterator[Any]:
    from .cache import Cache

    cache_ = Cache.for_store(ctx.store)
    try:
        yield cache_
    finally:
        cache_.close()


def print_cache_report(report: Any) -> None:
    """Each removed entry and stray file, then the totals."""
    verb = "would remove" if report.dry_run else "removed"
    for r in report.removed:
        out.print(f"{verb} {r.key[:16]} {r.kind:<6} {human_size(r.size):>10}  {r.reason} "
                  f"({r.uses} uses, last used {when(r.last_used)} UTC)", markup=False)
    for stray in report.strays:
        out.print(f"{verb} {stray.path} ({human_size(stray.size)}, {stray.reason} file)", markup=False)
    if not report.removed and not report.strays:
        out.print("nothing to remove", markup=False)
    else:
        strays = f" and {len(report.strays)} stray file(s)" if report.strays else ""
        out.print(f"{verb} {len(report.removed)} entries{strays}, {'would free' if report.dry_run else 'freed'} "
                  f"{human_size(report.freed)}", markup=False)
    if report.pinned_over_cap:
        err.print("warning: the cache is still over its max_size: every entry left is pinned by an episode "
                  "in progress", markup=False)


@main.group()
def cache() -> None:
    """The cache of expensive results (TTS audio, downloaded media) in .statekit/cache."""


@cache.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def cache_stats(ctx: Context, as_json: bool) -> None:
    """Entries, size against the cap, per kind, pinned entries, hits and misses, evictions."""
    with store_cache(ctx) as cache_:
        stats = cache_.stats()
    if as_json:
        dump_json(stats.to_json())
        return
    lookups = stats.hits + stats.misses
    table = Table(box=None, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("entries", str(stats.entries))
    table.add_row("size", f"{human_size(stats.bytes)} of {human_size(stats.max_size)} "
                          f"({100 * stats.bytes / stats.max_size:.1f}% of the cap)")
    table.add_row("pinned", f"{stats.pinned_entries} entries, {human_size(stats.pinned_bytes)} "
                            "(used by episodes in progress)")
    table.add_row("hits / misses", f"{stats.hits} / {stats.misses}"
                                   + (f" ({100 * stats.hits / lookups:.1f}% hits)" if lookups else ""))
    table.add_row("evictions", ", ".join(f"{reason} {n}" for reason, n in stats.evictions.items()))
    out.print(table, markup=False)
    if stats.kinds:
        kinds = Table(box=None, header_style="bold")
        for column in ("kind", "entries", "size"):
            kinds.add_column(column, justify="left" if column == "kind" else "right")
        for kind, numbers in stats.kinds.items():
            kinds.add_row(kind, str(numbers["entries"]), human_size(numbers["bytes"]))
        out.print(kinds, markup=False)


@cache.command("clear")
@click.option("--kind", default=None, help="Only entries of this kind (e.g. tts, media).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@pass_ctx
def cache_clear(ctx: Context, kind: str | None, dry_run: bool) -> None:
    """Remove every cache entry (of one kind), pinned ones too."""
    with store_cache(ctx) as cache_:
        print_cache_report(cache_.clear(kind=kind, dry_run=dry_run))


@cache.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@pass_ctx
def cache_gc(ctx: Context, dry_run: bool) -> None:
    """Remove damaged and expired cache entries, then the least recently used down to the cap (pinned ones stay)."""
    with store_cache(ctx) as cache_:
        print_cache_report(cache_.gc(dry_run=dry_run))


if __name__ == "__main__":  # pragma: no cover
    main()
