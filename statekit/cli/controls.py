"""Operator controls: pause, resume, prioritize, and the controls block of ``status``."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .app import Context, command, dump_json, err, out, pass_ctx, ref_arg, split_ref


@command()
@click.argument("stage")
@click.option("--show", "show_id", default=None, help="Pause the stage only for this show.")
@click.option("--by", default=None, help="Who pauses it (recorded in the store's event).")
@click.option("--note", default=None, help="Why (recorded in the store's event).")
@pass_ctx
def pause(ctx: Context, stage: str, show_id: str | None, by: str | None, note: str | None) -> None:
    """Pause STAGE: claims, next and workers hand none of it out; runs already
    leased finish (the stage drains). Durable, for every machine, until 'statekit resume'."""
    done = ctx.store.pause(stage, show=show_id, by=by, note=note)
    state = "paused" if done.new else "already paused"
    out.print(f"{stage} {state} for {done.pause.where}; {done.live} runs of it still live will finish", markup=False)


@command()
@click.argument("stage")
@click.option("--show", "show_id", default=None, help="Resume only this show's pause of the stage.")
@click.option("--by", default=None, help="Who resumes it (recorded in the store's event).")
@click.option("--note", default=None, help="Why (recorded in the store's event).")
@pass_ctx
def resume(ctx: Context, stage: str, show_id: str | None, by: str | None, note: str | None) -> None:
    """Resume STAGE (every pause of it, or only --show's): claims hand it out again."""
    lifted = ctx.store.resume(stage, show=show_id, by=by, note=note)
    if not lifted:
        err.print(f"{stage} was not paused" + (f" for show {show_id}" if show_id else ""), markup=False)
        return
    out.print(f"{stage} resumed for " + ", ".join(p.where for p in lifted), markup=False)


@command(context_settings={"ignore_unknown_options": True})
@ref_arg
@click.argument("priority", type=int)
@click.option("--note", default=None, help="Why (recorded in the event).")
@pass_ctx
def prioritize(ctx: Context, ref: str, priority: int, note: str | None) -> None:
    """Set SHOW/EP's PRIORITY (a whole number; higher is claimed first, then
    the longest-waiting; 0 is the default; negative numbers go last)."""
    ep = ctx.store.prioritize(*split_ref(ref), priority, note=note)
    out.print(f"{ep.key}: priority {ep.priority} (version {ep.version})", markup=False)


@command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def controls(ctx: Context, as_json: bool) -> None:
    """Paused stages and each limited stage's limits in use (live runs, starts in the rate's window)."""
    overview = ctx.store.controls_overview()
    if as_json:
        dump_json(overview)
    elif not print_controls(out, overview):
        err.print("no stage is paused and no limits are set", markup=False)


def limit_text(use: dict[str, Any]) -> str:
    parts = []
    if use["concurrency"] is not None:
        parts.append(f"{use['live']} of {use['concurrency']} live")
    if use["rate"] is not None:
        parts.append(f"{use['started']} of {use['rate']} started")
    return ", ".join(parts)


def print_controls(console: Console, overview: dict[str, Any]) -> bool:
    """The controls block of ``statekit status``: paused stages, limits in use. False if there is nothing to show."""
    paused, limits = overview["paused"], overview["limits"]
    if not paused and not limits:
        return False
    table = Table(box=None, header_style="bold", title_justify="left")
    table.add_column("controls", no_wrap=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("state")
    for p in paused:
        if "error" in p:
            table.add_row("paused", "?", p["error"])
            continue
        who = f" by {p['by']}" if p.get("by") else ""
        table.add_row("paused", p["stage"], ("every show" if p["show"] is None else f"show {p['show']}")
                      + f" since {str(p['at'])[:19].replace('T', ' ')}{who}" + (f": {p['note']}" if p.get("note") else ""))
    for use in limits:
        table.add_row("limit", use["stage"], limit_text(use))
    console.print(table, markup=False)
    console.print("")
    return True


COMMANDS = [pause, resume, prioritize, controls]
