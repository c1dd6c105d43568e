"""Frame-by-frame WebRTC VAD: any chunk size in, exact 10/20/30 ms :class:`VadFrame` objects out."""

from __future__ import annotations

import numpy as np

from serlive.model.frames import frame_samples, to_pcm16

from .chunks import SAMPLE_RATE_HZ, AudioChunk, Rebuffer, VadFrame


class VadStage:
    """Rebuffers chunks into ``frame_ms`` frames and runs WebRTC VAD (aggressiveness ``mode``) once per frame."""

    def __init__(self, mode: int = 2, frame_ms: int = 30) -> None:
        import webrtcvad

        self.frame_samples = frame_samples(frame_ms)
        self._vad = webrtcvad.Vad(mode)
        self._rebuffer = Rebuffer(self.frame_samples)

    def push(self, chunk: AudioChunk) -> list[VadFrame]:
        return [self._decide(c) for c in self._rebuffer.push(chunk)]

    def flush(self) -> list[VadFrame]:
        """The last, short frame: the VAD hears it zero-padded, the frame keeps its true length."""
        return [self._decide(c) for c in self._rebuffer.flush()]

    def reset(self) -> None:
        self._rebuffer.reset()

    def _decide(self, chunk: AudioChunk) -> VadFrame:
        samples = chunk.samples
        if not np.isfinite(samples).all():  # a NaN cast to int16 is undefined (and warns); the model refuses it later
            samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        pcm = to_pcm16(samples)
        if len(pcm) < self.frame_samples:
            pcm = np.pad(pcm, (0, self.frame_samples - len(pcm)))
        speech = self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE_HZ)
        return VadFrame(chunk.start_sample, chunk.samples, bool(speech))
