"""Remote audio formats: what a WebSocket sender may declare in ``start_stream``, and the converter from
that format to the s16le 16 kHz mono bytes :class:`~serlive.stream.sources.RemoteSource` takes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .chunks import SAMPLE_RATE_HZ, StreamResampler, float_to_s16

ENCODINGS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
"""Sample encodings a sender may declare, and their numpy dtypes."""

MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 48_000
"""Declared sample rates outside this range are refused (``bad_format``)."""

MAX_CHANNELS = 2


class FormatError(ValueError):
    """A declared format the server does not take; the message is one sentence for the client."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    sample_rate_hz: int = SAMPLE_RATE_HZ
    encoding: str = "s16le"
    channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding].itemsize * self.channels


DEFAULT_FORMAT = AudioFormat()


def parse_format(data) -> AudioFormat:
    """``start_stream``'s ``format`` object (None: the default) -> :class:`AudioFormat`, or :class:`FormatError`."""
    if data is None:
        return DEFAULT_FORMAT
    if not isinstance(data, dict):
        raise FormatError("format must be an object with sample_rate_hz, encoding and channels")
    unknown = set(data) - {"sample_rate_hz", "encoding", "channels"}
    if unknown:
        raise FormatError(f"unknown format field {sorted(unknown)[0]!r}")
    rate = data.get("sample_rate_hz", SAMPLE_RATE_HZ)
    encoding = data.get("encoding", "s16le")
    channels = data.get("channels", 1)
    if type(rate) is not int or not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise FormatError(f"sample_rate_hz must be a whole number from {MIN_RATE_HZ} to {MAX_RATE_HZ}")
    if encoding not in ENCODINGS:
        raise FormatError(f"encoding must be one of {', '.join(ENCODINGS)}")
    if type(channels) is not int or not 1 <= channels <= MAX_CHANNELS:
        raise FormatError(f"channels must be 1 or {MAX_CHANNELS}")
    return AudioFormat(rate, encoding, channels)


class PcmConverter:
    """Bytes in the declared format -> s16le 16 kHz mono bytes, by the same :class:`StreamResampler` a file
    of that format goes through (so both give the same samples). Partial frames are carried into the next
    message; non-finite float samples become silence and are counted in ``nonfinite``."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.nonfinite = 0
        self._carry = b""
        self._resampler = StreamResampler(fmt.sample_rate_hz, fmt.channels)

    def convert(self, data: bytes) -> bytes:
        data, self._carry = self._carry + bytes(data), b""
        usable = len(data) - len(data) % self.format.frame_bytes
        data, self._carry = data[:usable], data[usable:]
        if self.format == DEFAULT_FORMAT:
            return data
        return self._push(np.frombuffer(data, ENCODINGS[self.format.encoding]), last=False)

    def flush(self) -> bytes:
        """What the resampler still holds (at the end of the stream)."""
        if self.format == DEFAULT_FORMAT:
            return b""
        return self._push(np.zeros(0, ENCODINGS[self.format.encoding]), last=True)

    def _push(self, samples: np.ndarray, last: bool) -> bytes:
        if samples.dtype.kind == "f":
            bad = ~np.isfinite(samples)
            if bad.any():
                self.nonfinite += int(bad.sum())
                samples = np.where(bad, 0.0, samples)
        block = samples.reshape(-1, self.format.channels)  # (frames, channels)
        out = [c.samples for c in self._resampler.push(block, last=last)]
        return float_to_s16(np.concatenate(out)).astype("<i2").tobytes() if out else b""
