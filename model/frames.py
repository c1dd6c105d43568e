"""The one frame grid every encoder in ser-live produces, and the speech mask on it.

Frame ``t`` covers samples ``[320 t, 320 t + 400)`` at 16 kHz: 20 ms stride, 25 ms receptive field,
the grid of wav2vec2 / HuBERT / WavLM's CNN front end. Training, evaluation and streaming all call
:func:`speech_mask`, so the features a model was trained on never differ from the ones it sees live.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE_HZ = 16_000
"""Every waveform is resampled to this rate before it reaches an encoder."""

FRAME_STRIDE_SAMPLES = 320
"""Encoder frame hop: 20 ms at 16 kHz."""

RECEPTIVE_FIELD_SAMPLES = 400
"""Samples one encoder frame sees: 25 ms at 16 kHz."""

VAD_FRAME_MS = (10, 20, 30)
"""Frame durations WebRTC VAD accepts."""

VAD_LEVEL = 0.25
""":func:`speech_mask` scales a waveform so that its 99.9th-percentile magnitude is this before WebRTC VAD
decides. The VAD's decisions depend on level: on RAVDESS, quiet (calm, sad) utterances lost half their
speech frames at their recorded level, so the mask, and everything pooled over it, carried loudness
(emotion in an acted corpus, nothing on a microphone of unknown gain). Only the VAD hears the levelled copy."""

VAD_MIN_LEVEL = 1e-3
"""Levelling never amplifies more than ``VAD_LEVEL / VAD_MIN_LEVEL`` (48 dB), so near-silence stays silence."""


def num_frames(n_samples: int) -> int:
    """Encoder frames for ``n_samples`` samples: ``floor((N - 400) / 320) + 1``, or 0 below 400."""
    if n_samples < RECEPTIVE_FIELD_SAMPLES:
        return 0
    return (n_samples - RECEPTIVE_FIELD_SAMPLES) // FRAME_STRIDE_SAMPLES + 1


def frame_samples(frame_ms: int, sample_rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """Samples in one VAD frame; rejects durations WebRTC VAD does not accept."""
    if frame_ms not in VAD_FRAME_MS:
        raise ValueError(f"VAD frames must be 10, 20 or 30 ms, not {frame_ms} ms")
    return sample_rate_hz * frame_ms // 1000


def vad_flags(waveform: np.ndarray, mode: int = 3, frame_ms: int = 30) -> np.ndarray:
    """Run WebRTC VAD over a 16 kHz mono waveform, one decision per ``frame_ms`` frame.

    The last, partial frame is zero-padded, so ``ceil(N / frame)`` decisions come back (bool).
    """
    import webrtcvad

    if mode not in (0, 1, 2, 3):
        raise ValueError(f"VAD aggressiveness must be 0, 1, 2 or 3, not {mode}")
    hop = frame_samples(frame_ms)
    pcm = to_pcm16(waveform)
    n_vad = -(-len(pcm) // hop)
    pcm = np.pad(pcm, (0, n_vad * hop - len(pcm)))
    vad = webrtcvad.Vad(mode)
    frames = pcm.reshape(n_vad, hop)
    return np.fromiter((vad.is_speech(f.tobytes(), SAMPLE_RATE_HZ) for f in frames), bool, n_vad)


def mask_from_vad(flags: np.ndarray, vad_frame_samples: int, n_samples: int) -> np.ndarray:
    """Map VAD decisions onto the encoder grid: frame t is speech when the VAD frame holding its
    centre sample ``320 t + 200`` is speech. Returns ``num_frames(n_samples)`` booleans."""
    centres = np.arange(num_frames(n_samples)) * FRAME_STRIDE_SAMPLES + RECEPTIVE_FIELD_SAMPLES // 2
    idx = centres // vad_frame_samples
    flags = np.asarray(flags, bool)
    out = np.zeros(len(centres), bool)
    inside = idx < len(flags)
    out[inside] = flags[idx[inside]]
    return out


def level_for_vad(waveform: np.ndarray) -> np.ndarray:
    """A float copy of ``waveform`` at :data:`VAD_LEVEL` (99.9th-percentile magnitude), for the VAD only."""
    x = np.asarray(waveform)
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32, copy=False)
    if len(x) == 0:
        return x
    return x * np.float32(VAD_LEVEL / max(float(np.percentile(np.abs(x), 99.9)), VAD_MIN_LEVEL))


def speech_mask(waveform: np.ndarray, mode: int = 3, frame_ms: int = 30) -> np.ndarray:
    """Speech mask of a 16 kHz mono waveform on the encoder frame grid, shape ``(num_frames(N),)``; the VAD
    hears the waveform levelled (:func:`level_for_vad`), so a gain does not move the mask."""
    waveform = np.asarray(waveform)
    return mask_from_vad(vad_flags(level_for_vad(waveform), mode, frame_ms), frame_samples(frame_ms), len(waveform))


SPAN_WINDOW_FRAMES = 12
""":func:`speech_span` starts (and ends) the span where :data:`SPAN_RATIO` of a 240 ms window is speech."""

SPAN_RATIO = 0.6
"""The share of a :data:`SPAN_WINDOW_FRAMES` window that must be speech for speech to have begun there: the
live segmenter's opening rule (``SegmenterConfig.start_window_ms`` 240, ``start_ratio`` 0.6). In noise WebRTC VAD
marks isolated frames of the pauses as speech (5-10 % of them at 10 dB white or pink noise); the first and last
speech frames then lie in the noise, and a span cut from them grew from 58 % to 78 % of a RAVDESS recording. Cut
from where speech is dense, it stays at 54-56 %; on clean speech it is unchanged."""


def speech_span(mask: np.ndarray, pad_s: float) -> tuple[int, int]:
    """Frames ``[first, end)`` from the first to the last speech frame of ``mask`` that start or end a dense
    stretch of speech (:data:`SPAN_RATIO` of a 240 ms window, as the live segmenter opens), with ``pad_s``
    seconds of context on each side, clipped to the mask. A mask without such a stretch (speech shorter than
    the window) is cut from its first to its last speech frame; the whole mask when it holds no speech."""
    mask = np.asarray(mask, bool)
    speech = np.flatnonzero(mask)
    if len(speech) == 0:
        return 0, len(mask)
    first, last = int(speech[0]), int(speech[-1])
    if len(mask) >= SPAN_WINDOW_FRAMES:
        window = SPAN_WINDOW_FRAMES
        dense = np.flatnonzero(np.convolve(mask, np.ones(window), "valid") >= SPAN_RATIO * window)
        if len(dense):
            first = int(dense[0] + np.flatnonzero(mask[dense[0]: dense[0] + window])[0])
            last = int(dense[-1] + np.flatnonzero(mask[dense[-1]: dense[-1] + window])[-1])
    pad = int(round(pad_s * SAMPLE_RATE_HZ / FRAME_STRIDE_SAMPLES))
    return max(0, first - pad), min(len(mask), last + 1 + pad)


def trim_to_speech(waveform: np.ndarray, mask: np.ndarray, pad_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut a waveform and its speech mask to :func:`speech_span` (what ser-live's segmenter hands the
    model: the speech, with pre-roll before and hang-over after).

    The cut falls on the 320-sample frame grid, so the returned mask is a slice of ``mask`` and still has
    ``num_frames(len(waveform))`` entries. With no speech frame, both come back unchanged."""
    first, end = speech_span(mask, pad_s)
    if (first, end) == (0, len(mask)):
        return waveform, mask
    return waveform[first * FRAME_STRIDE_SAMPLES: (end - 1) * FRAME_STRIDE_SAMPLES + RECEPTIVE_FIELD_SAMPLES], mask[first:end]


def to_pcm16(waveform: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] (or already int16) to int16 PCM, clipping out-of-range samples."""
    waveform = np.asarray(waveform)
    if waveform.dtype == np.int16:
        return waveform
    return (np.clip(waveform, -1.0, 1.0) * 32767.0).astype(np.int16)
