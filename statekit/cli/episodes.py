"""Episode commands: create, advance, approve, show, diff, revert, list, next, delete."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click
from rich.table import Table

from ..history import Change
from ..models import Episode, Event
from ..operations import advance_setting_metadata, episode_overview
from .app import Context, command, dump_json, err, human_size, money, out, pass_ctx, ref_arg, split_ref, when


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


@command()
@ref_arg
@click.option("--title", default="", help="Episode title.")
@meta_option
@pass_ctx
def create(ctx: Context, ref: str, title: str, set_meta: dict[str, Any]) -> None:
    """Create episode SHOW/EP at the pipeline's initial stage."""
    ep = ctx.store.create(*split_ref(ref), title=title, metadata=set_meta)
    out.print(f"created {ep.key} at {ep.stage} (version {ep.version})", markup=False)


@command()
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
    left, ep = advance_setting_metadata(ctx.store, *split_ref(ref), stage, set_meta=set_meta, message=message,
                                        cost=cost, expected_version=expected_version)
    out.print(f"{ep.key}: {left} -> {ep.stage} (version {ep.version})", markup=False)


@command()
@ref_arg
@click.argument("stage")
@click.option("--by", required=True, help="Who approves.")
@click.option("--note", default=None, help="Why, or what was checked.")
@pass_ctx
def approve(ctx: Context, ref: str, stage: str, by: str, note: str | None) -> None:
    """Approve SHOW/EP to enter the gated STAGE."""
    ep = ctx.store.approve(*split_ref(ref), stage, by=by, note=note)
    out.print(f"{ep.key}: {stage} approved by {by} (version {ep.version})", markup=False)


