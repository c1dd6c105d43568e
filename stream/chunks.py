"""What flows between the stages: audio chunks, VAD frames and segments, all on one integer sample clock.

Every timestamp is a sample index at 16 kHz on the stream's capture clock (sample 0 is the first sample the
source produced); seconds are derived. Also here: the two small stages every source shares, the one
conversion to 16 kHz mono on the int16 grid (:class:`StreamResampler`) and a rebufferer that cuts any block
size into exact frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 16_000
"""The engine's one sample rate; every source resamples to it."""

PCM16_FULL_SCALE = 32768.0
"""int16 sample k stands for k / 32768 (the s16le convention of :func:`pcm16_to_float`)."""


@dataclass(frozen=True, slots=True, eq=False)
class AudioChunk:
    """``samples`` (n,) float32 mono 16 kHz, the first of which is sample ``start_sample`` of the stream."""

    start_sample: int
    samples: np.ndarray

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)


@dataclass(frozen=True, slots=True, eq=False)
class VadFrame:
    """One WebRTC VAD frame (10, 20 or 30 ms) and its decision; the last frame of a stream may be short."""

    start_sample: int
    samples: np.ndarray
    speech: bool

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)


@dataclass(frozen=True, slots=True, eq=False)
class Segment:
    """A closed stretch of speech.

    ``start_sample`` / ``end_sample`` bound the speech the VAD heard (what events report); ``audio`` is what
    the model sees: the speech plus pre-roll and hang-over, starting at ``audio_start_sample``.
    ``reason`` is "silence", "max_duration" or "end_of_input"; ``dropped`` when shorter than the minimum.
    """

    id: int
    start_sample: int
    end_sample: int
    audio_start_sample: int
    audio: np.ndarray
    reason: str
    dropped: bool

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / SAMPLE_RATE_HZ


class Rebuffer:
    """Cuts a stream of arbitrary-length chunks into consecutive chunks of exactly ``size`` samples."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reset()

    def reset(self) -> None:
        self._parts: list[np.ndarray] = []
        self._held = 0
        self._next_start: int | None = None

    def push(self, chunk: AudioChunk) -> list[AudioChunk]:
        if self._next_start is None or self._held == 0:
            self._next_start = chunk.start_sample
        self._parts.append(chunk.samples)
        self._held += len(chunk.samples)
        if self._held < self.size:
            return []
        data = np.concatenate(self._parts)
        n_full = len(data) // self.size
        out = [AudioChunk(self._next_start + i * self.size, data[i * self.size:(i + 1) * self.size])
               for i in range(n_full)]
        rest = data[n_full * self.size:]
        self._parts, self._held = ([rest] if len(rest) else []), len(rest)
        self._next_start += n_full * self.size
        return out

    def flush(self) -> list[AudioChunk]:
        """The short remainder, if any."""
        if not self._held:
            return []
        out = [AudioChunk(self._next_start, np.concatenate(self._parts))]
        self.reset()
        return out


class StreamResampler:
    """The one conversion every source's audio goes through (file, stdin, microphone, WebSocket, arrays):
    downmix ``(frames, channels)`` blocks, resample to 16 kHz, then :func:`quantise` onto the int16 grid that
    s16le carries, stamping the output clock. Whatever path a recording takes, the VAD and the model get the
    same samples (soxr's streaming output does not depend on how the input was cut into blocks); before, a
    file's float output reached the VAD unrounded and one int16 step moved its first decisions."""

    def __init__(self, in_rate_hz: int, channels: int = 1) -> None:
        self.in_rate_hz, self.channels = int(in_rate_hz), channels
        self.reset()

    def reset(self, next_sample: int = 0) -> None:
        """Start again (e.g. after a gap), continuing the output clock at ``next_sample``."""
        self._next = next_sample
        self._soxr = None
        if self.in_rate_hz != SAMPLE_RATE_HZ:
            import soxr

            self._soxr = soxr.ResampleStream(self.in_rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32")

    @property
    def next_sample(self) -> int:
        return self._next

    def skip(self, n_in_frames: int) -> None:
        """Input frames were lost (overflow): keep the clock true to capture time."""
        self.reset(self._next + round(n_in_frames * SAMPLE_RATE_HZ / self.in_rate_hz))

    def push(self, block: np.ndarray, last: bool = False) -> list[AudioChunk]:
        mono = downmix(block)
        if self._soxr is not None:
            mono = self._soxr.resample_chunk(mono, last=last)
        if not len(mono):
            return []
        chunk = AudioChunk(self._next, quantise(mono))
        self._next = chunk.end_sample
        return [chunk]

    def flush(self) -> list[AudioChunk]:
        return self.push(np.zeros(0, np.float32), last=True) if self._soxr is not None else []


def downmix(block: np.ndarray) -> np.ndarray:
    """``(frames,)`` or ``(frames, channels)`` float or int samples -> ``(frames,)`` float32 mono."""
    block = np.asarray(block)
    if block.dtype.kind == "i":
        block = block.astype(np.float32) / float(-np.iinfo(block.dtype).min)
    if block.ndim == 2:
        block = block.mean(axis=1)
    return block.astype(np.float32, copy=False)


def float_to_s16(samples: np.ndarray) -> np.ndarray:
    """Float samples -> the int16 s16le carries, by the one rule every source uses: the nearest step of
    1/32768 (ties to even), clipped to [-32768, 32767]; NaN becomes 0 and +-inf full scale. Samples already
    on the grid come back unchanged (``float_to_s16(pcm16_to_float(b)) == b``). (The VAD and the model's
    speech mask turn floats into int16 with ``serlive.model.frames.to_pcm16``, shared with training; it
    sees the same samples from every path.)"""
    x = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.round(x * PCM16_FULL_SCALE), -32768, 32767).astype(np.int16)


def quantise(samples: np.ndarray) -> np.ndarray:
    """``(n,)`` float32 -> the same on the int16 grid (what s16le carries): :func:`float_to_s16`'s rule, back in
    float32, computed in place (it runs on every 20 ms block of every stream). Non-finite samples are kept as
    they are: the model refuses their segment with ``bad_audio`` rather than hearing silence."""
    x = np.asarray(samples, dtype=np.float32)
    if not np.isfinite(x).all():
        out = float_to_s16(x).astype(np.float32) / PCM16_FULL_SCALE
        bad = ~np.isfinite(x)
        out[bad] = x[bad]
        return out
    out = np.multiply(x, np.float32(PCM16_FULL_SCALE))
    np.rint(out, out=out)  # ties to even, as float_to_s16's np.round
    np.minimum(out, np.float32(32767.0), out=out)
    np.maximum(out, np.float32(-32768.0), out=out)
    out /= np.float32(PCM16_FULL_SCALE)
    return out


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian s16 PCM bytes (an odd trailing byte is ignored) -> float32 in [-1, 1)."""
    n = len(data) // 2
    return np.frombuffer(data[: 2 * n], dtype="<i2").astype(np.float32) / PCM16_FULL_SCALE


def dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale, floored at -100 (one dot product: it runs on every level window
    of every stream)."""
    if not len(samples):
        return -100.0
    x = np.asarray(samples, dtype=np.float64)
    mean_square = float(x.dot(x)) / len(x)
    if not math.isfinite(mean_square):  # NaN/inf input: the model refuses it; the meter shows full scale
        x = np.nan_to_num(x, nan=1.0, posinf=1.0, neginf=-1.0)
        mean_square = float(x.dot(x)) / len(x)
    return max(-100.0, 20.0 * math.log10(math.sqrt(mean_square) + 1e-10))
