"""The WebSocket token kept secret: given by file or environment instead of the command line (where every
local user reads it), and never written to a log line, even at ``--log-level debug`` where websockets logs
every request line and header. Real ``ser-live`` processes and real clients."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.request
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from serlive.stream import redact
from serlive.stream.argcheck import TOKEN_ENV, CliError, ws_token
from tests.test_stream_cli_args import assert_one_sentence, ser_live

TOKEN = "tok/en+S3cret-42"
"""A token with characters that URLs quote, so both its plain and its %-encoded forms must be hidden."""


def test_the_token_comes_from_the_flag_the_file_or_the_environment(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    assert ws_token(None, str(path), {TOKEN_ENV: "other"}) == TOKEN
    assert ws_token("flag", None, {TOKEN_ENV: "other"}) == "flag"
    assert ws_token(None, None, {TOKEN_ENV: f" {TOKEN} "}) == TOKEN
    assert ws_token(None, None, {}) is None
    path.write_text("one\ntwo\n")
    for args, environ, fragment in [(("flag", str(path)), {}, "not both"), ((None, str(path)), {}, "on one line"),
                                    ((None, str(tmp_path / "none")), {}, "cannot read --ws-token-file"),
                                    ((None, None), {TOKEN_ENV: " "}, f"{TOKEN_ENV} is set but empty")]:
        with pytest.raises(CliError, match=re.escape(fragment)):
            ws_token(*args, environ)


def test_token_problems_are_one_sentence_and_help_names_the_safe_ways(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert_one_sentence(ser_live("--ws-token-file", str(tmp_path / "missing")), "cannot read --ws-token-file")
    assert_one_sentence(ser_live("--ws-token-file", str(empty)), "must hold the token on one line")
    assert_one_sentence(ser_live("--ws-token", "a", "--ws-token-file", str(empty)), "not both")
    assert_one_sentence(ser_live("--input", "none", env={**os.environ, TOKEN_ENV: ""}), "is set but empty")
    help_text = " ".join(ser_live("--help").stdout.split())
    assert "--ws-token-file PATH" in help_text and TOKEN_ENV in help_text


def test_redaction_covers_queries_headers_quoted_secrets_and_tracebacks(caplog):
    redact.install([TOKEN])
    log = logging.getLogger("websockets.server")
    with caplog.at_level(logging.DEBUG):
        log.debug("< GET /?stream=a&token=%s HTTP/1.1", quote(TOKEN, safe=""))
        log.debug("< %s: %s", "Authorization", f"Bearer {TOKEN}")
        log.info("headers %r", {"authorization": "Basic dXNlcjpwYXNz"})
        try:
            raise ValueError(f"bad url ws://h/?token={TOKEN}")
        except ValueError:
            log.exception("failed for %s", TOKEN)
    text = caplog.text
    assert TOKEN not in text and quote(TOKEN, safe="") not in text and "dXNlcjpwYXNz" not in text
    assert text.count(redact.REDACTED) >= 5 and "GET /?stream=a&token=[redacted] HTTP/1.1" in text


def test_a_debug_run_never_writes_the_token(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "serlive.stream", "--no-tui", "--threads", "1", "--input", "none",
                             "--ws", "127.0.0.1:0", "--ws-token-file", str(path), "--log-level", "debug"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if found := re.search(r"WebSocket server on ws://127\.0\.0\.1:(\d+)", line):
            port = int(found.group(1))
            break
    address = f"ws://127.0.0.1:{port}/"

    async def main():
        async with connect(address + "?token=" + quote(TOKEN, safe="")) as ws:
            hello_by_query = await ws.recv()
        async with connect(address, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            hello_by_header = await ws.recv()
        with pytest.raises(InvalidStatus):
            async with connect(address + "?token=" + TOKEN[:-1] + "x"):
                pass
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{port}/?token={quote(TOKEN, safe='')}", timeout=10).status)
        return hello_by_query, hello_by_header, page

    try:
        hellos = asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert all('"accepts_audio": true' in h.replace('":true', '": true') for h in hellos[:2]) and hellos[2] == 200
    text = "".join(seen) + err
    assert "< GET /?token=[redacted] HTTP/1.1" in text and "< Authorization: [redacted]" in text
    assert TOKEN not in text and quote(TOKEN, safe="") not in text and TOKEN[:-1] not in text
    assert "Traceback" not in text
    # stderr is a pipe here, as it is to a file or a journal: the dashboard's link goes without the token
    assert f"dashboard at http://127.0.0.1:{port}/ (add ?token= and the token" in text


def test_the_dashboard_link_carries_the_token_only_on_a_terminal(tmp_path):
    """On a terminal the link stays one click away; the run above shows a pipe gets none."""
    import pty

    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "serlive.stream", "--no-tui", "--threads", "1", "--input", "none",
                             "--ws", "127.0.0.1:0", "--ws-token-file", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    shown = b""
    try:
        while b"dashboard at" not in shown or not shown.endswith(b"\n"):
            chunk = os.read(main, 4096)
            assert chunk, shown
            shown += chunk
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        os.close(main)
    assert re.search(r"dashboard at http://127\.0\.0\.1:\d+/\?token=" + re.escape(quote(TOKEN, safe="")) + r"\r?\n",
                     shown.decode())


def test_connect_sends_the_token_from_the_environment(monkeypatch):
    from serlive.stream.cli import parse_args

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert parse_args(["--connect", "ws://127.0.0.1:8765"]).ws_token == TOKEN  # tui.app hands it to the client
    monkeypatch.delenv(TOKEN_ENV)
    assert parse_args(["--connect", "ws://127.0.0.1:8765"]).ws_token is None
