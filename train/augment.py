"""Waveform augmentations for the second SCL view (SCL paper, sec. 3.3.2): noise, volume,
reverberation, pitch, and "mixed" (a random non-empty subset of the four, in that order); and
:class:`TrainAugment`, the perturbations of what the classifier itself learns from (``augment.classifier``).

Each takes and returns a 16 kHz float32 waveform plus its speech mask on the encoder frame grid.
Noise, volume and reverberation keep the length, so the mask is unchanged; the pitch shift resamples
(pitch and tempo move together, like speed perturbation) and the mask is stretched onto the new grid.
"""

from __future__ import annotations

import numpy as np

from serlive.model import SAMPLE_RATE_HZ, num_frames

from . import lines, perturb
from .config import AugmentConfig
from .rooms import reverberate

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


ORDER = ("reverb", "white", "pink", "babble", "bursty", "level", "clipping", "telephone")
"""A chain is applied in signal-path order: the room, noise in the room, the microphone's gain and clipping,
then the line (telephone band, or a codec stage after the chain)."""

TRAIN_ROOMS_SEED = 7
"""Seed of the training rooms (``augment.classifier_rooms`` per RT60 of ``augment.classifier_rt60_s``); the
benchmark uses others."""


class TrainAugment:
    """Perturbations of what the classifier learns from (:mod:`.perturb`'s families at other settings than
    the benchmark's): with probability ``cfg.classifier_p`` an utterance gets a chain of 1 to
    ``cfg.classifier_chain`` distinct families, then with ``cfg.classifier_codec_p`` one codec pass.
    ``babble_pool``: other speakers' utterances (the training speakers'); ``rng``: the default Generator."""

    def __init__(self, cfg: AugmentConfig, babble_pool: list[np.ndarray], rng: np.random.Generator | None = None,
                 rooms_cache_dir=None) -> None:
        self.cfg, self.pool, self.rng = cfg, list(babble_pool), rng or np.random.default_rng()
        fams = set(cfg.classifier_families) - ({"babble"} if not self.pool else set())
        self.families = [f for f in ORDER if f in fams]
        self.codecs = [c for c in lines.CODECS if c in fams] if cfg.classifier_codec_p > 0 else []
        if self.codecs:
            lines.require_ffmpeg("augment.classifier_families with opus or mp3")
        self._rooms, self._rooms_cache_dir = None, rooms_cache_dir

    @property
    def rooms(self):
        """The training rooms, simulated (or read from the cache) on first use."""
        from .rooms import RirBank, draw_rooms

        if self._rooms is None:
            rooms = draw_rooms(tuple(self.cfg.classifier_rt60_s), self.cfg.classifier_rooms, TRAIN_ROOMS_SEED)
            self._rooms = RirBank(rooms, self._rooms_cache_dir)
        return self._rooms

    def plan(self, rng: np.random.Generator) -> tuple[list[tuple[str, float]], tuple[str, float] | None]:
        """One utterance's draw: the chain of (family, setting), and the codec pass (name, kbit/s) or None."""
        cfg = self.cfg
        if rng.random() >= cfg.classifier_p:
            return [], None
        chain: list[tuple[str, float]] = []
        if self.families:
            k = int(rng.integers(1, min(cfg.classifier_chain, len(self.families)) + 1))
            picked = set(rng.choice(len(self.families), size=k, replace=False).tolist())
            chain = [(f, self._setting(f, rng)) for i, f in enumerate(self.families) if i in picked]
        codec = None
        if self.codecs and rng.random() < cfg.classifier_codec_p and all(f != "telephone" for f, _ in chain):
            name = self.codecs[int(rng.integers(len(self.codecs)))]
            rates = cfg.classifier_opus_kbps if name == "opus" else cfg.classifier_mp3_kbps
            codec = (name, float(rates[int(rng.integers(len(rates)))]))
        return chain, codec

    def _setting(self, family: str, rng: np.random.Generator) -> float:
        cfg = self.cfg
        if family in perturb.NOISES:
            return float(rng.uniform(*cfg.classifier_snr_db))
        if family == "level":
            return float(rng.uniform(*cfg.classifier_level_db))
        if family == "clipping":
            return float(rng.uniform(*cfg.classifier_clip_percent))
        if family == "reverb":
            return float(cfg.classifier_rt60_s[int(rng.integers(len(cfg.classifier_rt60_s)))])
        return 0.0

    def apply_chain(self, x: np.ndarray, chain: list[tuple[str, float]], rng: np.random.Generator) -> np.ndarray:
        for family, value in chain:
            if family in perturb.NOISES:
                x = perturb.add_noise(x, perturb.noise_of(family, len(x), rng, self.pool), value)
            elif family == "level":
                x = perturb.level(x, value)
            elif family == "clipping":
                x = perturb.clipping(x, value)
            elif family == "reverb":
                x = reverberate(x, self.rooms.draw(rng, value))
            elif family == "telephone":
                x = lines.telephone(x, rng.uniform(200, 400), rng.uniform(3000, 3700))
        return x.astype(np.float32, copy=False)

    def batch(self, waves: list[np.ndarray], rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Each of ``waves`` perturbed (lengths kept); the codec passes of items that drew the same codec and
        bitrate run through one ffmpeg call (:func:`.lines.codec_many`)."""
        rng = rng or self.rng
        out, jobs = [], {}
        for i, x in enumerate(waves):
            chain, codec = self.plan(rng)
            out.append(self.apply_chain(np.asarray(x, np.float32), chain, rng))
            if codec is not None:
                jobs.setdefault(codec, []).append(i)
        for (name, kbps), idx in sorted(jobs.items()):
            for i, y in zip(idx, lines.codec_many([out[i] for i in idx], name, kbps)):
                out[i] = y
        return out

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.batch([x], rng)[0]
