"""Waveform augmentations for the second SCL view (SCL paper, sec. 3.3.2): noise, volume,
reverberation, pitch, and "mixed" (a random non-empty subset of the four, in that order).

Each takes and returns a 16 kHz float32 waveform plus its speech mask on the encoder frame grid.
Noise, volume and reverberation keep the length, so the mask is unchanged; the pitch shift resamples
(pitch and tempo move together, like speed perturbation) and the mask is stretched onto the new grid.
"""

from __future__ import annotations

import numpy as np

from serlive.model import SAMPLE_RATE_HZ, num_frames

from .config import AugmentConfig

KINDS = ("noise", "volume", "reverb", "pitch")


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    power = float(np.mean(x ** 2)) + 1e-10
    noise = rng.standard_normal(len(x)).astype(np.float32)
    return x + noise * np.sqrt(power / 10 ** (snr_db / 10))


def change_volume(x: np.ndarray, gain_db: float) -> np.ndarray:
    return np.clip(x * 10 ** (gain_db / 20), -1.0, 1.0)


def add_reverb(x: np.ndarray, rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """Convolve with a synthetic room response: exponentially decaying noise (60 dB down at rt60_s)."""
    n = int(rt60_s * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)
    ir[0] = 1.0
    ir /= np.sqrt(np.sum(ir ** 2))
    size = int(2 ** np.ceil(np.log2(len(x) + n)))
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]
    peak = np.max(np.abs(y)) + 1e-9
    return (y * min(1.0, np.max(np.abs(x)) / peak)).astype(np.float32)


def shift_pitch(x: np.ndarray, mask: np.ndarray, semitones: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample by 2^(s/12): pitch up and shorter for s > 0. The mask follows by nearest frame."""
    import soxr

    ratio = 2 ** (semitones / 12)
    y = soxr.resample(x, SAMPLE_RATE_HZ * ratio, SAMPLE_RATE_HZ).astype(np.float32)
    if len(y) < 400:
        return x, mask
    t = np.minimum((np.arange(num_frames(len(y))) * ratio).round().astype(int), len(mask) - 1)
    return y, mask[t] if len(mask) else np.zeros(num_frames(len(y)), bool)


def augment(x: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One augmented view of ``x`` (N,) with its mask (num_frames(N),)."""
    if cfg.kind == "none":
        return x, mask
    kinds = [cfg.kind] if cfg.kind != "mixed" else _subset(rng)
    for kind in kinds:
        if kind == "noise":
            x = add_noise(x, rng, rng.uniform(*cfg.noise_snr_db))
        elif kind == "volume":
            x = change_volume(x, rng.uniform(*cfg.volume_db))
        elif kind == "reverb":
            x = add_reverb(x, rng, rng.uniform(*cfg.reverb_rt60_s))
        elif kind == "pitch":
            x, mask = shift_pitch(x, mask, rng.uniform(*cfg.pitch_semitones))
    return x.astype(np.float32, copy=False), mask


def _subset(rng: np.random.Generator) -> list[str]:
    chosen = [k for k in KINDS if rng.random() < 0.5]
    return chosen or [KINDS[rng.integers(len(KINDS))]]
