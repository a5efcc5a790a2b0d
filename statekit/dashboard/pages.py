"""The dashboard's routes: HTML pages (Jinja2 templates, package data), their JSON
twins under ``/api/``, the version the pages poll, and the static script and styles.

Live updates by polling, not server-sent events: each open page asks ``/api/version``
twice a second (a tiny answer, computed at most twice a second for all pages by
``Dashboard.version``) and, when it moved, fetches its own page's content again
(``X-Statekit-Partial``) and swaps it in. No connection stays open, so stopping the
server never waits for clients, any proxy passes it, and the server renders every page
once (no second renderer in the script). An update shows within about a second.

Every route only reads (``view.Dashboard`` holds a store opened read-only).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ..errors import (
    EpisodeNotFoundError,
    IndexUnavailableError,
    InvalidIdError,
    ShowNotFoundError,
    StatekitError,
    UnknownStageError,
    ValidationError,
)
from ..report.charts import cost_svg, stage_colour, terminal_colours, throughput_svg
from ..report.display import age, amount, when
from ..report.model import REASON_TEXT, PipelineInfo, pct
from .view import LIST_LIMIT, Dashboard

PARTIAL = "x-statekit-partial"
POLL_MS = 500


def _unreadable(exc: Exception) -> IndexUnavailableError:
    """A database error while reading (the index locked or being swapped): one line, 503."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return IndexUnavailableError(f"the index could not be read just now ({first})",
                                 hint="the page tries again by itself; if it persists, run 'statekit verify'")


def _status(exc: StatekitError) -> int:
    if isinstance(exc, EpisodeNotFoundError | ShowNotFoundError):
        return 404
    if isinstance(exc, InvalidIdError | UnknownStageError | ValidationError):
        return 400
    if isinstance(exc, IndexUnavailableError):
        return 503
    return 500


def _short(value: Any, limit: int = 160) -> str:
    """A field's value in one line for the history table."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("statekit.dashboard", "templates"), autoescape=select_autoescape(),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(amount=amount, when=when, short=_short,
                       pretty=lambda v: json.dumps(v, default=str, indent=2, sort_keys=True))
    env.globals.update(age=age, pct=pct, reasons=REASON_TEXT, poll_ms=POLL_MS)
    return env


def pipeline_info(board: Dashboard) -> PipelineInfo:
    p = board.store.pipeline
    return PipelineInfo(name=p.name, initial=p.initial, stages=list(p.stages), terminal=list(p.terminal),
                        failure_stage=p.failure_stage, give_up_stage=p.give_up_stage)


def routes(board: Dashboard) -> list[Any]:
    """The dashboard's routes on ``board`` (for ``serve.make_app(store, routes)``)."""
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    env = environment()
    info = pipeline_info(board)

    def colour(stage: str) -> str:
        return stage_colour(info, stage)

    env.globals.update(colour=colour, p=info, root=board.store.root)

    def html(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        partial = request.headers.get(PARTIAL) == "1"
        try:
            version = board.version()
        except SQLAlchemyError:  # an error page for an unreadable index: the next poll tries again
            version = ""
        body = env.get_template(template).render(partial=partial, version=version, path=request.url.path,
                                                 now=datetime.now(timezone.utc), **context)
        return HTMLResponse(body, status_code=status,
                            headers={"Cache-Control": "no-store", "X-Statekit-Version": version})

    def page(template: str, read: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:  # a plain function: Starlette runs it in its thread pool
            try:
                try:
                    context = read(request)
                except SQLAlchemyError as exc:
                    raise _unreadable(exc) from exc
            except StatekitError as exc:
                return html(request, "error.html", _status(exc), error=exc.one_line(), title="Not shown")
            return html(request, template, **context)
        return endpoint

    def api(read: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                try:
                    data = read(request)
                except SQLAlchemyError as exc:
                    raise _unreadable(exc) from exc
            except StatekitError as exc:
                return JSONResponse({"error": str(exc.args[0]) if exc.args else type(exc).__name__,
                                     "hint": exc.hint or None}, status_code=_status(exc),
                                    headers={"Cache-Control": "no-store"})
            return JSONResponse(data, headers={"Cache-Control": "no-store"})
        return endpoint

    def filters(request: Request) -> dict[str, Any]:
        q = request.query_params
        return {"show": q.get("show") or None, "stage": q.get("stage") or None, "query": q.get("q", "")}

    def overview(request: Request) -> dict[str, Any]:
        report = board.report()
        return {"title": "Overview", "r": report, "s": report.totals, "colours": terminal_colours(info),
                "cost_svg": cost_svg(report) if report.totals.cost_by_stage else "",
                "throughput": throughput_svg(report, legend=False)}

    def listing(request: Request) -> dict[str, Any]:
        found = board.episodes(**filters(request))
        counts = board.store.counts(found.show)
        return {"title": "Episodes", "found": found, "counts": counts, "shows": board.store.shows(),
                "limit": LIST_LIMIT}

    def episode(request: Request) -> dict[str, Any]:
        shown = board.episode(request.path_params["show"], request.path_params["ep"])
        e = shown.episode
        return {"title": f"{e.show_id}/{e.episode_id}", "e": e, "shown": shown}

    def version_api(request: Request) -> dict[str, Any]:
        return {"version": board.version()}

    def report_api(request: Request) -> Any:
        return board.report().model_dump(mode="json")

    def episodes_api(request: Request) -> Any:
        found = board.episodes(**filters(request))
        return {"show": found.show, "stage": found.stage, "q": found.query, "total": found.total,
                "truncated": found.truncated,
                "episodes": [{**vars(r), "updated_at": r.updated_at.isoformat()} for r in found.rows]}

    def episode_api(request: Request) -> Any:
        shown = board.episode(request.path_params["show"], request.path_params["ep"])
        return {"episode": shown.episode.model_dump(mode="json"), "pending": shown.episode.pending,
                "history": [{**s.event.model_dump(mode="json"),
                             "changes": [{"field": c.field, "before": c.before, "after": c.after} for c in s.changes]}
                            for s in shown.steps]}

    static = StaticFiles(packages=[("statekit.dashboard", "static")])
    return [
        Route("/", page("overview.html", overview)),
        Route("/episodes", page("episodes.html", listing)),
        Route("/episodes/{show}/{ep}", page("episode.html", episode)),
        Route("/api/version", api(version_api)),
        Route("/api/report", api(report_api)),
        Route("/api/episodes", api(episodes_api)),
        Route("/api/episodes/{show}/{ep}", api(episode_api)),
        Mount("/static", static, name="static"),
    ]
