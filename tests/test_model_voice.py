"""The voice-quality, loudness and speech-rate statistics (model/voice.py) against synthetic voices whose jitter,
shimmer, harmonics-to-noise ratio, loudness contour and syllable rate are known, and the incremental path
(model/incremental.py ``spectral_stats``) against the whole segment with them on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serlive.model import ModelConfig
from serlive.model.config import ConfigError
from serlive.model.frames import num_frames
from serlive.model.incremental import EncoderState, spectral_stats
from serlive.model.pitch import FEATURES as PITCH_FEATURES
from serlive.model.ser import SERModel
from serlive.model.spectral import N_MELS, SpectralStats
from serlive.model.voice import FEATURES, LOUDNESS_POWER
from serlive.train.data import load_audio

SR = 16000
DATA = Path(__file__).parent / "data" / "ravdess"
BRANCH = SpectralStats(pitch=True, voice=True)


def voice_of(x: np.ndarray, speech: np.ndarray | None = None) -> dict:
    """The 12 statistics of one waveform, every frame speech unless ``speech`` says otherwise."""
    t = num_frames(len(x))
    mask = torch.ones(1, t, dtype=torch.bool) if speech is None else torch.from_numpy(speech)[None]
    raw = BRANCH.raw(torch.from_numpy(x.astype(np.float32))[None], torch.tensor([len(x)]), mask)[0]
    return dict(zip(FEATURES, raw[3 * N_MELS: 3 * N_MELS + len(FEATURES)].tolist()))


def glottal_train(f0_hz: float, jitter: float, shimmer: float, seconds: float = 2.0, seed: int = 0):
    """Zero-mean glottal-like pulses (a raised cosine less a wider one of the same area) with periods
    ``T0 (1 + jitter * N(0, 1))`` and heights ``1 + shimmer * N(0, 1)``, at sub-sample positions; and the true
    local jitter and shimmer of those periods and heights (Praat's definitions)."""
    rng = np.random.default_rng(seed)
    n, period = int(seconds * SR), SR / f0_hz
    pos = [10.0]
    while pos[-1] < n - 2 * period:
        pos.append(pos[-1] + period * (1 + jitter * rng.standard_normal()))
    amp = 1 + shimmer * rng.standard_normal(len(pos))
    x, t, w = np.zeros(n), np.arange(n), 20.0

    def bump(d, width):
        return np.where(np.abs(d) < width, 0.5 + 0.5 * np.cos(np.pi * d / width), 0.0) / width

    for p, a in zip(pos, amp):
        lo, hi = max(int(p - 3 * w) - 1, 0), min(int(p + 3 * w) + 2, n)
        d = t[lo:hi] - p
        x[lo:hi] += a * w * (bump(d, w) - bump(d, 3 * w))
    per = np.diff(pos)
    return 0.1 * x, np.mean(np.abs(np.diff(per))) / np.mean(per), np.mean(np.abs(np.diff(amp))) / np.mean(amp)


def harmonic(f0_hz: float, seconds: float, harmonics: int = 15) -> np.ndarray:
    phase = 2 * np.pi * f0_hz * np.arange(int(seconds * SR)) / SR
    return 0.1 * sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))


@pytest.mark.parametrize("f0_hz, jitter, shimmer", [
    (100.0, 0.03, 0.02), (120.0, 0.01, 0.05), (150.0, 0.0, 0.0), (200.0, 0.02, 0.10), (250.0, 0.005, 0.03)])
def test_jitter_and_shimmer_of_a_pulse_train_within_a_tenth(f0_hz, jitter, shimmer):
    x, true_jitter, true_shimmer = glottal_train(f0_hz, jitter, shimmer)
    got = voice_of(x)
    assert got["jitter_local"] == pytest.approx(true_jitter, rel=0.1, abs=0.001)
    assert got["shimmer_local"] == pytest.approx(true_shimmer, rel=0.1, abs=0.002)


