"""Remote audio from one WebSocket connection: ``start_stream`` / binary PCM / ``end_stream``.

Text messages are small JSON control messages (at most :data:`MAX_TEXT_BYTES`); anything else gets an
``error`` and the connection goes on. Audio is converted from the declared format to s16le 16 kHz mono
and handed to a :class:`~serlive.stream.sources.RemoteSource`, whose ``feed`` holds this connection's
reading back while the engine is behind (TCP back-pressure on this sender only).
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

from .access import offered_token, token_ok
from .events import Accepted, Error
from .formats import DEFAULT_FORMAT, AudioFormat, FormatError, PcmConverter, parse_format
from .names import client_stream_name
from .sources import RemoteSource

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
"""Largest message a client may send (1 MiB, about 32 s of s16le 16 kHz audio); a bigger one closes the
connection with 1009. ``hello.max_message_bytes`` says so."""

MAX_TEXT_BYTES = 4096
"""Largest text (control) message that is parsed; a longer one gets ``bad_message``."""


class Ingest:
    """The receiving side of one connection (``server`` is the :class:`~serlive.stream.ws.WsServer`)."""

    def __init__(self, server, client, request) -> None:
        self.server, self.client = server, client
        query = parse_qs(urlsplit(request.path).query)
        self.query_name = query.get("stream", [None])[0]
        config = server.config
        self.accepts_audio = config.accept_audio or (bool(config.token)
                                                     and token_ok(offered_token(request), config.token))
        self.remote: RemoteSource | None = None
        self.converter: PcmConverter | None = None
        self._told_disabled = False
        self._told_nonfinite = False

    def _error(self, code: str, message: str, stream: str | None = None) -> None:
        self.client.offer(Error(code, message, stream).to_json(), reply=True)

    async def receive(self, message) -> None:
        if isinstance(message, (bytes, bytearray, memoryview)):
            await self._audio(bytes(message))
        else:
            await self._control(message)

    async def _audio(self, data: bytes) -> None:
        if not self.accepts_audio:
            if not self._told_disabled:
                self._told_disabled = True
                self._error("remote_audio_disabled", "this server does not take audio from this connection "
                                                     "(start it with --accept-audio, or connect with the token)")
            return
        if self.remote is None:
            self._open(None, DEFAULT_FORMAT)
        pcm = self.converter.convert(data)
        if self.converter.nonfinite and not self._told_nonfinite:
            self._told_nonfinite = True
            self._error("bad_audio", "the audio held NaN or infinite samples; they were replaced by silence",
                        self.remote.name)
        await self._feed(pcm)

    async def _feed(self, pcm: bytes) -> None:
        if pcm:
            await self.remote.feed(pcm)

    async def _control(self, text: str) -> None:
        if len(text) > MAX_TEXT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
            self._error("bad_message", f"text messages are JSON control messages of at most {MAX_TEXT_BYTES} "
                                       "bytes; audio goes in binary messages")
            return
        try:
            control = json.loads(text)
        except (ValueError, RecursionError):
            control = None
        kind = control.get("type") if isinstance(control, dict) else None
        if kind == "start_stream":
            self._start(control)
        elif kind == "end_stream":
            await self._end()
        else:
            self._error("bad_message", "text messages must be JSON objects with type start_stream or end_stream")

    def _start(self, control: dict) -> None:
        if not self.accepts_audio:
            self._error("remote_audio_disabled", "this server does not take audio from this connection")
            return
        if self.remote is not None:
            self._error("bad_message", f"stream {self.remote.name} is already open; send end_stream first",
                        self.remote.name)
            return
        name = control.get("stream")
        if name is not None and not isinstance(name, str):
            self._error("bad_message", "start_stream's stream must be a string")
            return
        try:
            fmt = parse_format(control.get("format"))
        except FormatError as exc:
            self._error("bad_format", f"{exc}; the stream was not opened")
            return
        self._open(name, fmt)

    def _open(self, name: str | None, fmt: AudioFormat) -> None:
        wanted = client_stream_name(name if name is not None else self.query_name, "")
        self.remote = RemoteSource(wanted or self.server.next_remote_name())
        self.converter = PcmConverter(fmt)
        self._told_nonfinite = False
        stream_id = self.server.engine.add_source(self.remote, remote=True)
        self.client.offer(Accepted(stream_id, fmt.to_dict()).to_json(), reply=True)

    async def _end(self) -> None:
        if self.remote is None:
            self._error("no_stream", "end_stream needs an open stream: send start_stream or audio first")
            return
        remote = self.remote
        await self._feed(self.converter.flush())
        self.remote = None
        remote.end("client_ended", "the client ended the stream")
        # Its finals first: then the next start_stream of this client finds the name free again.
        await self.server.stream_ended(remote.name, self.client.conn)

    def closed(self, reason: str, detail: str) -> None:
        """The connection ended: end its stream, if one is open."""
        if self.remote is not None:
            self.remote.end(reason, detail)
            self.remote = None
