"""The hysteresis segmenter: VAD frames in, segment openings and closed :class:`Segment` objects out."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .chunks import SAMPLE_RATE_HZ, Segment, VadFrame
from .config import SegmenterConfig

TRIM_BLOCK_SAMPLES = 160
"""End trimming works on 10 ms blocks, whatever the VAD frame size."""


@dataclass(frozen=True, slots=True)
class SegmentOpened:
    """Speech started at ``start_sample``; the segmenter decided so at ``decided_sample``."""

    id: int
    start_sample: int
    decided_sample: int


def _samples(ms: float) -> int:
    return int(round(ms * SAMPLE_RATE_HZ / 1000))


class Segmenter:
    """Opens a segment when most of a short window is voiced, closes it after a run of non-speech.

    Keeps ``pre_roll_ms`` of audio from before the opening and ``hang_over_ms`` after the last speech for
    the model, drops segments with too little speech and force-closes ones that reach ``max_segment_ms``,
    so memory and latency stay bounded on non-stop speech. Ids count up from 0 per stream.
    """

    def __init__(self, config: SegmenterConfig = SegmenterConfig()) -> None:
        self.config = config
        self._window = max(1, config.start_window_ms // config.frame_ms)
        self._needed = int(np.ceil(config.start_ratio * self._window))
        self._pre_roll = _samples(config.pre_roll_ms)
        self._history_frames = self._window + int(np.ceil(config.pre_roll_ms / config.frame_ms)) + 1
        self.reset()

    def reset(self) -> None:
        self._next_id = 0
        self._recent: deque[VadFrame] = deque(maxlen=self._history_frames)
        self._voiced: deque[bool] = deque(maxlen=self._window)
        self._open: SegmentOpened | None = None
        self._frames: list[VadFrame] = []
        self._last_voiced_end = 0
        self._silence = 0
        self._released = 0  # audio before this sample already went to an earlier segment
        self._position = 0

    @property
    def in_speech(self) -> bool:
        return self._open is not None

    @property
    def position(self) -> int:
        """The end sample of the last frame pushed."""
        return self._position

    @property
    def open_segment(self) -> SegmentOpened | None:
        return self._open

    def push(self, frame: VadFrame) -> list[SegmentOpened | Segment]:
        self._position = frame.end_sample
        if self._open is None:
            return self._idle(frame)
        self._frames.append(frame)
        if frame.speech:
            self._last_voiced_end, self._silence = frame.end_sample, 0
        else:
            self._silence += len(frame.samples)
        if self._silence >= _samples(self.config.end_silence_ms):
            return [self._close("silence", frame.end_sample)]
        if frame.end_sample - self._frames[0].start_sample >= _samples(self.config.max_segment_ms):
            return [self._close("max_duration", frame.end_sample)]
        return []

    def flush(self) -> list[Segment]:
        """End of input: close the open segment, if any."""
        if self._open is None:
            return []
        return [self._close("end_of_input", self._position)]

    def current_audio(self) -> tuple[int, np.ndarray] | None:
        """The open segment's audio so far (pre-roll included) and the sample it starts at."""
        if self._open is None:
            return None
        return self._frames[0].start_sample, np.concatenate([f.samples for f in self._frames])

    def _idle(self, frame: VadFrame) -> list[SegmentOpened]:
        self._recent.append(frame)
        self._voiced.append(frame.speech)
        if not frame.speech or sum(self._voiced) < self._needed:
            return []
        window = list(self._recent)[-len(self._voiced):]
        start = next(f.start_sample for f in window if f.speech)
        audio_from = max(start - self._pre_roll, self._released)
        self._frames = [f for f in self._recent if f.end_sample > audio_from]
        if self._frames and self._frames[0].start_sample < audio_from:
            first = self._frames[0]
            cut = audio_from - first.start_sample
            self._frames[0] = VadFrame(audio_from, first.samples[cut:], first.speech)
        self._open = SegmentOpened(self._next_id, start, frame.end_sample)
        self._next_id += 1
        self._last_voiced_end, self._silence = frame.end_sample, 0
        return [self._open]

    def _close(self, reason: str, position: int) -> Segment:
        opened, frames = self._open, self._frames
        audio_start = frames[0].start_sample
        audio = np.concatenate([f.samples for f in frames])
        speech_end = self._last_voiced_end if reason != "max_duration" else position
        audio_end = min(speech_end + _samples(self.config.hang_over_ms), position)
        audio = audio[: audio_end - audio_start]
        if reason != "max_duration":
            speech_end = self._trimmed_end(audio, audio_start, opened.start_sample, speech_end)
        dropped = speech_end - opened.start_sample < _samples(self.config.min_speech_ms)
        self._open, self._frames = None, []
        self._voiced.clear()
        self._recent = deque((f for f in self._recent if f.start_sample >= audio_end), maxlen=self._history_frames)
        self._released = audio_end
        return Segment(opened.id, opened.start_sample, speech_end, audio_start, audio, reason, dropped)

    def _trimmed_end(self, audio: np.ndarray, audio_start: int, speech_start: int, speech_end: int) -> int:
        """Pull ``speech_end`` back over trailing 10 ms blocks far quieter than the loudest one."""
        lo, hi = speech_start - audio_start, speech_end - audio_start
        n_blocks = (hi - lo) // TRIM_BLOCK_SAMPLES
        if n_blocks < 2:
            return speech_end
        blocks = audio[hi - n_blocks * TRIM_BLOCK_SAMPLES: hi].reshape(n_blocks, TRIM_BLOCK_SAMPLES)
        rms = np.sqrt(np.mean(np.square(blocks, dtype=np.float64), axis=1))
        loud = rms >= rms.max() * 10 ** (self.config.end_trim_db / 20)
        trailing_quiet = int(np.argmax(loud[::-1]))
        max_trim = _samples(self.config.end_silence_ms) // TRIM_BLOCK_SAMPLES
        return speech_end - min(trailing_quiet, max_trim) * TRIM_BLOCK_SAMPLES
