"""The ``statekit`` command line: parse, call one API function, render.

Tables for people, ``--json`` for programs. The group ``main`` (the console
script) is here; ``app`` holds what the commands share, and each command
group lives in its own module:

- ``episodes``: create, advance, approve, show, list, next, delete
- ``assets``: asset add|list|upload|verify
- ``runs``: recover, retry, errors
- ``worker``: worker, and checkpoint, cost (inside a worker's command)
- ``backups``: restore, repair, gc
- ``index``: rebuild-index, sync, verify, sql, db upgrade
- ``maintenance``: init, migrate, import
- ``report``: status, report
- ``cache``: cache stats|clear|gc
- ``demo``: demo
- ``signals``: alerts [send], events publish, metrics, serve
- ``bulk``: requeue, pipeline check|migrate|history (and ``retry --stage``'s output)
- ``controls``: pause, resume, prioritize, controls (and the controls block of ``status``)
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..signals.logs import chosen, json_formatter
from . import assets, backups, bulk, cache, controls, demo, episodes, index, maintenance, report, runs, signals, worker
from .app import Context, Group, parse_age, quiet_logs
from .report import print_status

__all__ = ["main", "parse_age", "print_status"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="STATEKIT_ROOT", metavar="DIR", type=click.Path(),
              help="The store (default: $STATEKIT_ROOT, else the nearest parent holding statekit.yaml).")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines on stderr: readable text, or one JSON object each (default: $STATEKIT_LOG_FORMAT, "
                   "else text).")
@click.version_option(__version__, prog_name="statekit")
@click.pass_context
def main(ctx: click.Context, root: str | None, debug: bool, log_format: str | None) -> None:
    """Durable, human-editable state for multi-stage media pipelines."""
    ctx.meta["statekit.debug"] = debug
    ctx.obj = Context(root)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as escapes, never crashes
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    quiet_logs(formatter=json_formatter() if chosen(log_format) == "json" else None)


for command in (*maintenance.COMMANDS, *episodes.COMMANDS, *index.COMMANDS, *report.COMMANDS, *runs.COMMANDS,
                *backups.COMMANDS, *assets.COMMANDS, *demo.COMMANDS, *cache.COMMANDS, *signals.COMMANDS,
                *worker.COMMANDS, *bulk.COMMANDS, *controls.COMMANDS):
    main.add_command(command)
del command
