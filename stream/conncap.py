"""Connection limits that keep the server below its file-descriptor limit, so a flood of connections that
never finish their request cannot lock real clients out (nor fill stderr with ``accept()`` tracebacks).

Every TCP connection costs one descriptor from the moment it is accepted. :func:`connection_limits` reads
``RLIMIT_NOFILE`` and the descriptors already open and allows at most ``total`` connections, at most
``per_address`` of them from one remote address. A connection beyond either limit first makes room by
cutting the oldest *half-sent* connection in its scope (connected, request not yet received: the kind a
flood holds open, which the handshake timeout would cut anyway); only when every connection in that scope
has sent its request is the new one refused. A real client, whose request follows its connection within
milliseconds, therefore gets in while a flood lasts. The condition is logged at most once per
:data:`LIMIT_LOG_INTERVAL_S`, as one line.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0
"""Time a connection has to send its whole request (and to finish its TLS handshake): a half-sent request
holds a descriptor until then."""

ACCEPT_BACKLOG = 64
"""Connections the kernel holds for the server to accept; asyncio accepts up to this many at once, each
taking a descriptor before the gate sees it."""

FD_MARGIN = 2 * ACCEPT_BACKLOG + 32
"""Descriptors kept free beyond those already open when the server starts: one batch being accepted, one
batch being cut (a cut connection's descriptor is closed an event-loop turn later), and files a sink opens
or TLS handshakes in progress (not counted as connections until they finish)."""

LIMIT_LOG_INTERVAL_S = 10.0
"""Least time between two log lines about connections cut or refused at the limits."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    total: int
    per_address: int
    nofile: int  # the RLIMIT_NOFILE soft limit they were derived from


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a small process
        return 64


def connection_limits(max_total: int = 10_000) -> ConnectionLimits:
    """Limits for this process now: ``total`` below the soft ``RLIMIT_NOFILE`` minus the descriptors in use
    and :data:`FD_MARGIN` (and at most ``max_total``); ``per_address`` half of ``total``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = soft if soft != resource.RLIM_INFINITY else 1 << 20
    total = max(2, min(max_total, nofile - open_descriptors() - FD_MARGIN))
    return ConnectionLimits(total, max(1, total // 2), nofile)


class ConnectionGate:
    """Admits or refuses each new connection (``admit`` from ``connection_made``, ``release`` from
    ``connection_lost``). A connection is any object with ``request`` (None until its request is in) and
    ``transport`` (``abort()`` cuts it at once, freeing its descriptor)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[object, str] = {}  # connection -> remote address, oldest first
        self._per_address: Counter[str] = Counter()
        self.cut = self.refused = 0  # totals since start
        self._unreported = [0, 0]  # cut, refused since the last log line
        self._logged_at = float("-inf")

    @property
    def open_count(self) -> int:
        return len(self._open)

    def admit(self, conn, address: str) -> bool:
        """True when ``conn`` may go on (after cutting a half-sent one if a limit was reached)."""
        if self._per_address[address] >= self.limits.per_address and not self._cut_oldest(address):
            return self._refuse()
        if len(self._open) >= self.limits.total and not self._cut_oldest(None):
            return self._refuse()
        self._open[conn] = address
        self._per_address[address] += 1
        return True

    def release(self, conn) -> None:
        address = self._open.pop(conn, None)
        if address is not None:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    def _cut_oldest(self, address: str | None) -> bool:
        for conn, where in self._open.items():
            if conn.request is None and (address is None or where == address):
                self.release(conn)
                conn.transport.abort()
                self.cut += 1
                self._unreported[0] += 1
                self._report()
                return True
        return False

    def _refuse(self) -> bool:
        self.refused += 1
        self._unreported[1] += 1
        self._report()
        return False

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._logged_at < LIMIT_LOG_INTERVAL_S:
            return
        self._logged_at = now
        cut, refused = self._unreported
        self._unreported = [0, 0]
        limits = self.limits
        log.warning("connection limit reached (at most %d open, %d per address, from RLIMIT_NOFILE %d): "
                    "%d half-sent connections cut and %d refused since the last report; next report in "
                    "%g s at the earliest", limits.total, limits.per_address, limits.nofile, cut, refused,
                    LIMIT_LOG_INTERVAL_S)


def gated_connection_class(gate: ConnectionGate):
    """A websockets ``ServerConnection`` subclass (the ``create_connection`` argument of ``serve``) that
    asks ``gate`` before it takes a new connection, and hands websockets a request head that announces a
    body it cannot read without that body (:func:`serlive.stream.access.without_body`)."""
    from websockets.asyncio.server import ServerConnection

    from .access import MAX_HEAD_BYTES, without_body

    class GatedConnection(ServerConnection):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._head: bytes | None = b""  # the request's first bytes until its head is complete; then None
            self._discard = False  # a rewritten request's body: never read

        def data_received(self, data: bytes) -> None:
            if self._discard:
                return
            if self._head is not None:
                data = self._head + data
                if b"\r\n\r\n" not in data and len(data) < MAX_HEAD_BYTES:
                    self._head = data
                    return
                self._head = None
                if (head := without_body(data)) is not None:
                    data, self._discard = head, True
            super().data_received(data)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            if not gate.admit(self, str(peer[0]) if isinstance(peer, tuple) and peer else "?"):
                transport.abort()

        def connection_lost(self, exc) -> None:
            gate.release(self)
            super().connection_lost(exc)

    return GatedConnection


class _AcceptErrorFilter(logging.Filter):
    """asyncio's ``socket.accept() out of system resource`` (a traceback each time the loop retries, once a
    second while descriptors run out): one line per :data:`LIMIT_LOG_INTERVAL_S`, no traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._logged_at = float("-inf")
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        now = time.monotonic()
        if now - self._logged_at < LIMIT_LOG_INTERVAL_S:
            self.dropped += 1
            return False
        self._logged_at = now
        error = record.exc_info[1] if record.exc_info else None
        record.msg, record.args, record.exc_info, record.exc_text = (
            "cannot accept connections: %s (%d such errors not shown since the last report)",
            (getattr(error, "strerror", None) or error or "out of descriptors", self.dropped), None, None)
        record.levelno, record.levelname, self.dropped = logging.WARNING, "WARNING", 0
        return True


_accept_filter: _AcceptErrorFilter | None = None


def quiet_accept_errors() -> None:
    """Install the filter on asyncio's logger (once)."""
    global _accept_filter
    if _accept_filter is None:
        _accept_filter = _AcceptErrorFilter()
        logging.getLogger("asyncio").addFilter(_accept_filter)