@command()
@ref_arg
@click.option("--at", "at", type=click.IntRange(min=1), default=None, metavar="VERSION",
              help="Show committed VERSION, rebuilt from the event log.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def show(ctx: Context, ref: str, at: int | None, as_json: bool) -> None:
    """State and event history of SHOW/EP (the committed version; a pending hand edit is shown as a diff)."""
    show_id, ep_id = split_ref(ref)
    overview = episode_overview(ctx.store, show_id, ep_id, at)
    ep, events, resume = overview.episode, overview.events, overview.resume_stage
    changes = overview.pending_changes
    if as_json:
        dump_json({"episode": ep.model_dump(mode="json"), "resume_stage": resume, "pending": ep.pending,
                   "pending_changes": [vars(c) for c in changes] if changes is not None else None,
                   "events": [e.model_dump(mode="json", exclude_none=True) for e in events]})
        return
    out.print(episode_facts(ep, resume), markup=False)
    if ep.pending is not None:
        what = ("it cannot be read: " + str(ep.pending.get("error"))) if ep.pending.get("fields") is None \
            else "it changes " + (", ".join(ep.pending["fields"]) or "nothing but its layout")
        out.print(f"pending hand edit of {ep.pending['path']}: {what}; 'statekit sync' adopts a valid edit, "
                  f"'statekit revert {ep.key}' throws it away", markup=False)
        if changes:
            out.print(change_rows(changes, "committed", "edited"), markup=False)
    table = Table(title="events", title_justify="left", box=None, header_style="bold")
    for column in ("v", "at (UTC)", "kind", "move", "cost", "message"):
        table.add_column(column, justify="right" if column in ("v", "cost") else "left")
    for e in events:
        table.add_row(str(e.version), when(e.at), e.kind, describe(e), money(e.cost), e.message or "")
    out.print(table, markup=False)


def change_rows(changes: list[Change], before: str, after: str) -> Table:
    """A field-level diff as a table."""
    table = Table(box=None, header_style="bold")
    for column in ("field", before, after):
        table.add_column(column)
    for c in changes:
        table.add_row(c.field, shown_value(c.before), shown_value(c.after))
    return table


def shown_value(value: Any) -> str:
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@command()
@ref_arg
@click.argument("first", type=click.IntRange(min=1), required=False)
@click.argument("second", type=click.IntRange(min=1), required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def diff(ctx: Context, ref: str, first: int | None, second: int | None, as_json: bool) -> None:
    """What changed in SHOW/EP, field by field: between versions FIRST and SECOND
    (SECOND defaults to the committed version); with no version, between the
    committed version and a pending hand edit (or, with none, the last change)."""
    changes = ctx.store.diff(*split_ref(ref), first, second)
    if as_json:
        dump_json([vars(c) for c in changes])
        return
    if not changes:
        out.print("no changes", markup=False)
        return
    out.print(change_rows(changes, f"v{first}" if first else "before", f"v{second}" if second else "after"),
              markup=False)


@command()
@ref_arg
@pass_ctx
def revert(ctx: Context, ref: str) -> None:
    """Throw away a pending hand edit of SHOW/EP: the committed version goes back
    (a new version, one event); the edited file is kept in .statekit/trash."""
    ep = ctx.store.revert(*split_ref(ref))
    out.print(f"{ep.key}: back to the committed state, now version {ep.version}", markup=False)


def episode_facts(ep: Episode, resume: str | None) -> Table:
    """The episode's state, a fact a line."""
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
    return facts


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
        # a pending hand edit: the row is the committed version, its version marked
        table.add_row(e.show_id, e.episode_id, e.stage, f"{e.version}{'*' if e.pending else ''}", when(e.updated_at),
                      money(e.cost_total), e.title)
    return table


def listed(episodes: list[Episode]) -> list[dict[str, Any]]:
    """``list``/``next --json``: each episode's data; one whose file holds a pending hand edit
    also carries ``pending`` ({path, fields, error}: the data is the committed version)."""
    return [{**e.model_dump(mode="json"), "pending": e.pending} if e.pending else e.model_dump(mode="json")
            for e in episodes]


def pending_note(episodes: list[Episode]) -> None:
    """The line under a table that marked episodes with a pending hand edit."""
    n = sum(1 for e in episodes if e.pending)
    if n:
        out.print(f"* {n} episode(s) have a pending hand edit (shown: the committed version); 'statekit sync' "
                  "adopts a valid edit, 'statekit revert SHOW/EP' throws one away", markup=False)


@command("list")
@click.option("--show", "show_id", default=None, help="Only this show.")
@click.option("--stage", default=None, help="Only episodes at this stage.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many (a page).")
@click.option("--after", default=None, metavar="SHOW/EP", callback=lambda _c, _p, v: v if v is None else split_ref(v) and v,
              help="Start after this episode (the last of the page before).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def list_(ctx: Context, show_id: str | None, stage: str | None, limit: int | None, after: str | None,
          as_json: bool) -> None:
    """Episodes in show order, optionally of one show and/or at one stage; a page
    of them with --limit (the next page: --after the last one shown)."""
    episodes = ctx.store.list(show=show_id, stage=stage, limit=None if limit is None else limit + 1, after=after)
    more = limit is not None and len(episodes) > limit
    if more:
        del episodes[limit:]
    if as_json:
        dump_json(listed(episodes))
    elif episodes:
        out.print(episode_rows(episodes), markup=False)
        pending_note(episodes)
    else:
        err.print("no episodes" + (f" after {after}" if after else ""), markup=False)
    if more and not as_json:  # the command that shows the next page
        words = ["statekit", "list", *(["--show", show_id] if show_id else []), *(["--stage", stage] if stage else []),
                 "--limit", str(limit), "--after", episodes[-1].key]
        err.print(f"{limit} shown, more follow: {shlex.join(words)}", markup=False)


@command("next")
@click.argument("stage")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="How many.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def next_(ctx: Context, stage: str, limit: int, as_json: bool) -> None:
    """Episodes ready for STAGE (to enter it, or to be run in it), longest-waiting first."""
    episodes = ctx.store.next(stage, limit=limit)
    if as_json:
        dump_json(listed(episodes))
    elif episodes:
        out.print(episode_rows(episodes), markup=False)
        pending_note(episodes)
    else:
        paused = [p.where for p in ctx.store.paused() if p.stage == stage]
        err.print(f"nothing is ready for {stage}" + (f" (paused for {', '.join(paused)}: 'statekit resume {stage}')"
                                                     if paused else ""), markup=False)


@command()
@ref_arg
@pass_ctx
def delete(ctx: Context, ref: str) -> None:
    """Remove SHOW/EP (its folder is moved to .statekit/trash, not erased)."""
    where = ctx.store.delete(*split_ref(ref))
    out.print(f"deleted {ref}; its files are kept in {where}", markup=False)


COMMANDS = [create, advance, approve, show, diff, revert, list_, next_, delete]
