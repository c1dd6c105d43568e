"""Honest HTTP from the WebSocket server, through raw sockets on 127.0.0.1 port 0: HEAD answers with the
headers a GET would get and no body; a request with two ``Origin``, ``Host`` or ``Authorization`` headers
is a 400 (which one counts is ambiguous), never a 500 with a traceback; other methods are a 405, with a
body too."""

from __future__ import annotations

import asyncio
import logging
import socket

from serlive.stream.dashboard import http_handler
from serlive.stream.engine import Engine
from tests.test_stream_ws import predictor, ws_config  # noqa: F401 - predictor is a fixture
from tests.test_stream_ws_access import running


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the whole answer (the server closes after a plain HTTP reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def request(method: str, path: str, *headers: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def serve(engine: Engine, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    async def main():
        async with running(engine):
            engine.ws.http_handler = http_handler
            port = engine.ws.port
            return [split(await asyncio.to_thread(exchange, port, r)) for r in requests]

    return asyncio.run(main())


UPGRADE = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version: 13")


def test_head_gets_the_get_headers_and_no_body(predictor):
    engine = Engine(predictor, ws_config(token="s3cret"), [])
    host = "Host: 127.0.0.1"
    (get_status, get_headers, page), (head_status, head_headers, nothing), (h401, _, b401), (h404, _, b404), \
        (upgrade_status, _, upgrade_body) = serve(
            engine, request("GET", "/?token=s3cret", host), request("HEAD", "/?token=s3cret", host),
            request("HEAD", "/", host), request("HEAD", "/nowhere?token=s3cret", host),
            request("HEAD", "/?token=s3cret", host, *UPGRADE))
    assert get_status == head_status == 200 and b"<html" in page.lower()
    assert head_headers["content-length"] == get_headers["content-length"] == str(len(page))
    assert head_headers["content-type"] == get_headers["content-type"]
    assert nothing == b"" and (h401, b401) == (401, b"") and (h404, b404) == (404, b"")
    assert (upgrade_status, upgrade_body) == (200, b"")  # a HEAD is never a WebSocket handshake


def test_duplicate_access_headers_are_a_400_without_a_traceback(predictor, caplog):
    engine = Engine(predictor, ws_config(token="s3cret"), [])
    twice = [("Host: 127.0.0.1", "Host: evil.example"),
             ("Host: 127.0.0.1", "Origin: http://127.0.0.1", "Origin: http://evil.example"),
             ("Host: 127.0.0.1", "Authorization: Bearer s3cret", "Authorization: Bearer other")]
    with caplog.at_level(logging.DEBUG):
        answers = serve(engine, *[request("GET", "/?token=s3cret", *h, *UPGRADE) for h in twice],
                        *[request("GET", "/?token=s3cret", *h) for h in twice])
    assert [status for status, _, _ in answers] == [400] * 6
    assert all(b"more than one" in body for _, _, body in answers)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_methods_other_than_get_and_head_are_a_405(predictor):
    engine = Engine(predictor, ws_config(), [])
    answers = serve(engine, *[request(method, "/", "Host: 127.0.0.1", "Content-Length: 0")
                              for method in ("POST", "PUT", "DELETE", "OPTIONS")])
    assert [(status, headers["allow"]) for status, headers, _ in answers] == [(405, "GET, HEAD")] * 4


def test_a_request_with_a_body_is_a_405_not_a_silent_close(predictor, caplog):
    """websockets reads no request body: a POST with one (``curl -d``) had its connection closed without an
    answer ("Empty reply from server"); the answer is a 405 like a bodyless one, and the body is never read."""
    engine = Engine(predictor, ws_config(), [])
    host = "Host: 127.0.0.1"
    with caplog.at_level(logging.DEBUG):
        answers = serve(engine, request("POST", "/", host, "Content-Length: 3") + b"a=b",
                        request("PUT", "/", host, "Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n",
                        request("POST", "/?token=x", host, "Content-Type: application/json", "Content-Length: 2048",
                                *UPGRADE) + b"{" * 2048,
                        request("GET", "/", host))
    assert [(status, headers.get("allow")) for status, headers, _ in answers[:3]] == [(405, "GET, HEAD")] * 3
    assert all(body == b"Only GET and HEAD are served here.\n" for _, _, body in answers[:3])
    assert answers[3][0] == 200  # the connections after them are served as before
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
