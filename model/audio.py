"""Turn whatever audio a caller hands over into one clean 16 kHz mono float32 waveform."""

from __future__ import annotations

import numpy as np

from .frames import RECEPTIVE_FIELD_SAMPLES, SAMPLE_RATE_HZ

MAX_CHANNELS = 32
"""A 2-D array whose smaller side exceeds this is not read as (samples, channels)."""


class AudioError(ValueError):
    """Audio that cannot be turned into a waveform; the message is one sentence for the user."""


def to_mono_16k(audio, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Validate, downmix and resample ``audio`` to a float32 16 kHz mono waveform.

    Accepts numpy arrays or torch tensors of float or integer samples, shaped ``(samples,)``,
    ``(samples, channels)`` or ``(channels, samples)`` (the smaller side is the channels).
    Integer samples are scaled by their type's full range.
    """
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        try:
            audio = np.asarray(audio)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not audio"
            raise AudioError(f"audio must be an array of samples, not {type(audio).__name__}") from exc
    if not isinstance(sample_rate_hz, (int, np.integer)) or sample_rate_hz <= 0:
        raise AudioError(f"sample rate must be a positive integer, not {sample_rate_hz!r}")
    x = _to_float(audio)
    if x.ndim == 2:
        x = x.mean(axis=1 if x.shape[1] <= x.shape[0] else 0)
    if x.ndim != 1:
        raise AudioError(f"audio must be 1-D (samples) or 2-D (samples x channels), not {x.ndim}-D")
    if x.size == 0:
        raise AudioError("audio is empty")
    if not np.isfinite(x).all():
        raise AudioError("audio contains NaN or infinite samples")
    if sample_rate_hz != SAMPLE_RATE_HZ:
        import soxr

        x = soxr.resample(x, int(sample_rate_hz), SAMPLE_RATE_HZ).astype(np.float32, copy=False)
    if len(x) < RECEPTIVE_FIELD_SAMPLES:
        raise AudioError(
            f"audio is {len(x)} samples at 16 kHz; at least {RECEPTIVE_FIELD_SAMPLES} (25 ms) are needed"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _to_float(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 2 and min(audio.shape) > MAX_CHANNELS:
        raise AudioError(f"a 2-D audio array must be (samples, channels); got shape {audio.shape}")
    kind = audio.dtype.kind
    if kind == "f":
        return audio.astype(np.float32, copy=False)
    if kind == "i":
        return (audio.astype(np.float32) / float(-np.iinfo(audio.dtype).min)).astype(np.float32)
    if kind == "u":
        info = np.iinfo(audio.dtype)
        mid = (info.max + 1) / 2.0
        return ((audio.astype(np.float64) - mid) / mid).astype(np.float32)
    raise AudioError(f"audio samples must be float or integer, not {audio.dtype}")