@pytest.mark.parametrize("snr_db", [5.0, 10.0, 15.0, 20.0])
def test_harmonics_to_noise_ratio_of_a_tone_in_white_noise_within_half_a_db(snr_db):
    tone = harmonic(200.0, 2.0)  # a period of exactly 80 samples
    noise = np.random.default_rng(1).standard_normal(len(tone))
    noise *= np.sqrt(np.mean(tone ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    got = voice_of(tone + noise)
    assert got["hnr_db_mean"] == pytest.approx(snr_db, abs=0.5)
    assert got["hnr_db_std"] < 1.0
    assert voice_of(tone)["hnr_db_mean"] > 29  # no noise: the clipped ceiling, 30 dB


def test_noise_has_no_voice_quality():
    noise = 0.1 * np.random.default_rng(0).standard_normal(2 * SR)
    got = voice_of(noise)
    assert all(np.isnan(got[k]) for k in ("jitter_local", "shimmer_local", "hnr_db_mean", "hnr_db_std"))
    assert got["syllables_per_s"] == 0 and got["voiced_runs_per_s"] == 0


def test_loudness_contour_of_a_swelling_tone_matches_its_envelope():
    """A tone whose amplitude rises linearly from 0.2 to 1 over 1 s and falls back over 0.5 s: its loudness is
    the amplitude to 2 x 0.3 (power to 0.3), whatever the spectrum; the figures from that envelope directly."""
    def envelope(t):
        return np.where(t < 1.0, 0.2 + 0.8 * t, 1.0 - 1.6 * (t - 1.0))

    x = harmonic(150.0, 1.5)
    x *= envelope(np.arange(len(x)) / SR)
    centre = (np.arange(num_frames(len(x))) * 320 + 200) / SR  # frame t: samples [320 t, 320 t + 400)
    loud = envelope(centre) ** (2 * LOUDNESS_POWER)
    rel = loud / loud.mean()
    slope = np.diff(rel) * 50
    got = voice_of(x)
    assert got["loudness_cv"] == pytest.approx(rel.std(), rel=0.05)
    assert got["loudness_range"] == pytest.approx(np.quantile(rel, 0.8) - np.quantile(rel, 0.2), rel=0.05)
    assert got["rise_mean"] == pytest.approx(slope[slope > 0].mean(), rel=0.05)
    assert got["fall_mean"] == pytest.approx(-slope[slope < 0].mean(), rel=0.05)
    assert got["rise_std"] < 0.5 * got["rise_mean"] and got["fall_std"] < 0.5 * got["fall_mean"]


@pytest.mark.parametrize("rate_hz", [2.0, 3.0, 5.0, 6.0])
def test_syllable_rate_of_a_burst_train(rate_hz):
    """Voiced 120 ms bursts (a Hann envelope) every 1 / rate s with silence between: one nucleus and one voiced
    stretch each, per second of the whole item (every frame counted as speech)."""
    seconds = 3.0
    x, tone, width = np.zeros(int(seconds * SR)), harmonic(150.0, seconds), int(0.12 * SR)
    starts = [int((0.1 + k / rate_hz) * SR) for k in range(int(seconds * rate_hz))]
    starts = [s for s in starts if s + width < len(x) - 1600]
    for s in starts:
        x[s:s + width] += tone[s:s + width] * np.hanning(width)
    x += 1e-4 * np.random.default_rng(0).standard_normal(len(x))
    got = voice_of(x)
    speech_s = num_frames(len(x)) * 0.02
    assert got["syllables_per_s"] * speech_s == pytest.approx(len(starts), abs=0.01)
    assert got["voiced_runs_per_s"] * speech_s == pytest.approx(len(starts), abs=0.01)


def test_syllables_within_one_voiced_stretch_are_counted():
    """A tone whose amplitude swings 6 dB or more four times a second, voiced throughout: 12 nuclei in 3 s, one
    voiced stretch."""
    x = harmonic(150.0, 3.0)
    t = np.arange(len(x)) / SR
    x *= 0.4 + 0.6 * np.sin(np.pi * 4.0 * t) ** 2
    got = voice_of(x)
    speech_s = num_frames(len(x)) * 0.02
    assert got["syllables_per_s"] * speech_s == pytest.approx(12, abs=1.01)
    assert got["voiced_runs_per_s"] * speech_s == pytest.approx(1, abs=0.01)


def test_only_speech_frames_count():
    """Frames outside the speech mask change nothing: the same voice with a burst of another one appended."""
    x, _, _ = glottal_train(120.0, 0.01, 0.05, seconds=1.5)
    other, _, _ = glottal_train(240.0, 0.05, 0.2, seconds=1.0, seed=3)
    both = np.concatenate([x, other])
    speech = np.zeros(num_frames(len(both)), bool)
    speech[: num_frames(len(x)) - 2] = True
    alone = voice_of(x[: 320 * (num_frames(len(x)) - 3) + 640])
    mixed = voice_of(both, speech)
    for name in ("jitter_local", "shimmer_local", "hnr_db_mean"):
        assert mixed[name] == pytest.approx(alone[name], rel=0.05)


@pytest.mark.parametrize("denoise", [0.0, 2.0])
def test_incremental_statistics_equal_the_whole_segment(denoise):
    """Prefixes of a real utterance growing as interims do (by uneven steps, one not at all) through one state:
    each equals the whole-segment branch, voice statistics included."""
    wave = load_audio(DATA / "03-01-05-01-01-01-01.flac", 10 * SR)
    branch = SpectralStats(pitch=True, voice=True, denoise=denoise)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        branch.shift.copy_(torch.from_numpy(rng.standard_normal(branch.out_dim)).float())
        branch.scale.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, branch.out_dim)).float())
    t_max = num_frames(len(wave))
    speech = torch.from_numpy(rng.random(t_max) > 0.2)[None]
    state = EncoderState()
    for end in (8000, 16317, 16317, 24001, 32650, 40000, len(wave)):
        prefix = wave[:end]
        grown = spectral_stats(branch, [prefix], [state], speech)
        whole = branch(torch.from_numpy(prefix)[None], torch.tensor([end]), speech)
        assert torch.allclose(grown, whole, atol=1e-4), end
        voice = slice(3 * N_MELS, 3 * N_MELS + len(FEATURES))
        assert torch.isfinite(whole[0, voice]).all() and (whole[0, voice] != 0).any()
    assert len(state.spectral) == 4 and state.spectral[3].shape[1] == 4  # the pulse sums kept per frame


def test_the_flag_is_off_by_default_and_old_models_keep_their_branch():
    config = ModelConfig.from_toml(Path(__file__).parents[1] / "train" / "configs" / "ravdess-ge2e.toml")
    assert not config.voice_stats
    assert SERModel(config).spectral.out_dim == 3 * N_MELS + len(PITCH_FEATURES)
    voiced = SERModel(config.replace(voice_stats=True)).spectral
    assert voiced.out_dim == 3 * N_MELS + len(FEATURES) + len(PITCH_FEATURES)
    with pytest.raises(ConfigError, match="pitch_stats"):
        ModelConfig(spectral_stats=True, voice_stats=True)
