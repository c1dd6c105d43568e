"""Audio sources behind one async interface: ``async for chunk in source.chunks()``.

Every source yields 16 kHz mono :class:`AudioChunk` objects stamped on its own sample clock, all made by one
conversion (:class:`~serlive.stream.chunks.StreamResampler`: downmix, resample, round onto the int16 grid), so
a recording gives the same samples and segments whichever way it comes in; each counts audio
it had to drop in ``dropped_samples``, and says why it ended in ``detail``. The microphone lives in
:mod:`serlive.stream.mic` so that a file-only run never imports sounddevice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import AsyncIterator, BinaryIO

import numpy as np

from .chunks import SAMPLE_RATE_HZ, AudioChunk, StreamResampler
from .events import END_REASONS
from .quiet import quiet_stderr

log = logging.getLogger(__name__)

FILE_BLOCK_MS = 20
"""Files are read and paced in blocks of this many milliseconds (a typical microphone block)."""

PCM_READ_BYTES = 3200
"""Bytes per read from stdin: 100 ms of s16le at 16 kHz."""


class SourceError(Exception):
    """A source that cannot start; the message is one sentence for the user."""


class Source:
    """Base class: ``name`` is the stream id; ``live`` sources (microphones) run until stopped. ``paced``:
    True when its audio comes at most in real time (a microphone, a file paced on the clock), False when it is
    read as fast as it goes, None when it depends on a sender (stdin, a WebSocket client)."""

    live = False
    paced: bool | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.dropped_samples = 0
        self.detail = "end of input"
        self.reason = "end_of_input"  # the stream event's reason when it ended by itself
        self.failed = False

    def chunks(self) -> AsyncIterator[AudioChunk]:
        raise NotImplementedError

    def close(self) -> None:
        """Ask the source to stop; ``chunks()`` then ends soon."""


class Pcm16Reader:
    """s16le 16 kHz mono bytes cut anywhere (an odd byte waits for its pair) -> chunks, through the same
    :class:`StreamResampler` as every other source, so stdin and WebSocket audio land on the same samples."""

    def __init__(self) -> None:
        self._carry = b""
        self._convert = StreamResampler(SAMPLE_RATE_HZ)

    def push(self, data: bytes) -> list[AudioChunk]:
        data, self._carry = self._carry + data, b""
        if len(data) % 2:
            data, self._carry = data[:-1], data[-1:]
        return self._convert.push(np.frombuffer(data, "<i2"))


async def _pace(loop: asyncio.AbstractEventLoop, t0: float, end_sample: int, paced: bool) -> None:
    if paced:
        delay = t0 + end_sample / SAMPLE_RATE_HZ - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            return
    await asyncio.sleep(0)  # let the rest of the engine run between chunks


class ArraySource(Source):
    """A waveform already in memory, cut into ``block_ms`` chunks, paced in real time or not."""

    def __init__(self, name: str, audio: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ,
                 realtime: bool = False, block_ms: int = FILE_BLOCK_MS) -> None:
        super().__init__(name)
        self.audio, self.sample_rate_hz = np.asarray(audio), sample_rate_hz
        self.paced, self.block_ms = realtime, block_ms
        self._closed = False

    def close(self) -> None:
        self._closed = True

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        channels = 1 if self.audio.ndim == 1 else self.audio.shape[1]
        resampler = StreamResampler(self.sample_rate_hz, channels)
        block = max(1, self.sample_rate_hz * self.block_ms // 1000)
        for i in range(0, len(self.audio), block):
            if self._closed:
                self.detail = "stopped"
                return
            last = i + block >= len(self.audio)
            for chunk in resampler.push(self.audio[i:i + block], last=last):
                yield chunk
                await _pace(loop, t0, chunk.end_sample, self.paced)


class FileSource(Source):
    """A wav / flac / ogg file at any rate and channel count, read in blocks; opening checks it."""

    def __init__(self, path: str | Path, realtime: bool = True, block_ms: int = FILE_BLOCK_MS,
                 name: str | None = None) -> None:
        import soundfile

        self.path = Path(path)
        super().__init__(name or self.path.name)
        self.paced, self.block_ms = realtime, block_ms
        self._closed = False
        if not self.path.is_file():
            raise SourceError(f"input file {self.path} does not exist")
        self._mpeg = self.path.suffix.lower() in (".mp3", ".mp2", ".mpga")
        try:
            with quiet_stderr(self._mpeg):
                info = soundfile.info(str(self.path))
        except Exception as exc:  # noqa: BLE001 - libsndfile says "not a known format" in many ways
            raise SourceError(f"input file {self.path} is not audio that ser-live can read (wav, flac, ogg)") from exc
        if info.frames == 0:
            raise SourceError(f"input file {self.path} holds no audio")
        self.sample_rate_hz, self.channels, self.frames = info.samplerate, info.channels, info.frames
        self._mpeg = self._mpeg or info.format == "MPEG"

    def close(self) -> None:
        self._closed = True

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        import soundfile

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        resampler = StreamResampler(self.sample_rate_hz, self.channels)
        block = max(1, self.sample_rate_hz * self.block_ms // 1000)
        with quiet_stderr(self._mpeg):
            fh = soundfile.SoundFile(str(self.path))
        with fh:
            while not self._closed:
                try:
                    with quiet_stderr(self._mpeg):
                        data = fh.read(block, dtype="float32", always_2d=True)
                except (soundfile.LibsndfileError, RuntimeError) as exc:  # truncated or corrupt: keep what came
                    self.failed = True
                    self.detail = (f"input file {self.path.name} is damaged: decoding stopped after "
                                   f"{resampler.next_sample / SAMPLE_RATE_HZ:.2f} s ({str(exc).strip()})")
                    data = np.zeros((0, self.channels), np.float32)
                last = self.failed or len(data) < block or fh.tell() >= self.frames
                for chunk in resampler.push(data, last=last):
                    yield chunk
                    await _pace(loop, t0, chunk.end_sample, self.paced)
                if last:
                    return
        self.detail = "stopped"


class _ThreadedReader(Source):
    """Reads blocking ``read(n)`` calls on a daemon thread; a full queue holds the reader back
    (stdin is not real-time, so nothing is dropped). :meth:`close` ends ``chunks()`` at once, even while
    the thread is blocked in a read."""

    def __init__(self, name: str, read, queue_chunks: int = 64) -> None:
        super().__init__(name)
        self._read_bytes, self._queue_chunks = read, queue_chunks
        self._stop = threading.Event()
        self._queue: asyncio.Queue | None = None

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self.detail = "stopped"
        if self._queue is not None:
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                pass  # the consumer is not waiting: it sees _stop on its next turn

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        loop = asyncio.get_running_loop()
        self._queue = queue = asyncio.Queue(self._queue_chunks)
        threading.Thread(target=self._read, args=(loop, queue), daemon=True, name=f"read-{self.name}").start()
        reader = Pcm16Reader()
        while not self._stop.is_set():
            data = await queue.get()
            if data is None or isinstance(data, Exception):
                if isinstance(data, Exception):
                    self.failed, self.detail = True, f"reading {self.name} failed: {data}"
                return
            for chunk in reader.push(data):
                yield chunk

    def _read(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        item: bytes | Exception | None = None
        try:
            while not self._stop.is_set():
                data = self._read_bytes(PCM_READ_BYTES)
                if not data:
                    break
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
        except Exception as exc:  # noqa: BLE001 - handed to the loop as the reason the source ended
            item = exc
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except RuntimeError:
            pass  # the loop is gone; nobody is listening


class StdinSource(_ThreadedReader):
    """Raw s16le 16 kHz mono PCM on stdin (``ffmpeg -i x -f s16le -ac 1 -ar 16000 - | ser-live --input -``).

    The process's own stdin is read with ``os.read`` on its file descriptor, not through
    ``sys.stdin.buffer``: a daemon thread blocked inside a buffered read holds its lock, and the
    interpreter aborts when it exits under it (Ctrl-C while waiting for input)."""

    def __init__(self, fh: BinaryIO | None = None, name: str = "stdin") -> None:
        import sys

        if fh is not None:
            read = getattr(fh, "read1", fh.read)
        elif sys.stdin is None or sys.stdin.closed:
            raise SourceError("--input - reads audio from stdin, but stdin is closed")
        else:
            fd = sys.stdin.fileno()
            read = lambda n: os.read(fd, n)  # noqa: E731
        super().__init__(name, read)


REMOTE_BUFFER_S = 2.0
"""Audio a remote stream may hold before :meth:`RemoteSource.feed` waits (plus the message being fed)."""

_V1_DETAILS = {"": "client_ended", "stopped": "shutdown"}


class RemoteSource(Source):
    """s16le 16 kHz mono bytes a WebSocket client sends. The buffer is bounded in seconds of audio:
    ``feed`` returns only once it has room, so a sender that runs ahead stops being read (TCP
    back-pressure on its connection alone). ``peak_buffered_bytes`` records the most it ever held."""

    def __init__(self, name: str, max_buffer_s: float = REMOTE_BUFFER_S) -> None:
        super().__init__(name)
        self.detail = "the client ended the stream"
        self.reason = "client_ended"
        self.max_buffer_bytes = int(max_buffer_s * SAMPLE_RATE_HZ) * 2
        self._parts: deque[bytes] = deque()
        self.buffered_bytes = self.peak_buffered_bytes = 0
        self._data, self._room = asyncio.Event(), asyncio.Event()
        self._room.set()
        self._ended = False
        self._reader = Pcm16Reader()

    async def feed(self, data: bytes) -> None:
        """Buffer ``data``; waits while the buffer is full. After the stream ended, data is ignored."""
        while self.buffered_bytes >= self.max_buffer_bytes and not self._ended:
            self._room.clear()
            await self._room.wait()
        if self._ended or not data:
            return
        self._parts.append(bytes(data))
        self.buffered_bytes += len(data)
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)
        self._data.set()

    def end(self, reason: str = "client_ended", detail: str | None = None) -> None:
        """End the stream after what is buffered (``reason``: one of the stream event's reasons)."""
        if reason not in END_REASONS:  # a version-1 caller passed only the human sentence
            reason, detail = _V1_DETAILS.get(reason, "client_closed"), reason or detail
        if not self._ended:
            self.reason, self.detail = reason, detail or self.detail
        self._ended = True
        self._data.set()
        self._room.set()

    def close(self) -> None:
        """The engine is stopping: take no more audio, drop what is buffered (the open segment is still
        closed and predicted)."""
        self._parts.clear()
        self.buffered_bytes = 0
        self.end("shutdown", "the server is shutting down")

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        while True:
            while not self._parts and not self._ended:
                self._data.clear()
                await self._data.wait()
            if not self._parts:
                return
            data = self._parts.popleft()
            self.buffered_bytes -= len(data)
            if self.buffered_bytes < self.max_buffer_bytes:
                self._room.set()
            for chunk in self._reader.push(data):
                yield chunk
