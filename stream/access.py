"""Who may use the WebSocket server: checks run on every HTTP request (page or WebSocket handshake),
in this order: a page ``Origin`` that is not allowed -> 403; a missing or wrong token -> 401; not a
WebSocket upgrade -> the ``http_handler`` (the dashboard) or 404.

A page's origin is allowed when it names the same host and port as the request's ``Host`` header (a page
the server itself served) or when it is listed with ``--ws-allow-origin``. On a loopback server the
``Host`` must also be a loopback name, so a DNS-rebinding page (evil.example resolving to 127.0.0.1)
is not "same host". Requests without ``Origin`` (programs, not browsers) pass the origin check.

Before those checks, a request with two ``Host``, ``Origin`` or ``Authorization`` headers is a 400 (which
of the two counts would be a guess), a method other than GET or HEAD is a 405 (with a body too: see
:func:`without_body`), and the answer to a HEAD request keeps its headers (``Content-Length`` included) but
loses its body.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_origin(origin: str) -> str:
    """``HTTPS://Example.org:443/`` -> ``https://example.org`` (scheme and host lower case, default port
    and trailing slash dropped), the form browsers send in ``Origin``."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.hostname:
        return origin.strip().lower()
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        return origin.strip().lower()
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}" + ("" if port in (None, default) else f":{port}")


def _host_port(netloc: str, default_port: int | None) -> tuple[str, int | None]:
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    return (parts.hostname or "").lower(), port if port is not None else default_port


def origin_allowed(origin: str | None, host_header: str | None, allowed: tuple[str, ...],
                   loopback_server: bool) -> bool:
    if origin is None:
        return True
    if normalise_origin(origin) in {normalise_origin(o) for o in allowed}:
        return True
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host_header:
        return False  # "null" (sandboxed pages, files) and other schemes: only when listed
    default = 443 if scheme == "https" else 80
    origin_host = _host_port(parts.netloc, default)
    request_host = _host_port(host_header, default)
    if origin_host != request_host:
        return False
    return is_loopback(request_host[0]) or not loopback_server


def offered_token(request) -> str | None:
    """The token a request carries: ``?token=`` (browsers cannot set headers) or ``Authorization: Bearer``."""
    query = parse_qs(urlsplit(request.path).query)
    if "token" in query:
        return query["token"][0]
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def token_ok(offered: str | None, token: str | None) -> bool:
    """Constant-time comparison; no token configured lets everyone in."""
    if not token:
        return True
    return offered is not None and hmac.compare_digest(offered.encode("utf-8", "surrogateescape"),
                                                       token.encode("utf-8", "surrogateescape"))


def is_upgrade(request) -> bool:
    return any("websocket" in value.lower() for value in request.headers.get_all("Upgrade"))


SINGLE_HEADERS = ("Host", "Origin", "Authorization")
"""Headers the access checks read: a request must not carry any of them twice."""


MAX_HEAD_BYTES = 16_384
"""Most bytes of a request held back while its head is incomplete, to see whether it is one that
:func:`without_body` rewrites; a longer head goes to websockets as it is (which answers 414 or 431)."""

_BODY_HEADERS = (b"content-length", b"transfer-encoding")


def without_body(raw: bytes) -> bytes | None:
    """A request's first bytes -> its head without ``Content-Length``/``Transfer-Encoding`` when its method is
    not GET or HEAD and it announces a body, None otherwise (also while the head is incomplete).

    websockets reads no request body: a POST with one (``curl -d``, a form) made it close the connection
    without a word ("Empty reply from server"). Without those headers the request is answered 405 like a
    bodyless one; its body is never read (the caller drops every later byte)."""
    head, blank, _ = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not blank or lines[0].split(b" ", 1)[0] in (b"GET", b"HEAD"):
        return None
    kept = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in _BODY_HEADERS]
    if len(kept) == len(lines) - 1:
        return None
    return b"\r\n".join([lines[0], *kept]) + b"\r\n\r\n"


def check_request(connection, request, config, http_handler=None):
    """The ``process_request`` hook: a ``Response`` refusing or serving the request, or None to go on
    with the WebSocket handshake."""
    response = _answer(connection, request, config, http_handler)
    if response is not None and request.method == "HEAD":
        response = dataclasses.replace(response, body=b"")
    return response


def _answer(connection, request, config, http_handler):
    repeated = [name for name in SINGLE_HEADERS if len(request.headers.get_all(name)) > 1]
    if repeated:
        log.info("refused a request with more than one %s header", repeated[0])
        return connection.respond(HTTPStatus.BAD_REQUEST, f"Bad request: more than one {repeated[0]} header.\n")
    if request.method not in ("GET", "HEAD"):
        response = connection.respond(HTTPStatus.METHOD_NOT_ALLOWED, "Only GET and HEAD are served here.\n")
        response.headers["Allow"] = "GET, HEAD"
        return response
    if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), config.allow_origins,
                          is_loopback(config.host)):
        log.info("refused a request from origin %r", request.headers.get("Origin"))
        return connection.respond(HTTPStatus.FORBIDDEN, "This page's origin may not use this ser-live server "
                                                        "(see --ws-allow-origin).\n")
    if not token_ok(offered_token(request), config.token):
        return connection.respond(HTTPStatus.UNAUTHORIZED, "Missing or wrong token (?token= or "
                                                           "Authorization: Bearer).\n")
    if not is_upgrade(request) or request.method == "HEAD":
        if http_handler is not None:
            return http_handler(connection, request)
        return connection.respond(HTTPStatus.NOT_FOUND, "Not found: this is a ser-live WebSocket server.\n")
    return None


def tls_context(config):
    """An ``ssl.SSLContext`` serving ``config.tls_cert``/``tls_key``, or None without them; raises
    ``OSError`` or ``ssl.SSLError`` for unreadable or mismatched files."""
    if not config.tls_cert:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context
