"""Synthetic signals whose speech boundaries are known to the sample."""

import numpy as np


def voiced(duration_s: float, f0_hz: float = 140.0, sr: int = 16_000, seed: int = 0) -> np.ndarray:
    """A harmonic, pitch-wobbling buzz that WebRTC VAD hears as speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * sr)) / sr
    f0 = f0_hz * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 15))
    x *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 2.5 * t))
    return (0.25 * x / np.abs(x).max() + 0.002 * rng.standard_normal(len(t))).astype(np.float32)
