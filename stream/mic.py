"""The microphone source. sounddevice (and PortAudio) are imported only when a microphone is asked for.

The PortAudio callback only copies the block and hands it to the event loop with
``loop.call_soon_threadsafe``; the loop puts it in a bounded queue, and a block that does not fit is
counted as dropped (the sample clock still advances over it), never waited for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import numpy as np

from .chunks import AudioChunk, StreamResampler
from .sources import Source, SourceError

log = logging.getLogger(__name__)

NO_PORTAUDIO = ("cannot use the microphone: the PortAudio library is not installed "
                "(Debian/Ubuntu: apt install libportaudio2); use --input FILE or --input - instead")


def import_sounddevice():
    """sounddevice, or :class:`SourceError` with one sentence when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise SourceError(NO_PORTAUDIO) from exc
    except ImportError as exc:
        raise SourceError("cannot use the microphone: the sounddevice package is not installed") from exc
    return sounddevice


def _device_arg(device: str | int | None) -> str | int | None:
    if isinstance(device, str) and device.strip().isdigit():
        return int(device)
    return device or None


class MicSource(Source):
    """A sounddevice input stream at the device's native rate and channels, downmixed to 16 kHz mono.

    ``device`` is a name (substring), an index, or None for the default input. ``sd`` replaces the
    sounddevice module (tests pass a fake). The source ends, with a sentence in ``detail``, when PortAudio
    stops the stream or no audio arrives for ``stall_s`` (a device unplugged mid-run).
    """

    live = True
    paced = True

    def __init__(self, device: str | int | None = None, block_ms: int = 20, queue_blocks: int = 50,
                 stall_s: float = 2.0, sd=None) -> None:
        super().__init__("mic")
        self.sd = sd if sd is not None else import_sounddevice()
        self.device, self.block_ms, self.stall_s = _device_arg(device), block_ms, stall_s
        self.queue_blocks = queue_blocks
        self.overflows = 0
        try:
            info = self.sd.query_devices(self.device, kind="input")
        except (ValueError, self.sd.PortAudioError) as exc:
            which = f"matches --mic {device}" if self.device is not None else "is available"
            raise SourceError(f"no audio input device {which}; use --input FILE or --input - instead") from exc
        if int(info.get("max_input_channels", 0)) < 1:
            raise SourceError(f"audio device {info.get('name', device)!r} has no input channels")
        self.device_name = str(info.get("name", "default"))
        self.sample_rate_hz = int(info["default_samplerate"])
        self.channels = min(int(info["max_input_channels"]), 2)
        self._stream = None
        self._queue: asyncio.Queue | None = None
        self._pending_gap = 0
        self._finished = False

    def close(self) -> None:
        if not self.failed:
            self.detail = "stopped"
        if self._queue is not None:  # wake chunks() now rather than after stall_s
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                pass  # it drains the queue first, then times out
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None

    def _on_block(self, block: np.ndarray, status) -> None:
        if status:
            self.overflows += 1
        try:
            self._queue.put_nowait((block, self._pending_gap))
            self._pending_gap = 0
        except asyncio.QueueFull:
            self._pending_gap += len(block)
            self.dropped_samples += round(len(block) * 16_000 / self.sample_rate_hz)

    def _on_finished(self) -> None:
        self._finished = True
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            pass  # the consumer drains the queue, times out and sees _finished

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        def callback(indata, frames, time_info, status):  # PortAudio's thread: copy and hand over, nothing else
            loop.call_soon_threadsafe(self._on_block, indata.copy(), status)

        def finished():
            loop.call_soon_threadsafe(self._on_finished)

        self._stream = self.sd.InputStream(
            samplerate=self.sample_rate_hz, blocksize=self.sample_rate_hz * self.block_ms // 1000,
            device=self.device, channels=self.channels, dtype="float32", callback=callback,
            finished_callback=finished,
        )
        self._stream.start()

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.queue_blocks)
        resampler = StreamResampler(self.sample_rate_hz, self.channels)
        try:
            self._open(loop)
        except Exception as exc:  # noqa: BLE001 - PortAudio raises several types for a busy or gone device
            self.failed, self.detail = True, f"cannot open the microphone {self.device_name!r}: {exc}"
            return
        log.info("listening on %s at %d Hz, %d channel(s)", self.device_name, self.sample_rate_hz, self.channels)
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), self.stall_s)
            except TimeoutError:
                item = None
            if item is None:
                if self.detail != "stopped":
                    self.failed = True
                    self.detail = f"the microphone {self.device_name!r} stopped sending audio (unplugged?)"
                for chunk in resampler.flush():  # the resampler's last milliseconds, as a file's end gives them
                    yield chunk
                return
            block, gap = item
            if gap:
                resampler.skip(gap)
            for chunk in resampler.push(block):
                yield chunk
