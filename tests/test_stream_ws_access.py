"""Closed by default: origin (403), token (401), plain HTTP (the http_handler or 404), remote audio only when
allowed, TLS. Real clients (websockets, http.client, ssl) against a real engine on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import ssl
import subprocess

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from serlive.stream.engine import Engine
from tests.test_stream_ws import VALIDATOR, predictor, url, ws_config  # noqa: F401 - predictor is a fixture


@contextlib.asynccontextmanager
async def running(engine: Engine):
    task = asyncio.create_task(engine.run())
    await engine.ready.wait()
    try:
        yield engine
    finally:
        engine.stop()
        assert await asyncio.wait_for(task, 15) == 0


def http_get(port: int, path: str = "/", headers: dict | None = None, context=None) -> tuple[int, str]:
    """A plain HTTP/1.1 GET (no upgrade), as a browser fetching a page would send."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


async def refused_status(address: str, **kw) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(address, **kw):
            pass
    return refused.value.response.status_code


async def first_message(address: str, **kw) -> dict:
    async with connect(address, **kw) as ws:
        return json.loads(await ws.recv())


def test_origins_other_than_the_servers_own_are_refused(predictor):
    engine = Engine(predictor, ws_config(allow_origins=("https://Dash.Example.org:443/",)), [])

    async def main():
        async with running(engine):
            port = engine.ws.port
            assert await refused_status(url(engine), origin="https://evil.example") == 403
            assert await refused_status(url(engine), origin="null") == 403
            same = await first_message(url(engine), origin=f"http://127.0.0.1:{port}")
            listed = await first_message(url(engine), origin="https://dash.example.org")
            no_origin = await first_message(url(engine))
            # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 is "same host"
            # by its Host header, but a loopback server only counts loopback names as itself.
            rebinding = await asyncio.to_thread(http_get, port, "/", {
                "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"})
            page = await asyncio.to_thread(http_get, port, "/", {"Origin": "https://evil.example"})
            return same, listed, no_origin, rebinding, page

    same, listed, no_origin, rebinding, page = asyncio.run(main())
    for hello in (same, listed, no_origin):
        VALIDATOR.validate(hello)
        assert hello["type"] == "hello" and hello["protocol"] == 2 and hello["accepts_audio"] is False
    assert rebinding[0] == 403 and page[0] == 403


def test_token_is_required_and_plain_http_goes_to_the_handler(predictor):
    def handler(connection, request):
        return connection.respond(200, f"page for {request.path}\n")

    engine = Engine(predictor, ws_config(token="s3cret"), [])

    async def main():
        async with running(engine):
            engine.ws.http_handler = handler
            port = engine.ws.port
            statuses = [await refused_status(url(engine)), await refused_status(url(engine, "?token=s3cre")),
                        await refused_status(url(engine), additional_headers={"Authorization": "Bearer nope"})]
            by_query = await first_message(url(engine, "?token=s3cret"))
            by_header = await first_message(url(engine), additional_headers={"Authorization": "Bearer s3cret"})
            pages = [await asyncio.to_thread(http_get, port, path) for path in ("/", "/?token=s3cret")]
            foreign = await asyncio.to_thread(http_get, port, "/?token=s3cret", {"Origin": "http://evil.example"})
            engine.ws.http_handler = None
            missing = await asyncio.to_thread(http_get, port, "/?token=s3cret")
            return statuses, by_query, by_header, pages, foreign, missing

    statuses, by_query, by_header, pages, foreign, missing = asyncio.run(main())
    assert statuses == [401, 401, 401]
    # A valid token also lets the client send audio.
    assert by_query["accepts_audio"] is True and by_header["accepts_audio"] is True
    assert pages[0][0] == 401 and pages[1] == (200, "page for /?token=s3cret\n")
    assert foreign[0] == 403  # the origin is checked before the token
    assert missing[0] == 404


def test_remote_audio_is_refused_once_unless_accepted(predictor):
    engine = Engine(predictor, ws_config(), [])

    async def main():
        async with running(engine):
            async with connect(url(engine, "?stream=intruder")) as ws:
                hello = json.loads(await ws.recv())
                for _ in range(3):
                    await ws.send(b"\x00\x01" * 1600)
                await ws.send(json.dumps({"type": "start_stream"}))
                await ws.send(json.dumps({"type": "end_stream"}))
                got = []
                while len([m for m in got if m["type"] == "error"]) < 3:
                    got.append(json.loads(await ws.recv()))
            return hello, got, engine.hello().streams

    hello, got, streams = asyncio.run(main())
    assert hello["accepts_audio"] is False
    for message in got:
        VALIDATOR.validate(message)
    errors = [m["code"] for m in got if m["type"] == "error"]
    assert errors == ["remote_audio_disabled", "remote_audio_disabled", "no_stream"]
    assert streams == ()  # no stream was opened


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_tls_serves_wss_and_https(predictor, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    trusted = ssl.create_default_context(cafile=str(cert))
    engine = Engine(predictor, ws_config(tls_cert=str(cert), tls_key=str(key)), [])

    async def main():
        async with running(engine):
            port = engine.ws.port
            hello = await first_message(f"wss://127.0.0.1:{port}/", ssl=trusted)
            page = await asyncio.to_thread(http_get, port, "/", None, trusted)
            with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust it
                await first_message(f"wss://127.0.0.1:{port}/", ssl=ssl.create_default_context())
            return hello, page

    hello, page = asyncio.run(main())
    assert hello["type"] == "hello" and page[0] == 200  # the dashboard page, over https
