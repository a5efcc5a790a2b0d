"""What every command shares: the consoles, the error-to-exit-code last line
of defence, the context holding the store, argument helpers, value
formatting, JSON dumping and progress bars.

A user error prints one line (what is wrong, what to do) to stderr and exits
2; exit 1 means a check found problems; 0 means all is well. No traceback
reaches a user unless ``--debug`` is given.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
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

from ..errors import StatekitError, StoreNotFoundError, ValidationError
from ..models import not_utf8
from ..store import CONFIG_FILE, Store

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


# A command of a module, added to the statekit group in __init__; a group's
# own commands (``@asset.command``) are Commands already.
command = partial(click.command, cls=Command)
group = partial(click.group, cls=Group)


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
    """The store a command works on, opened on first use."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(find_root(self.root))
        return self._store


pass_ctx = click.make_pass_decorator(Context)


class StderrLines(logging.Handler):
    """Each record as one line on the current stderr."""

    statekit_cli = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.formatter is not None:  # --log-format json: the formatter's one line
                sys.stderr.write(self.format(record).replace("\n", " ") + "\n")
                return
            text = " ".join(record.getMessage().split())
            line = text if text.startswith("statekit:") else f"statekit: {record.levelname.lower()}: {text}"
            sys.stderr.write(line + "\n")
        except Exception:
            self.handleError(record)


def quiet_logs(level: int = logging.WARNING, formatter: logging.Formatter | None = None) -> None:
    """statekit's log records on stderr, one line each (once per process);
    ``formatter``: how to write them (``--log-format json``), else readable text."""
    logger = logging.getLogger("statekit")
    handler = next((h for h in logger.handlers if getattr(h, "statekit_cli", False)), None)
    if handler is None:
        handler = StderrLines()
        logger.addHandler(handler)
    if formatter is not None:
        handler.setFormatter(formatter)
    logger.setLevel(level)


# --- arguments ----------------------------------------------------------------------------


def split_ref(value: str) -> tuple[str, str]:
    show, sep, ep = value.partition("/")
    if not sep or not show or not ep or "/" in ep:
        raise click.BadParameter(f"expected SHOW/EP such as 'oliver/ep001', got {value!r}")
    return show, ep


def ref_arg(func: Any) -> Any:
    return click.argument("ref", metavar="SHOW/EP")(func)


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


# --- output -------------------------------------------------------------------------------


def dump_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def money(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"


def human_size(n: float) -> str:
    """Bytes for people: 512 B, 1.5 kB, 12.3 MB (powers of 1000, like ls -h --si)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


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
