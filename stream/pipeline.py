"""One stream's stages: VAD -> segmenter -> inference requests, plus level meter and segment events.

:class:`StreamPipeline` is free of I/O and of the model: ``push(chunk, arrival_s)`` returns the events to
emit and the :class:`InferenceRequest` objects to run, so the same pipeline runs live, as fast as possible
and in tests. ``arrival_s`` (a monotonic wall time) is kept only to measure latency.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .chunks import SAMPLE_RATE_HZ, AudioChunk, Segment, dbfs
from .config import EngineConfig
from .events import Event, Level, PredictionEvent, SegmentEnd, SegmentStart, State
from .load import Pressure
from .segmenter import Segmenter, SegmentOpened
from .state import RollingState
from .vad import VadStage

VAD_RESET_S = 60
"""Outside speech, the VAD starts afresh at least this often (on the sample clock), besides at every
segment close."""


@dataclass(frozen=True, slots=True, eq=False)
class InferenceRequest:
    """Predict ``audio`` for ``[start_sample, end_sample)`` of segment ``segment``; ``ref_time_s`` is when
    the audio up to ``end_sample`` arrived (latency is measured from it), ``decided_s`` when the
    request was made."""

    stream: str
    segment: int
    start_sample: int
    end_sample: int
    audio: np.ndarray
    final: bool
    ref_time_s: float
    decided_s: float


Output = Event | InferenceRequest


class StreamPipeline:
    """VAD, segmenter, interim scheduling and the level meter for stream ``name``. ``pressure``: the engine's,
    shared by its streams (None: this stream's own, at 1)."""

    def __init__(self, name: str, labels: tuple[str, ...], config: EngineConfig = EngineConfig(),
                 pressure: Pressure | None = None) -> None:
        self.name, self.config = name, config
        seg = config.segmenter
        self.vad = VadStage(seg.vad_mode, seg.frame_ms)
        self.segmenter = Segmenter(seg)
        self.state = RollingState(name, labels, config.state)
        self._interim = config.inference.interim_ms * SAMPLE_RATE_HZ // 1000
        self.interim_scale = 1  # the engine spaces this stream's interims further apart when they are superseded
        self.pressure = pressure or Pressure()  # ... and every stream's when finals are slow
        self._min_speech = seg.min_speech_ms * SAMPLE_RATE_HZ // 1000
        self._level_every = config.level_interval_ms * SAMPLE_RATE_HZ // 1000
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)
        self.position = 0
        self._next_interim = 0
        self._level_parts: list[np.ndarray] = []
        self._level_held = 0
        self._vad_fresh_at = 0  # sample at which the VAD state was last reset
        self._owed: set[int] = set()  # kept segments whose final has not been applied yet

    def push(self, chunk: AudioChunk, arrival_s: float) -> list[Output]:
        self._arrivals.append((chunk.end_sample, arrival_s))
        self.position = chunk.end_sample
        out: list[Output] = []
        for frame in self.vad.push(chunk):
            for item in self.segmenter.push(frame):
                out.extend(self._on_segmenter(item, arrival_s))
            out.extend(self._maybe_interim(frame.end_sample, arrival_s))
            if not self.segmenter.in_speech and frame.end_sample - self._vad_fresh_at >= VAD_RESET_S * SAMPLE_RATE_HZ:
                self._reset_vad(frame.end_sample)
        out.extend(self._levels(chunk))
        out.extend(self._expired())
        return out

    def apply_final(self, final: PredictionEvent | None, segment: int) -> list[State]:
        """Segment ``segment``'s final (None: it failed) into the rolling state, in segment order. The
        states that come out depend on the sample clock only: a final that arrives late (audio faster
        than real time) gives the same sequence, resets included, as one that arrived at once."""
        self._owed.discard(segment)
        out: list[State] = []
        if final is not None:
            last = self.state.last_end_sample
            if last is not None and final.start_sample - last > self.state.reset_samples:
                self.state.reset()
                out.append(self.state.state())
            out.append(self.state.update(final))
        return out + self._expired()

    def _expired(self) -> list[State]:
        if self.segmenter.in_speech or self._owed:
            return []  # a final still on its way may yet be the newest one
        expired = self.state.expire(self.position)
        return [] if expired is None else [expired]

    def _reset_vad(self, sample: int) -> None:
        self.vad.reset_state()
        self._vad_fresh_at = sample

    def flush(self, arrival_s: float) -> list[Output]:
        """End of input: the last partial frame, then close any open segment."""
        out: list[Output] = []
        for frame in self.vad.flush():
            for item in self.segmenter.push(frame):
                out.extend(self._on_segmenter(item, arrival_s))
        for segment in self.segmenter.flush():
            out.extend(self._on_segmenter(segment, arrival_s))
        return out

    def arrival_of(self, sample: int) -> float:
        """When the chunk holding ``sample`` arrived (the latest chunk, if ``sample`` is ahead)."""
        found = self._arrivals[-1][1] if self._arrivals else 0.0
        for end, arrival in reversed(self._arrivals):
            if end < sample:
                break
            found = arrival
        return found

    def _on_segmenter(self, item: SegmentOpened | Segment, arrival_s: float) -> list[Output]:
        if isinstance(item, SegmentOpened):
            self._next_interim = item.start_sample + self._interim
            return [SegmentStart(self.name, item.id, item.start_sample, item.decided_sample)]
        self._reset_vad(self.segmenter.position)
        out: list[Output] = [SegmentEnd(self.name, item.id, item.start_sample, item.end_sample, item.reason, item.dropped)]
        if not item.dropped:
            self._owed.add(item.id)
            out.append(InferenceRequest(self.name, item.id, item.start_sample, item.end_sample, item.audio,
                                        True, self.arrival_of(item.end_sample), arrival_s))
        return out

    def _maybe_interim(self, position: int, arrival_s: float) -> list[InferenceRequest]:
        opened = self.segmenter.open_segment
        if opened is None or not self._interim or position < self._next_interim:
            return []
        period = self._interim * max(self.interim_scale, self.pressure.level)
        self._next_interim += period * max(1, (position - self._next_interim) // period + 1)
        if position - opened.start_sample < self._min_speech:
            return []
        audio_start, audio = self.segmenter.current_audio()
        return [InferenceRequest(self.name, opened.id, opened.start_sample, position, audio, False, arrival_s, arrival_s)]

    def _levels(self, chunk: AudioChunk) -> list[Level]:
        self._level_parts.append(chunk.samples)
        self._level_held += len(chunk.samples)
        if self._level_held < self._level_every:
            return []
        window = np.concatenate(self._level_parts)
        self._level_parts, self._level_held = [], 0
        return [Level(self.name, chunk.end_sample, round(dbfs(window), 1), self.segmenter.in_speech)]
