"""The browser dashboard: the page and its assets (``stream/web/``), served by the WebSocket server itself.

:func:`http_handler` is the ``WsServer`` hook for plain HTTP requests (the server checks Origin and token
first). Only the files in :data:`ASSETS` are served, read from the package on each request; every response
carries ``Cache-Control: no-store`` and a Content-Security-Policy that allows the page's own files and a
WebSocket to the host it was loaded from, nothing else (no inline script, no other origin).
"""

from __future__ import annotations

import email.utils
import html
import http
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
"""The page's files, shipped as package data."""

ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
    "/audio.js": ("audio.js", "text/javascript; charset=utf-8"),
    "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
"""URL path -> (file in WEB_DIR, Content-Type)."""

_ASSET_LINK = re.compile(r'((?:src|href)=")([a-z]+\.(?:js|css))(")')
"""A link from index.html to one of its files (which then needs the page's ?token= too)."""

_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
"""A Host header that is safe to copy into the CSP (no spaces, quotes or semicolons)."""


def content_security_policy(host: str | None) -> str:
    """Own files only; scripts and styles from files (none inline); sockets to ``host`` (the page's own)."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{sockets}; media-src 'self' blob:; worker-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _response(status: http.HTTPStatus, body: bytes, content_type: str, host: str | None) -> Response:
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    headers = Headers()
    headers["Date"] = email.utils.formatdate(usegmt=True)
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["Content-Security-Policy"] = content_security_policy(host)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body)


def http_handler(connection, request: Request) -> Response:
    """The page or one of its assets for ``GET path``; 404 for anything else (``connection`` unused: every
    answer is built here so that each carries the same headers)."""
    host = request.headers.get("Host")
    path = urlsplit(request.path).path
    asset = ASSETS.get(path)
    if asset is None:
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", host)
    name, content_type = asset
    try:
        body = (WEB_DIR / name).read_bytes()
    except OSError as exc:
        log.error("dashboard file %s is missing from the installation: %s", name, exc.strerror)
        return _response(http.HTTPStatus.INTERNAL_SERVER_ERROR, b"dashboard files missing\n",
                         "text/plain; charset=utf-8", host)
    token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
    if name == "index.html" and token:  # the server checked it: the page's files need it as well
        query = html.escape(f"?token={quote(token, safe='')}")
        body = _ASSET_LINK.sub(lambda m: m.group(1) + m.group(2) + query + m.group(3), body.decode()).encode()
    return _response(http.HTTPStatus.OK, body, content_type, host)


def dashboard_url(ws_server, with_token: bool = True) -> str | None:
    """The page's address for a started ``WsServer``: with the token (so that it is one click away) unless
    ``with_token`` is False."""
    if ws_server is None or ws_server.port is None:
        return None
    config = ws_server.config
    host = config.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if getattr(config, "tls_cert", None) else "http"
    token = f"?token={quote(config.token, safe='')}" if config.token and with_token else ""
    return f"{scheme}://{host}:{ws_server.port}/{token}"


def announcement(ws_server, terminal: bool) -> str | None:
    """The line printed when the server listens. The link carries the token only when it is shown on a
    terminal: stderr sent to a file (``nohup.out``, a service's journal, a CI log) would keep the token
    where others may read it, which ``--ws-token-file`` and the environment variable are there to avoid."""
    url = dashboard_url(ws_server, with_token=terminal)
    if url is None:
        return None
    hidden = not terminal and ws_server.config.token
    return f"ser-live: dashboard at {url}" + (" (add ?token= and the token: not written to a file)" if hidden else "")
