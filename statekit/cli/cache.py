"""statekit cache stats|clear|gc: the cache of expensive results (issue 6)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.table import Table

from .app import Context, dump_json, err, group, human_size, out, pass_ctx, when


@contextmanager
def store_cache(ctx: Context) -> Iterator[Any]:
    from ..cache import Cache  # imported on use: the other commands never open the cache

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


@group()
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


COMMANDS = [cache]
