"""The WebSocket server: every event to every dashboard client, and remote audio in (protocol version 2,
described in PROTOCOL.md).

A new connection is first admitted by :mod:`serlive.stream.conncap` (limits below the descriptor limit,
a request within 5 s). Every HTTP request then passes :func:`serlive.stream.access.check_request` (origin
403, token 401, plain HTTP to the ``http_handler`` or 404). Each client has a bounded queue of encoded
messages and a sender task of its own, so a slow client only skips events (counted); one that stops reading
(what was sent stays unread, or a send blocked, for ``stall_timeout_s``; an idle one's ping unanswered for
``ping_timeout_s``) is closed with 4001. Neither slows the engine or the other clients. Remote audio is
handled per connection by :class:`serlive.stream.ingest.Ingest`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque

from . import redact
from .access import check_request, tls_context
from .conncap import (ACCEPT_BACKLOG, HANDSHAKE_TIMEOUT_S, ConnectionGate, connection_limits,
                      gated_connection_class, quiet_accept_errors)
from .config import WsConfig
from .events import Event, StreamStatus
from .ingest import MAX_MESSAGE_BYTES, Ingest

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TOO_MANY, CLOSE_TOO_SLOW = 1001, 1008, 1009, 1013, 4001
CLOSE_TIMEOUT_S = 1.0
"""How long a closing handshake may take at shutdown before the connection is cut."""

INCOMING_QUEUE_MESSAGES = 4
"""Received messages websockets holds per connection while the server is not reading it (back-pressure):
at most this many times ``MAX_MESSAGE_BYTES`` of memory per client, then the socket is not read."""

STALLED_CLOSE_GRACE_S = 10.0
"""How long a client closed with 4001 has to read what was sent, close frame included, before the TCP
connection is cut (a client that paused and resumes still learns why it was closed)."""


READ_PROBE_INTERVAL_S = 1.0
"""Least time between two read probes of one client (a ping after what was sent; see :meth:`_Client.read_probe`)."""

PROBE_SLICE_S = 0.1
"""A probe looks this often whether the server is reading the client (see :meth:`_Client._answered`)."""


class _Client:
    """One connection's outgoing queue; ``offer`` never blocks."""

    def __init__(self, conn, max_queue: int, stall_timeout_s: float, on_drop=None) -> None:
        self.conn, self.max_queue, self.stall_timeout_s = conn, max_queue, stall_timeout_s
        self.skipped = 0
        self._queue: deque[str] = deque()
        self._wake, self._sent = asyncio.Event(), asyncio.Event()
        self._on_drop = on_drop
        self.dropped = False

    def offer(self, message: str, reply: bool = False) -> None:
        """Queue ``message``; when the queue is full, broadcast events are skipped (counted) but a
        ``reply`` to this client's own message (``accepted``, an ``error``) has room up to twice the bound."""
        if self.dropped:
            return
        if len(self._queue) < self.max_queue * (2 if reply else 1):
            self._queue.append(message)
            self._wake.set()
        else:
            self.skipped += 1

    def drop(self, why: str) -> None:
        """Close with 4001, giving the client :data:`STALLED_CLOSE_GRACE_S` to read the close frame."""
        if self.dropped:
            return
        self.dropped = True
        log.warning("closing a WebSocket client that %s (%d events skipped)", why, self.skipped)
        self.conn.close_timeout = STALLED_CLOSE_GRACE_S
        asyncio.get_running_loop().create_task(self.conn.close(CLOSE_TOO_SLOW, "client too slow"))
        if self._on_drop is not None:
            self._on_drop()

    @property
    def idle(self) -> bool:
        return not self._queue

    async def send_loop(self) -> None:
        while not self.dropped:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self.dropped:
                try:
                    await asyncio.wait_for(self.conn.send(self._queue.popleft()), self.stall_timeout_s)
                except asyncio.TimeoutError:
                    self.drop(f"did not read for {self.stall_timeout_s:g} s")
                except Exception:  # noqa: BLE001 - ConnectionClosed: the handler sees it and cleans up
                    return
                self._sent.set()

    async def _ping(self) -> None:
        await (await self.conn.ping())

    def _reading(self) -> bool:
        transport = self.conn.transport
        return transport is not None and transport.is_reading()

    async def _answered(self, timeout_s: float) -> bool:
        """Ping: True when the pong comes back, False when the server has read this client for ``timeout_s``
        in all without it. Time while websockets does not read the connection (its received messages wait
        for the engine: back-pressure on its audio) does not count, as the pong may wait unread behind them;
        time while the server reads it does, however busy the client keeps it with audio. Raises
        ``ConnectionClosed``."""
        pong = asyncio.ensure_future(self._ping())
        read_s = 0.0
        try:
            while read_s < timeout_s:
                reading = self._reading()
                done, _ = await asyncio.wait({pong}, timeout=PROBE_SLICE_S)
                if done:
                    pong.result()
                    return True
                if reading and self._reading():
                    read_s += PROBE_SLICE_S
            return False
        finally:
            pong.cancel()

    async def read_probe(self) -> None:
        """A ping after what was sent (at most every :data:`READ_PROBE_INTERVAL_S`): its pong comes back only
        once the client has read everything sent before it, so none within ``stall_timeout_s`` means the
        client stopped reading, however much the socket buffers between us still take (on loopback, minutes
        of events before a send would block)."""
        try:
            while not self.dropped:
                await self._sent.wait()
                self._sent.clear()
                if not await self._answered(self.stall_timeout_s):
                    self.drop(f"did not read for {self.stall_timeout_s:g} s")
                    return
                await asyncio.sleep(READ_PROBE_INTERVAL_S)
        except Exception:  # noqa: BLE001 - ConnectionClosed: the handler sees it and cleans up
            return

    async def keepalive(self, interval_s: float, timeout_s: float) -> None:
        """Ping every ``interval_s``; no pong within ``timeout_s`` means the client stopped reading (this
        one also finds a silent client, to which nothing is being sent)."""
        try:
            while not self.dropped:
                await asyncio.sleep(interval_s)
                if not await self._answered(timeout_s):
                    self.drop(f"left a ping unanswered for {timeout_s:g} s")
                    return
        except Exception:  # noqa: BLE001 - ConnectionClosed: the handler sees it and cleans up
            return


