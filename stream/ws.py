"""The WebSocket server: every event to every dashboard client, and remote audio in.

Each client has a bounded queue of encoded messages and a sender task of its own, so a slow client only
skips events (counted), and one whose current send has not completed for ``stall_timeout_s`` is
disconnected; neither slows the engine or the other clients. Close codes: 1008 missing or wrong token, 1013 too many clients,
4001 client too slow. Binary messages are s16le 16 kHz mono audio on the client's own stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import deque
from urllib.parse import parse_qs, urlsplit

from .config import WsConfig
from .events import Error, Event
from .sources import RemoteSource

log = logging.getLogger(__name__)

CLOSE_BAD_TOKEN, CLOSE_TOO_MANY, CLOSE_TOO_SLOW = 1008, 1013, 4001
CLOSE_TIMEOUT_S = 1.0
"""How long a closing handshake may take before the connection is cut (a stalled client never answers)."""

MAX_MESSAGE_BYTES = 1 << 20
"""Largest message a client may send (about 32 s of s16le audio)."""


class _Client:
    """One connection's outgoing queue; ``offer`` never blocks."""

    def __init__(self, conn, max_queue: int, stall_timeout_s: float) -> None:
        self.conn, self.max_queue, self.stall_timeout_s = conn, max_queue, stall_timeout_s
        self.skipped = 0
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._sending_since: float | None = None
        self.dropped = False

    def offer(self, message: str) -> None:
        if self.dropped:
            return
        now = time.monotonic()
        if self._sending_since is not None and now - self._sending_since > self.stall_timeout_s:
            self._drop()
        elif len(self._queue) < self.max_queue:
            self._queue.append(message)
            self._wake.set()
        else:
            self.skipped += 1

    def _drop(self) -> None:
        self.dropped = True
        log.warning("dropping a stalled WebSocket client (%d events skipped)", self.skipped)
        asyncio.get_running_loop().create_task(self.conn.close(CLOSE_TOO_SLOW, "client too slow"))

    @property
    def idle(self) -> bool:
        return not self._queue

    async def send_loop(self) -> None:
        while not self.dropped:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self.dropped:
                self._sending_since = time.monotonic()
                await self.conn.send(self._queue.popleft())
                self._sending_since = None


class WsServer:
    """Serves ``engine``'s events on ``config.host:config.port`` (port 0: a free one, see ``port``)."""

    def __init__(self, engine, config: WsConfig) -> None:
        self.engine, self.config = engine, config
        self.port: int | None = None
        self._clients: set[_Client] = set()
        self._server = None
        self._remote_count = 0

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handler, self.config.host, self.config.port,
                                   max_size=MAX_MESSAGE_BYTES, compression=None, ping_interval=20,
                                   close_timeout=CLOSE_TIMEOUT_S)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("WebSocket server on ws://%s:%d", self.config.host, self.port)

    def put(self, event: Event) -> None:
        if not self._clients:
            return
        message = event.to_json()
        for client in list(self._clients):
            client.offer(message)

    async def close(self, drain_s: float = 1.0) -> None:
        """Give clients up to ``drain_s`` to receive what is queued, then close every connection."""
        deadline = time.monotonic() + drain_s
        while any(not c.idle and not c.dropped for c in self._clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _authorised(self, conn, query: dict) -> bool:
        token = self.config.token
        if not token:
            return True
        offered = query.get("token", [""])[0]
        header = conn.request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            offered = offered or header[len("Bearer "):]
        return hmac.compare_digest(offered.encode(), token.encode())

    async def _handler(self, conn) -> None:
        query = parse_qs(urlsplit(conn.request.path).query)
        if not self._authorised(conn, query):
            await conn.close(CLOSE_BAD_TOKEN, "missing or wrong token")
            return
        if len(self._clients) >= self.config.max_clients:
            await conn.close(CLOSE_TOO_MANY, f"too many clients (at most {self.config.max_clients})")
            return
        client = _Client(conn, self.config.client_queue, self.config.stall_timeout_s)
        client.offer(self.engine.hello().to_json())
        self._clients.add(client)
        sender = asyncio.create_task(client.send_loop())
        remote: RemoteSource | None = None
        try:
            async for message in conn:
                remote = await self._receive(client, message, remote, query)
        except Exception as exc:  # noqa: BLE001 - a broken connection ends only itself
            log.debug("client connection ended: %s", exc)
        finally:
            self._clients.discard(client)
            sender.cancel()
            if remote is not None:
                remote.end("the client disconnected")

    async def _receive(self, client: _Client, message, remote: RemoteSource | None, query: dict):
        if isinstance(message, bytes):
            if not self.config.allow_remote_audio:
                client.offer(Error("remote_audio_disabled", "this server does not accept remote audio").to_json())
                return remote
            if remote is None:
                self._remote_count += 1
                name = query.get("stream", [f"remote-{self._remote_count}"])[0]
                remote = RemoteSource(name)
                self.engine.add_source(remote, remote=True)
            await remote.feed(message)
            return remote
        try:
            control = json.loads(message)
        except json.JSONDecodeError:
            control = {}
        if isinstance(control, dict) and control.get("type") == "end_stream" and remote is not None:
            remote.end()
            return None
        client.offer(Error("bad_message", "text messages must be {\"type\": \"end_stream\"}").to_json())
        return remote
