"""Who may read the served pages, and the headers every response carries.

``Guard`` is plain ASGI middleware: with a token, every path but ``/healthz`` asks
for it, as ``Authorization: Bearer TOKEN`` (Prometheus, scripts) or the cookie a
browser gets from opening any page once with ``?token=TOKEN`` (then redirected to
the same page without it, so the token does not stay in the address bar or the
history). Compared in constant time. Every response gets a strict
Content-Security-Policy: the pages load their script and styles from this server
only, fetch nothing elsewhere, and run no inline code.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlencode

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
COOKIE = "statekit_token"
OPEN_PATHS = frozenset({"/healthz"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def same(given: str | None, token: str) -> bool:
    """``given`` is ``token`` (constant time, so the comparison leaks no prefix)."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """Adds ``HEADERS`` to every HTTP response; with ``token``, refuses requests without it."""

    def __init__(self, app: Any, token: str | None = None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in HEADERS if h[0] not in names)]}
            await send(message)

        token = self.token
        if token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send_with_headers)
            return
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, RedirectResponse

        request = Request(scope)
        offered = request.query_params.get("token")
        if offered is not None and same(offered, token):
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response: Any = RedirectResponse(scope["path"] + ("?" + rest if rest else ""), status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send_with_headers)
            return
        bearer = request.headers.get("authorization", "")
        given = bearer[7:].strip() if bearer[:7].lower() == "bearer " else request.cookies.get(COOKIE)
        if same(given, token):
            await self.app(scope, receive, send_with_headers)
            return
        response = PlainTextResponse("statekit serve: this server needs its token: open the page once with "
                                     "?token=TOKEN, or send 'Authorization: Bearer TOKEN'\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="statekit"'})
        await response(scope, receive, send_with_headers)
