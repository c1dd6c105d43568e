"""The pitch tracker and its statistics (model/pitch.py), and the spectral branch that carries them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serlive.model.pitch import FEATURES, pitch_stats, track
from serlive.train.data import load_audio
from serlive.train.lines import telephone

SR = 16000
DATA = Path(__file__).parent / "data" / "ravdess"


def harmonic(f0_hz, seconds=2.0, harmonics=15):
    """A voice-like tone: ``f0_hz`` (a number, or an array per sample for a glide) and its harmonics at 1/k."""
    n = int(seconds * SR)
    f0 = np.broadcast_to(np.asarray(f0_hz, float), (n,))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    return (0.1 * sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))).astype(np.float32)


def median_f0(x):
    f0, corr = track(torch.from_numpy(x)[None], 90)
    return float(f0[0, 5:85].median()), float(corr[0, 5:85].mean())


@pytest.mark.parametrize("f0_hz", [65.0, 98.0, 120.0, 155.0, 220.0, 310.0, 390.0])
def test_f0_of_a_harmonic_tone_within_half_a_percent(f0_hz):
    f0, corr = median_f0(harmonic(f0_hz))
    assert f0 == pytest.approx(f0_hz, rel=0.005)
    assert corr > 0.95


def test_telephone_band_removes_the_fundamental_but_not_the_pitch():
    x = telephone(harmonic(120.0))  # 300-3400 Hz: no energy left at 120 Hz
    spectrum = np.abs(np.fft.rfft(x[4000:20000]))
    assert spectrum[120] < 0.05 * spectrum[360]  # 1 Hz bins: the fundamental is gone, the third harmonic is not
    f0, corr = median_f0(x)
    assert f0 == pytest.approx(120.0, rel=0.01) and corr > 0.8


def test_noise_is_not_voiced_and_has_no_f0_statistics():
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.1
    stats = pitch_stats(torch.from_numpy(noise)[None], torch.ones(1, 90, dtype=torch.bool))[0]
    assert stats[FEATURES.index("voiced_share")] < 0.05
    assert torch.isnan(stats[2:]).all()


def test_a_glide_has_its_slope_range_and_level():
    t = np.arange(2 * SR) / SR
    x = harmonic(120.0 * 2 ** (t / 2))  # 120 -> 240 Hz over 2 s: half an octave per second
    stats = dict(zip(FEATURES, pitch_stats(torch.from_numpy(x)[None], torch.ones(1, 90, dtype=torch.bool))[0].tolist()))
    assert stats["voiced_share"] == 1.0
    assert stats["slope_octaves_per_s"] == pytest.approx(0.5, abs=0.01)
    assert stats["log2_f0_range"] == pytest.approx(89 * 0.02 * 0.5, abs=0.02)  # first to last frame start
    assert 2 ** stats["log2_f0_mean"] == pytest.approx(120 * 2 ** 0.45, rel=0.02)
    assert stats["step_mean"] == pytest.approx(0.01, abs=0.001)  # 20 ms at 0.5 octave/s


def test_only_kept_frames_count():
    x = np.concatenate([harmonic(110.0, 1.0), harmonic(220.0, 1.0)])
    keep = torch.zeros(1, 90, dtype=torch.bool)
    keep[0, 5:40] = True  # the first second only
    stats = dict(zip(FEATURES, pitch_stats(torch.from_numpy(x)[None], keep)[0].tolist()))
    assert 2 ** stats["log2_f0_mean"] == pytest.approx(110.0, rel=0.01)
    assert stats["log2_f0_range"] < 0.02


def speech(name):
    return torch.from_numpy(load_audio(DATA / name, 10 * SR))


def test_real_voices_female_above_male_and_mostly_voiced():
    from serlive.model.frames import speech_mask

    level = {}
    for actor, name in (("male", "03-01-01-01-01-01-01.flac"), ("female", "03-01-01-01-01-01-02.flac")):
        x = speech(name)
        mask = torch.from_numpy(speech_mask(x.numpy()))
        n = (len(x) - 400) // 320 + 1
        stats = dict(zip(FEATURES, pitch_stats(x[None], mask[None, :n])[0].tolist()))
        assert stats["voiced_share"] > 0.4
        assert 70 < 2 ** stats["log2_f0_mean"] < 350
        level[actor] = stats["log2_f0_mean"]
    assert level["female"] > level["male"] + 0.4  # more than 0.4 octave higher


def test_spectral_branch_with_pitch_standardises_and_fills_missing_f0_with_the_mean():
    from serlive.model.spectral import N_MELS, SpectralStats

    branch = SpectralStats(pitch=True)
    assert branch.out_dim == 3 * N_MELS + len(FEATURES) and SpectralStats().out_dim == 3 * N_MELS
    waves = torch.stack([speech("03-01-05-01-01-01-01.flac")[: 3 * SR], speech("03-01-04-01-01-01-02.flac")[: 3 * SR],
                         torch.from_numpy(np.random.default_rng(1).standard_normal(3 * SR).astype(np.float32) * 0.05)])
    lengths = torch.full((3,), 3 * SR)
    speech_frames = torch.ones(3, 149, dtype=torch.bool)
    raw = branch.raw(waves, lengths, speech_frames)
    assert torch.isnan(raw[2, -6:]).all() and not torch.isnan(raw[:2]).any()
    branch.standardise_with(raw)
    z = branch(waves, lengths, speech_frames)
    assert not torch.isnan(z).any()
    assert torch.all(z[2, -6:] == 0)  # the noise has no F0: the training mean
    assert torch.allclose(z[:2, -6:].mean(0), torch.zeros(6), atol=1e-5)  # the two voiced items define the mean


def test_pitch_statistics_need_the_spectral_branch_and_old_configs_load_without_them():
    from serlive.model.config import ConfigError, ModelConfig
    from serlive.model.ser import SERModel

    with pytest.raises(ConfigError, match="spectral_stats"):
        ModelConfig.from_dict({"pitch_stats": True})
    old = ModelConfig.from_dict({"spectral_stats": True, "encoder": {"kind": "builtin", "dim": 16, "n_mels": 16,
                                                                   "transformer_layers": 1, "heads": 2}})
    assert old.pitch_stats is False and SERModel(old).spectral.out_dim == 192
    assert SERModel(old.replace(pitch_stats=True)).project.in_features == SERModel(old).project.in_features + 8
