"""statekit alerts [send] | events publish | metrics | serve: operations signals (issue 17)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import click
from rich.table import Table

from .. import __version__
from ..errors import ValidationError
from ..signals.metrics import exposition
from ..signals.state import State
from .app import Context, command, dump_json, fail, group, out, pass_ctx


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


@group(invoke_without_command=True)
@click.option("--pending", is_flag=True, help="Only the alerts not yet delivered.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@click.pass_context
def alerts(click_ctx: click.Context, ctx: Context, pending: bool, limit: int, as_json: bool) -> None:
    """Failure alerts: pending and sent ones, newest first ('alerts send' sends the pending ones now).

    Configured in statekit.yaml ('alerts: {threshold: 5, notify: [APPRISE_URL, ...]}'); reads no
    network."""
    if click_ctx.invoked_subcommand is not None:
        return
    state = State(ctx.store.root)
    try:
        found = state.alerts(pending_only=pending, limit=limit)
    finally:
        state.close()
    if as_json:
        dump_json({"alerts": [a.as_dict() for a in found]})
        return
    if not found:
        out.print("no alerts" + (" pending" if pending else ""), markup=False)
        return
    table = Table(box=None, header_style="bold")
    for name in ("state", "created (UTC)", "key", "title", "tries", "last error"):
        table.add_column(name)
    for a in found:
        state_text = f"sent {_when(a.sent_at)}" if a.sent_at else f"pending, next {_when(a.next_at)}"
        table.add_row(state_text, _when(a.created_at), a.key, a.title, str(a.attempts), a.last_error or "")
    out.print(table)


@alerts.command("send")
@pass_ctx
def alerts_send(ctx: Context) -> None:
    """Catch up on committed failures and send every pending alert now (exit 1 if one was not delivered).

    Mends the index first, as 'statekit sync' does: a process killed between a commit and its index
    write leaves the index one version behind, and the catch-up reads the versions from the index."""
    store = ctx.store
    if store.config.alerts is None:
        raise ValidationError("no alerts configured: add 'alerts: {notify: [APPRISE_URL]}' to statekit.yaml")
    store.sync()
    handled, (sent, failed) = store.signals.send_now(every=True)
    out.print(f"{handled.get('alerts', 0)} event(s) caught up, {sent} alert(s) sent, {failed} not delivered",
              markup=False)
    if failed:
        sys.exit(1)


@group()
def events() -> None:
    """The event stream (NATS JetStream; 'events:' in statekit.yaml)."""


@events.command("publish")
@pass_ctx
def events_publish(ctx: Context) -> None:
    """Publish every committed event the stream has not had yet (after a crash or an outage).

    Mends the index first, as 'statekit sync' does: a process killed between a commit and its index
    write leaves the index one version behind, and the catch-up reads the versions from the index."""
    store = ctx.store
    config = store.config.events
    if config is None:
        raise ValidationError("no event stream configured: add 'events: {publish: nats://HOST:4222}' to "
                              "statekit.yaml")
    store.sync()
    try:
        count = store.signals.catch_up_stream()
    except OSError as exc:
        fail(f"could not publish to {config.publish} ({type(exc).__name__}: {exc}); nothing is lost, run it again")
    except Exception as exc:  # nats-py's own errors (timeouts, no responders)
        if exc.__class__.__module__.startswith(("nats", "asyncio")):
            fail(f"could not publish to {config.publish} ({type(exc).__name__}: {exc}); nothing is lost, "
                 "run it again")
        raise
    out.print(f"{count} event(s) published to {config.stream}", markup=False)


@command()
@pass_ctx
def metrics(ctx: Context) -> None:
    """Print the store's metrics in the Prometheus text format (read from the index)."""
    sys.stdout.write(exposition(ctx.store.writer, __version__).decode())


@command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (anything but loopback needs --token).")
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="The port (0: any free one; the address is printed).")
@click.option("--token", envvar="STATEKIT_SERVE_TOKEN", default=None,
              help="Ask every request for this token (env STATEKIT_SERVE_TOKEN): a browser opens the page once "
                   "with ?token=TOKEN, scripts send 'Authorization: Bearer TOKEN'.")
@pass_ctx
def serve(ctx: Context, host: str, port: int, token: str | None) -> None:
    """Serve the live dashboard (read-only), /metrics and /healthz over HTTP; also sends pending alerts and
    events while it runs."""
    from ..dashboard.access import is_loopback
    from ..serve import listen
    from ..serve import serve as run  # the skin: starlette and uvicorn load only here

    if token is not None and (len(token) < 8 or not token.isprintable() or token != token.strip()):
        raise ValidationError("--token must be at least 8 printable characters without surrounding spaces",
                              field="token", hint="e.g. --token \"$(openssl rand -hex 16)\"")
    if token is None and not is_loopback(host):
        raise ValidationError(f"--host {host} would let anyone who can reach it read the store: pass --token "
                              "(or STATEKIT_SERVE_TOKEN) too", field="host",
                              hint="--token \"$(openssl rand -hex 16)\"; or keep the default --host 127.0.0.1")
    store = ctx.store
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{bound}"
    out.print(f"serving the dashboard at {base}/ and {base}/metrics (Ctrl-C to stop)"
              + ("; open it once with ?token=TOKEN" if token else ""), markup=False)
    sys.stdout.flush()
    run(store, host, bound, token=token, sock=sock)


COMMANDS = [alerts, events, metrics, serve]