class WsServer:
    """Serves ``engine``'s events on ``config.host:config.port`` (port 0: a free one, see ``port``).

    ``http_handler(connection, request) -> websockets.http11.Response`` answers plain HTTP requests that
    passed the access checks (the dashboard); without one they get 404.
    """

    def __init__(self, engine, config: WsConfig, http_handler=None) -> None:
        self.engine, self.config, self.http_handler = engine, config, http_handler
        self.port: int | None = None
        self.slow_closed = 0
        self._clients: set[_Client] = set()
        self._server = None
        self.gate: ConnectionGate | None = None  # set by start()
        self._remote_count = 0
        self._running: dict[str, asyncio.Event] = {}  # stream id -> set when that stream ends

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def scheme(self) -> str:
        return "wss" if self.config.tls_cert else "ws"

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        redact.install((self.config.token,))  # websockets logs request lines and headers at debug level
        quiet_accept_errors()
        self.gate = ConnectionGate(connection_limits())
        tls = tls_context(self.config)
        self._server = await serve(
            self._handler, self.config.host, self.config.port, ssl=tls,
            process_request=lambda conn, req: check_request(conn, req, self.config, self.http_handler),
            max_size=MAX_MESSAGE_BYTES, max_queue=INCOMING_QUEUE_MESSAGES, compression=None, ping_interval=None,
            close_timeout=CLOSE_TIMEOUT_S, open_timeout=HANDSHAKE_TIMEOUT_S,
            create_connection=gated_connection_class(self.gate), backlog=ACCEPT_BACKLOG,
            **({"ssl_handshake_timeout": HANDSHAKE_TIMEOUT_S} if tls else {}))
        self.port = self._server.sockets[0].getsockname()[1]
        # With port 0 the port is news to the user (and to scripts waiting for it): say it at warning level.
        log.log(logging.WARNING if self.config.port == 0 else logging.INFO, "WebSocket server on %s://%s:%d",
                self.scheme, self.config.host, self.port)

    def put(self, event: Event) -> None:
        if isinstance(event, StreamStatus):
            self._track(event)
        if not self._clients:
            return
        message = event.to_json()
        for client in list(self._clients):
            client.offer(message)

    async def close(self, drain_s: float = 1.0) -> None:
        """Give clients up to ``drain_s`` to receive what is queued, then close every connection (1001)."""
        deadline = time.monotonic() + drain_s
        while any(not c.idle and not c.dropped for c in self._clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self.gate is not None and (self.gate.cut or self.gate.refused):
            log.warning("at the connection limit, %d half-sent connections were cut and %d refused in all",
                        self.gate.cut, self.gate.refused)

    def _track(self, event: StreamStatus) -> None:
        if event.state == "started":
            self._running[event.stream] = asyncio.Event()
        elif (ended := self._running.pop(event.stream, None)) is not None:
            ended.set()

    async def stream_ended(self, stream: str, conn) -> None:
        """Return once ``stream`` has ended, its finals sent and its id free again (or ``conn`` closed)."""
        ended = self._running.get(stream)
        if ended is None:
            return
        waits = [asyncio.ensure_future(ended.wait()), asyncio.ensure_future(conn.wait_closed())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def next_remote_name(self) -> str:
        self._remote_count += 1
        return f"remote-{self._remote_count}"

    def _slow_closed(self) -> None:
        self.slow_closed += 1

    async def _handler(self, conn) -> None:
        if len(self._clients) >= self.config.max_clients:
            await conn.close(CLOSE_TOO_MANY, f"too many clients (at most {self.config.max_clients})")
            return
        client = _Client(conn, self.config.client_queue, self.config.stall_timeout_s, self._slow_closed)
        ingest = Ingest(self, client, conn.request)
        hello = dataclasses.replace(self.engine.hello(), accepts_audio=ingest.accepts_audio,
                                    max_message_bytes=MAX_MESSAGE_BYTES)
        client.offer(hello.to_json())
        for message in self.engine.recent() if hasattr(self.engine, "recent") else ():
            client.offer(message)  # a feed's late client catches up on the recent window
        self._clients.add(client)
        tasks = [asyncio.create_task(client.send_loop()), asyncio.create_task(client.read_probe()),
                 asyncio.create_task(client.keepalive(self.config.ping_interval_s, self.config.ping_timeout_s))]
        try:
            async for message in conn:
                await ingest.receive(message)
        except Exception as exc:  # noqa: BLE001 - a broken connection ends only itself
            log.debug("client connection ended: %s", exc)
        finally:
            self._clients.discard(client)
            for task in tasks:
                task.cancel()
            clean = conn.protocol.close_rcvd is not None
            ingest.closed("client_closed" if clean else "connection_lost",
                          "the client closed the connection" if clean else "the connection was lost")
