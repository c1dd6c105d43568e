"""Frame-by-frame WebRTC VAD: any chunk size in, exact 10/20/30 ms :class:`VadFrame` objects out.

WebRTC VAD adapts its noise and speech models to everything it has heard; :meth:`VadStage.reset_state`
starts a fresh detector, which the pipeline does at every segment close and after ``VAD_RESET_S`` without
one, so a stream's decisions depend on its recent audio only (hour two segments like minute one)."""

from __future__ import annotations

from collections import deque
from typing import Iterator

import numpy as np

from serlive.model.frames import frame_samples, to_pcm16

from .chunks import SAMPLE_RATE_HZ, AudioChunk, Rebuffer, VadFrame


WARM_S = 3
"""Seconds of recent audio a fresh detector hears before it decides again (:meth:`VadStage.reset_state`)."""


class VadStage:
    """Rebuffers chunks into ``frame_ms`` frames and runs WebRTC VAD (aggressiveness ``mode``) once per frame."""

    def __init__(self, mode: int = 2, frame_ms: int = 30) -> None:
        import webrtcvad

        self.frame_samples, self.mode = frame_samples(frame_ms), mode
        self._vad = webrtcvad.Vad(mode)
        self._history: deque[bytes] = deque(maxlen=max(1, WARM_S * 1000 // frame_ms))
        self._rebuffer = Rebuffer(self.frame_samples)

    def push(self, chunk: AudioChunk) -> Iterator[VadFrame]:
        """The frames ``chunk`` completes, each decided only when the caller reaches it, so a
        :meth:`reset_state` between two frames applies from the next one, whatever the chunk size."""
        return (self._decide(c) for c in self._rebuffer.push(chunk))

    def reset_state(self) -> None:
        """A fresh detector, warmed on the last ``WARM_S`` of audio (a cold one hears the first frames
        after it as speech); the rebuffered audio is kept."""
        import webrtcvad

        self._vad = webrtcvad.Vad(self.mode)
        for pcm in self._history:
            self._vad.is_speech(pcm, SAMPLE_RATE_HZ)

    def flush(self) -> list[VadFrame]:
        """The last, short frame: the VAD hears it zero-padded, the frame keeps its true length."""
        return [self._decide(c) for c in self._rebuffer.flush()]

    def reset(self) -> None:
        self._rebuffer.reset()
        self._history.clear()
        self.reset_state()

    def _decide(self, chunk: AudioChunk) -> VadFrame:
        samples = chunk.samples
        if not np.isfinite(samples).all():  # a NaN cast to int16 is undefined (and warns); the model refuses it later
            samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        pcm = to_pcm16(samples)
        if len(pcm) < self.frame_samples:
            pcm = np.pad(pcm, (0, self.frame_samples - len(pcm)))
        data = pcm.tobytes()
        self._history.append(data)
        speech = self._vad.is_speech(data, SAMPLE_RATE_HZ)
        return VadFrame(chunk.start_sample, chunk.samples, bool(speech))
