"""``statekit serve``: the store's HTTP face (Starlette, run by uvicorn) on 127.0.0.1.

Routes: ``/metrics`` (Prometheus, ``signals.metrics``) and ``/healthz``;
more (the dashboard, ``statekit.dashboard``) are passed to ``make_app(store, routes)``.
While it runs, a thread catches up the store's signals and sends due alerts every
``SIGNALS_SECONDS`` (what a crashed writer left behind goes out here too).
The dashboard reads through a second store opened read-only; ``token`` guards
every route but ``/healthz`` (``dashboard.access``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from . import __version__
from .dashboard.access import Guard
from .dashboard.pages import routes as dashboard_routes
from .dashboard.view import Dashboard
from .errors import ValidationError
from .signals.alerts import needs
from .signals.metrics import exposition
from .store import Store

log = logging.getLogger("statekit")

SIGNALS_SECONDS = 10.0


def signals_loop(store: Store, stop: threading.Event, every: float = SIGNALS_SECONDS) -> None:
    """Until ``stop``: catch up the alerts and the event stream, send due alerts.

    The index is mended once first (``sync``): a writer killed between a commit and its index write
    leaves the index behind, and the catch-up compares the cursors with the index's versions."""
    config = store.config
    if config.alerts is not None or config.events is not None:
        try:
            store.sync()
        except Exception as exc:
            log.warning("statekit: index not synced before the signals' catch-up (%s: %s)", type(exc).__name__, exc)
    while not stop.is_set():
        config = store.config
        if config.alerts is not None or config.events is not None:
            try:
                store.signals.send_now(every=False)
            except Exception as exc:
                log.warning("statekit: signals not sent (%s: %s); retrying in %.0f s", type(exc).__name__, exc,
                            every)
        stop.wait(every)


def make_app(store: Store, routes: Sequence[Any] = (), token: str | None = None) -> Any:
    """The Starlette application: ``/metrics``, ``/healthz`` and ``routes``; with
    ``token``, only requests carrying it (``dashboard.access.Guard``)."""
    needs("prometheus_client", "serve")
    applications = needs("starlette.applications", "serve")
    responses = needs("starlette.responses", "serve")
    routing = needs("starlette.routing", "serve")
    from prometheus_client import CONTENT_TYPE_LATEST

    def metrics(request: Any) -> Any:  # a plain function: Starlette runs it in its thread pool
        return responses.Response(exposition(store.writer, __version__), media_type=CONTENT_TYPE_LATEST)

    def health(request: Any) -> Any:
        return responses.PlainTextResponse("ok\n")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=signals_loop, args=(store, stop), name="statekit-serve-signals",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(SIGNALS_SECONDS)

    middleware = needs("starlette.middleware", "serve")
    return applications.Starlette(routes=[routing.Route("/metrics", metrics), routing.Route("/healthz", health),
                                          *routes], lifespan=lifespan,
                                  middleware=[middleware.Middleware(Guard, token=token)])


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port; ``getsockname`` tells which)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValidationError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                              hint="choose another --port (0: any free one) or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(store: Store, host: str = "127.0.0.1", port: int = 9464, token: str | None = None,
          sock: socket.socket | None = None) -> None:
    """Serve ``/metrics``, ``/healthz`` and the dashboard (on a read-only store) until interrupted."""
    uvicorn = needs("uvicorn", "serve")
    needs("jinja2", "serve")
    board = Dashboard(Store.open(store.root, read_only=True))
    try:
        app = make_app(store, dashboard_routes(board), token=token)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        server.run(sockets=[sock or listen(host, port)])
    finally:
        board.close()
