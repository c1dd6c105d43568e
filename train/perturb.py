"""Perturbation families on 16 kHz mono float32 speech, the benchmark's fixed conditions, and how one is applied.

Families: level (dB gain; float full scale ±1 clips, as an ADC does), additive noise at a target SNR (white,
pink, babble of other speakers, non-stationary bursts), reverberation in simulated rooms (:mod:`.rooms`),
the telephone band and lossy codecs (:mod:`.lines`), and clipping. Every random draw comes from a numpy
Generator passed in, so a condition applied to an utterance with the same seed gives the same audio.

SNR is taken against the *active* speech power (20 ms frames within 30 dB of the loud frames, a simple
stand-in for ITU-T P.56), so the silence around an utterance does not change what "10 dB" means; the noise
power is its mean over the whole utterance (bursts included).

Why not ``audiomentations`` (MIT)? It was checked (0.43): its noise transforms draw from the process-wide
``random``/``np.random`` state, so a benchmark condition cannot be tied to a seeded Generator per utterance
without reseeding global state; it pulls librosa, numba, llvmlite and scikit-learn for what here is a few
lines each; it has no μ-law, no Opus, no babble from audio in memory (its noise transforms read files), its
``RoomSimulator`` simulates a room per call (seconds) where a cached bank is needed, and ``Mp3Compression``
writes temporary files. Its ``ClippingDistortion`` definition (clip at the percentiles that leave a given
share of samples clipped) is kept, so figures compare with work that used it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serlive.model import SAMPLE_RATE_HZ

from . import lines
from .rooms import RirBank, draw_rooms, reverberate

FRAME_SAMPLES = 320
NOISES = ("white", "pink", "babble", "bursty")


def active_power(x: np.ndarray, floor_db: float = 30.0) -> float:
    """Mean power of the 20 ms frames within ``floor_db`` of the loud ones (95th percentile)."""
    x = np.asarray(x, np.float64)
    n = len(x) // FRAME_SAMPLES
    if n < 2:
        return float(np.mean(x ** 2)) if len(x) else 0.0
    frames = np.mean(x[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES) ** 2, axis=1)
    loud = np.percentile(frames, 95)
    return float(np.mean(frames[frames >= loud * 10 ** (-floor_db / 10)]))


def level(x: np.ndarray, gain_db: float) -> np.ndarray:
    """``x`` played ``gain_db`` louder (or quieter), clipped at full scale (±1)."""
    return np.clip(x * np.float32(10 ** (gain_db / 20)), -1.0, 1.0).astype(np.float32)


def clipping(x: np.ndarray, percent: float) -> np.ndarray:
    """Clip at the percentiles that leave ``percent`` % of the samples clipped (half at each sign), as
    audiomentations' ``ClippingDistortion``: an overdriven microphone or preamplifier."""
    lo, hi = np.percentile(x, [percent / 2, 100 - percent / 2])
    return np.clip(x, lo, hi).astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator, low_hz: float = 20.0) -> np.ndarray:
    """1/f power (−3 dB per octave) above ``low_hz``, nothing below; unit power."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE_HZ)
    spec *= np.where(f >= low_hz, 1 / np.sqrt(np.maximum(f, low_hz)), 0.0)
    y = np.fft.irfft(spec, n)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def babble_noise(n: int, rng: np.random.Generator, pool: list[np.ndarray], talkers: int = 6) -> np.ndarray:
    """``talkers`` utterances of ``pool`` (other speakers) at random offsets, each at unit active power,
    summed: a room of people talking. Short utterances are looped."""
    if not pool:
        raise ValueError("babble noise needs a pool of other speakers' utterances")
    y = np.zeros(n, np.float64)
    for _ in range(talkers):
        u = np.asarray(pool[int(rng.integers(len(pool)))], np.float64)
        u = np.tile(u, -(-n // max(len(u), 1)) + 1)
        start = int(rng.integers(len(u) - n + 1))
        seg = u[start: start + n]
        y += seg / np.sqrt(active_power(seg) + 1e-12)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def bursty_noise(n: int, rng: np.random.Generator, rate_hz: float = 3.0) -> np.ndarray:
    """Non-stationary noise: pink noise under an envelope of bursts (Poisson onsets at ``rate_hz``,
    50–400 ms long, levels spread over 20 dB, 10 ms ramps) over a floor 20 dB down; unit mean power."""
    env = np.full(n, 0.1)
    ramp = np.sin(np.linspace(0, np.pi / 2, 160)) ** 2
    t = rng.exponential(1 / rate_hz) * SAMPLE_RATE_HZ
    while t < n:
        length = int(rng.uniform(0.05, 0.4) * SAMPLE_RATE_HZ)
        shape = np.ones(length)
        k = min(len(ramp), length // 2)
        shape[:k], shape[length - k:] = ramp[:k], ramp[:k][::-1]
        start = int(t)
        seg = env[start: start + length]
        env[start: start + length] = np.maximum(seg, 10 ** (-rng.uniform(0, 20) / 20) * shape[: len(seg)])
        t += length + rng.exponential(1 / rate_hz) * SAMPLE_RATE_HZ
    y = pink_noise(n, rng) * env
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def noise_of(kind: str, n: int, rng: np.random.Generator, pool: list[np.ndarray] | None = None) -> np.ndarray:
    if kind == "white":
        return white_noise(n, rng)
    if kind == "pink":
        return pink_noise(n, rng)
    if kind == "babble":
        return babble_noise(n, rng, pool or [])
    if kind == "bursty":
        return bursty_noise(n, rng)
    raise ValueError(f"unknown noise {kind!r} (known: {', '.join(NOISES)})")


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x`` plus ``noise`` scaled so that active speech power / mean noise power = ``snr_db``."""
    scale = np.sqrt(active_power(x) / (np.mean(noise.astype(np.float64) ** 2) + 1e-20) / 10 ** (snr_db / 10))
    return (x + noise * np.float32(scale)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Condition:
    """One benchmark condition: ``family`` with its fixed ``value`` (dB, SNR dB, RT60 s, kbit/s, percent)
    and ``kind`` (the noise or codec)."""

    name: str
    family: str
    value: float = 0.0
    kind: str = ""


def _benchmark() -> tuple[Condition, ...]:
    c = [Condition("clean", "clean")]
    c += [Condition(f"level {g:+d} dB", "level", g) for g in (-20, -10, 6)]
    c += [Condition(f"{k} noise {s} dB SNR", "noise", s, k) for k in NOISES for s in (20, 10, 5)]
    c += [Condition(f"reverb RT60 {r} s", "reverb", r) for r in (0.3, 0.6, 1.0)]
    c += [Condition("telephone 300-3400 Hz mu-law", "telephone")]
    c += [Condition(f"opus {b} kbit/s", "codec", b, "opus") for b in (12, 16)]
    c += [Condition("mp3 32 kbit/s", "codec", 32, "mp3"), Condition("clipping 10%", "clipping", 10)]
    return tuple(c)


BENCHMARK = _benchmark()
"""The robustness benchmark's conditions, in table order (fixed; each utterance's draw is seeded)."""

BENCHMARK_ROOMS_SEED = 20261123
"""Seed of the benchmark's rooms (3 per RT60); training draws its rooms from another seed and RT60 grid."""


def benchmark_rooms(cache_dir=None, rt60s_s: tuple = (0.3, 0.6, 1.0)) -> RirBank:
    """The benchmark's rooms: 3 per RT60, drawn with a seed of their own per RT60 (a bank of some of the
    RT60s holds the same rooms as the full bank)."""
    rooms = [r for rt60 in rt60s_s for r in draw_rooms((rt60,), 3, BENCHMARK_ROOMS_SEED + round(1000 * rt60))]
    return RirBank(rooms, cache_dir)


def apply(cond: Condition, x: np.ndarray, rng: np.random.Generator, pool: list[np.ndarray] | None = None,
          rooms: RirBank | None = None) -> np.ndarray:
    """``x`` under ``cond``; babble draws from ``pool``, reverberation from ``rooms``."""
    x = np.asarray(x, np.float32)
    if cond.family == "clean":
        return x
    if cond.family == "level":
        return level(x, cond.value)
    if cond.family == "noise":
        return add_noise(x, noise_of(cond.kind, len(x), rng, pool), cond.value)
    if cond.family == "reverb":
        if rooms is None:
            raise ValueError("reverberation needs a RirBank")
        return reverberate(x, rooms.draw(rng, cond.value))
    if cond.family == "telephone":
        return lines.telephone(x)
    if cond.family == "codec":
        return lines.codec(x, cond.kind, cond.value)
    if cond.family == "clipping":
        return clipping(x, cond.value)
    raise ValueError(f"unknown perturbation family {cond.family!r}")


BABBLE_POOL_SIZE = 64
"""Training utterances a fold's babble is drawn from."""


def babble_pool(data, fold, seed: int) -> list[np.ndarray]:
    """:data:`BABBLE_POOL_SIZE` of ``fold``'s training utterances (never its test speakers), drawn with
    ``seed`` and the fold: the talkers of its babble noise, in the benchmark and in calibration alike."""
    pick = np.random.default_rng([seed, fold.index]).permutation(fold.train)[:BABBLE_POOL_SIZE]
    return [data.wave(int(i)) for i in pick]
