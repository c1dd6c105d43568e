"""Audio sources behind one async interface: ``async for chunk in source.chunks()``.

Every source yields 16 kHz mono :class:`AudioChunk` objects stamped on its own sample clock, counts audio
it had to drop in ``dropped_samples``, and says why it ended in ``detail``. The microphone lives in
:mod:`serlive.stream.mic` so that a file-only run never imports sounddevice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import AsyncIterator, BinaryIO

import numpy as np

from .chunks import SAMPLE_RATE_HZ, AudioChunk, StreamResampler, pcm16_to_float

log = logging.getLogger(__name__)

FILE_BLOCK_MS = 20
"""Files are read and paced in blocks of this many milliseconds (a typical microphone block)."""

PCM_READ_BYTES = 3200
"""Bytes per read from stdin: 100 ms of s16le at 16 kHz."""


class SourceError(Exception):
    """A source that cannot start; the message is one sentence for the user."""


class Source:
    """Base class: ``name`` is the stream id; ``live`` sources (microphones) run until stopped."""

    live = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.dropped_samples = 0
        self.detail = "end of input"
        self.failed = False
        self.reason: str | None = None  # why it ended (events.END_REASONS); None: decided by the engine

    def chunks(self) -> AsyncIterator[AudioChunk]:
        raise NotImplementedError

    def close(self) -> None:
        """Ask the source to stop; ``chunks()`` then ends soon."""


async def _pace(loop: asyncio.AbstractEventLoop, t0: float, end_sample: int, realtime: bool) -> None:
    if realtime:
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
        self.realtime, self.block_ms = realtime, block_ms
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
                await _pace(loop, t0, chunk.end_sample, self.realtime)


class FileSource(Source):
    """A wav / flac / ogg file at any rate and channel count, read in blocks; opening checks it."""

    def __init__(self, path: str | Path, realtime: bool = True, block_ms: int = FILE_BLOCK_MS,
                 name: str | None = None) -> None:
        import soundfile

        self.path = Path(path)
        super().__init__(name or self.path.name)
        self.realtime, self.block_ms = realtime, block_ms
        self._closed = False
        if not self.path.is_file():
            raise SourceError(f"input file {self.path} does not exist")
        try:
            info = soundfile.info(str(self.path))
        except Exception as exc:  # noqa: BLE001 - libsndfile says "not a known format" in many ways
            raise SourceError(f"input file {self.path} is not audio that ser-live can read (wav, flac, ogg)") from exc
        if info.frames == 0:
            raise SourceError(f"input file {self.path} holds no audio")
        self.sample_rate_hz, self.channels, self.frames = info.samplerate, info.channels, info.frames

    def close(self) -> None:
        self._closed = True

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        import soundfile

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        resampler = StreamResampler(self.sample_rate_hz, self.channels)
        block = max(1, self.sample_rate_hz * self.block_ms // 1000)
        with soundfile.SoundFile(str(self.path)) as fh:
            while not self._closed:
                data = fh.read(block, dtype="float32", always_2d=True)
                last = len(data) < block or fh.tell() >= self.frames
                for chunk in resampler.push(data, last=last):
                    yield chunk
                    await _pace(loop, t0, chunk.end_sample, self.realtime)
                if last:
                    return
        self.detail = "stopped"


class _ThreadedReader(Source):
    """Reads blocking ``fh.read1`` calls on a daemon thread; a full queue holds the reader back
    (stdin is not real-time, so nothing is dropped)."""

    def __init__(self, name: str, fh: BinaryIO, queue_chunks: int = 64) -> None:
        super().__init__(name)
        self.fh, self._queue_chunks = fh, queue_chunks
        self._stop = threading.Event()

    def close(self) -> None:
        self._stop.set()

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(self._queue_chunks)
        threading.Thread(target=self._read, args=(loop, queue), daemon=True, name=f"read-{self.name}").start()
        next_sample, carry = 0, b""
        while True:
            data = await queue.get()
            if data is None or isinstance(data, Exception):
                if isinstance(data, Exception):
                    self.failed, self.detail = True, f"reading {self.name} failed: {data}"
                return
            data, carry = carry + data, b""
            if len(data) % 2:
                data, carry = data[:-1], data[-1:]
            samples = pcm16_to_float(data)
            if len(samples):
                yield AudioChunk(next_sample, samples)
                next_sample += len(samples)

    def _read(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        read = getattr(self.fh, "read1", self.fh.read)
        item: bytes | Exception | None = None
        try:
            while not self._stop.is_set():
                data = read(PCM_READ_BYTES)
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
    """Raw s16le 16 kHz mono PCM on stdin (``ffmpeg -i x -f s16le -ac 1 -ar 16000 - | ser-live --input -``)."""

    def __init__(self, fh: BinaryIO | None = None, name: str = "stdin") -> None:
        import sys

        super().__init__(name, fh if fh is not None else sys.stdin.buffer)


class RemoteSource(Source):
    """s16le 16 kHz mono frames a WebSocket client sends; ``feed`` waits while the queue is full, which
    holds back only that client's connection."""

    def __init__(self, name: str, queue_messages: int = 256) -> None:
        super().__init__(name)
        self._queue: asyncio.Queue = asyncio.Queue(queue_messages)
        self._carry = b""
        self._next_sample = 0

    async def feed(self, data: bytes) -> None:
        await self._queue.put(bytes(data))

    def end(self, reason: str = "client_ended", detail: str = "the client ended the stream") -> None:
        """End the stream (``reason``: a ``stream`` event reason) once what was fed has been consumed."""
        if self.reason is not None:
            return
        self.reason, self.detail = reason, detail
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            asyncio.get_running_loop().create_task(self._queue.put(None))

    def close(self) -> None:
        self.end("shutdown", "the engine stopped")

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        while (data := await self._queue.get()) is not None:
            data, self._carry = self._carry + data, b""
            if len(data) % 2:
                data, self._carry = data[:-1], data[-1:]
            samples = pcm16_to_float(data)
            if len(samples):
                yield AudioChunk(self._next_sample, samples)
                self._next_sample += len(samples)
