"""A flood of half-sent connections against a real ``ser-live`` process with a low descriptor limit (a
lowered RLIMIT_NOFILE makes the 1,024-descriptor case cheap): a real client still connects at once, the
half-sent connections are cut by the handshake timeout, a request with two Origin headers is a 400, and
stderr gets one line about the limit, no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time

from websockets.asyncio.client import connect

from serlive.stream import conncap
from serlive.stream.conncap import HANDSHAKE_TIMEOUT_S, ConnectionGate, ConnectionLimits, quiet_accept_errors
from tests.test_stream_http import UPGRADE, exchange, request

NOFILE = 384
"""The server's descriptor limit; the flood is half again as many connections."""


def start_with_nofile(err_path, nofile: int) -> tuple[subprocess.Popen, int]:
    def lower_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    err = open(err_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "serlive.stream", "--no-tui", "--threads", "1", "--input", "none",
                             "--ws", "127.0.0.1:0", "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=lower_limit)
    err.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if found := re.search(r"WebSocket server on ws://127\.0\.0\.1:(\d+)", err_path.read_text()):
            return proc, int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"ser-live ended without serving: {err_path.read_text()}")


def half_sent(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send the start of a request and never the rest."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError:
            pass  # cut by the server already
        socks.append(sock)
    return socks


def all_cut(socks: list[socket.socket], timeout_s: float) -> bool:
    """True when the server closed every one of ``socks`` within ``timeout_s``."""
    deadline, waiting, poll = time.monotonic() + timeout_s, {s.fileno(): s for s in socks}, select.poll()
    for fd in waiting:
        poll.register(fd, select.POLLIN)
    while waiting and time.monotonic() < deadline:
        for fd, _ in poll.poll(200):
            try:
                if waiting[fd].recv(4096):
                    continue
            except OSError:  # reset: cut as well
                pass
            poll.unregister(fd)
            del waiting[fd]
    return not waiting


def test_half_sent_connections_do_not_lock_out_real_clients(tmp_path):
    err_path = tmp_path / "stderr.txt"
    proc, port = start_with_nofile(err_path, NOFILE)
    flood: list[socket.socket] = []
    try:
        flood = half_sent(port, NOFILE * 3 // 2)
        flooded = time.monotonic()

        async def real_client() -> tuple[dict, float]:
            start = time.monotonic()
            async with connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return hello, time.monotonic() - start

        hello, connect_s = asyncio.run(real_client())
        twice = exchange(port, request("GET", "/", "Host: 127.0.0.1", "Origin: http://127.0.0.1",
                                       "Origin: http://evil.example", *UPGRADE))
        cut_in_time = all_cut(flood, HANDSHAKE_TIMEOUT_S + 3 - (time.monotonic() - flooded))  # default was 10 s
    finally:
        for sock in flood:
            sock.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    err = err_path.read_text()
    assert "Traceback" not in err and "out of system resource" not in err, err[-3000:]
    assert "cannot accept connections" not in err  # the limits kept descriptors free
    assert err.count("connection limit reached") == 1 and err.count("were cut and 0 refused in all") == 1, err[-3000:]
    assert hello["type"] == "hello" and connect_s < 2.0, connect_s
    assert twice.startswith(b"HTTP/1.1 400 ")  # and no traceback for it either
    assert cut_in_time  # by the handshake timeout
    assert proc.returncode == 130


class FakeConnection:
    """What the gate reads of a connection: its request (None while half-sent) and a transport to cut."""

    def __init__(self) -> None:
        self.request, self.aborted = None, False
        self.transport = self

    def abort(self) -> None:
        self.aborted = True


def test_the_gate_cuts_the_oldest_half_sent_connection_before_refusing_anyone():
    gate = ConnectionGate(ConnectionLimits(total=4, per_address=2, nofile=64))
    a1, a2, a3, a4, b1, b2, c1 = (FakeConnection() for _ in range(7))
    assert gate.admit(a1, "A") and gate.admit(a2, "A")
    assert gate.admit(a3, "A") and a1.aborted and not a2.aborted  # per address: the oldest half-sent of A
    a2.request = a3.request = "GET /"  # both sent their requests: nothing of A may be cut now
    assert not gate.admit(a4, "A") and not a4.aborted
    assert gate.admit(b1, "B") and gate.admit(b2, "B") and gate.open_count == 4
    assert gate.admit(c1, "C") and b1.aborted  # in all: the oldest half-sent anywhere
    gate.release(a2)
    assert gate.open_count == 3 and (gate.cut, gate.refused) == (2, 1)


def test_asyncio_accept_errors_are_one_line_per_interval_without_a_traceback(caplog):
    quiet_accept_errors()
    conncap._accept_filter._logged_at = float("-inf")  # as in a fresh process
    error = OSError(24, "Too many open files")
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        for _ in range(5):  # asyncio retries once a second while descriptors run out
            logging.getLogger("asyncio").error("socket.accept() out of system resource\nsocket: <x>",
                                               exc_info=(OSError, error, None))
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1 and "Traceback" not in caplog.text
    assert all(r.levelno == logging.WARNING and "Too many open files" in r.getMessage() for r in records)
