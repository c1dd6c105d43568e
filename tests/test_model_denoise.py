"""Spectral floor subtraction (encoder.denoise): the floor is the 10th percentile of each band over the item's
own frames (checked against numpy), padding and gain change nothing, clean studio speech passes almost
unchanged, and white noise added to real speech is taken most of the way back out of the GE2E front end and
the spectral statistics. Old model directories (no ``denoise`` key) load with it off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serlive.model import ConfigError, ModelConfig
from serlive.model.config import EncoderConfig
from serlive.model.denoise import FLOOR, QUANTILE, noise_floor, subtract_floor
from serlive.model.encoders import length_mask
from serlive.model.ge2e import GE2EEncoder
from serlive.model.spectral import SpectralStats
from serlive.train.data import load_audio

SR = 16000
DATA = Path(__file__).parent / "data" / "ravdess"
NAMES = ["03-01-05-01-01-01-01.flac", "03-01-04-01-01-01-02.flac", "03-01-01-01-01-01-01.flac"]


def test_the_floor_is_each_bands_10th_percentile_over_valid_frames_only():
    power = torch.rand(3, 50, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lengths = torch.tensor([50, 23, 1])
    valid = length_mask(lengths, 50)
    power[1, 23:] = -5.0  # padding: never ranked
    floor = noise_floor(power, valid)
    for b, n in enumerate(lengths.tolist()):
        ranked = np.sort(power[b, :n].numpy(), axis=0)
        assert np.allclose(floor[b].numpy(), ranked[int(np.floor(QUANTILE * (n - 1)))])
    assert noise_floor(power, torch.zeros(3, 50, dtype=torch.bool)).eq(0).all()


def test_subtraction_is_gain_invariant_bounded_below_and_off_at_zero():
    power = torch.rand(2, 40, 5, generator=torch.Generator().manual_seed(1)) + 0.5
    valid = torch.ones(2, 40, dtype=torch.bool)
    assert subtract_floor(power, valid, 0.0) is power
    out = subtract_floor(power, valid, 2.0)
    assert (out >= FLOOR * power - 1e-7).all() and (out <= power).all() and (out < power).any()
    assert torch.allclose(subtract_floor(7.0 * power, valid, 2.0), 7.0 * out, rtol=1e-5)


def with_white_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    return x + noise * np.sqrt((x ** 2).mean() / (noise ** 2).mean() / 10 ** (snr_db / 10))


def ge2e_mel(x: np.ndarray, denoise: float) -> torch.Tensor:
    enc = GE2EEncoder(EncoderConfig(kind="ge2e", freeze="all", denoise=denoise))
    return enc.mel(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0]


@pytest.mark.parametrize("name", NAMES)
def test_clean_speech_passes_and_white_noise_leaves_the_ge2e_front_end(name):
    x = load_audio(DATA / name, 10 * SR)
    clean = ge2e_mel(x, 0.0)

    def error(mel):  # the mel power's distance from the clean recording's, relative to its total
        return float((mel - clean).abs().sum() / clean.sum())

    assert error(ge2e_mel(x, 2.0)) < 0.002  # a studio floor 50-60 dB down: nothing to take away
    for snr_db in (10.0, 5.0):
        noisy = with_white_noise(x, snr_db)
        before, after = error(ge2e_mel(noisy, 0.0)), error(ge2e_mel(noisy, 2.0))
        assert after < 0.75 * before, (snr_db, before, after)


@pytest.mark.parametrize("name", NAMES)
def test_the_statistics_of_noisy_speech_move_back_towards_the_clean_ones(name):
    x = torch.from_numpy(load_audio(DATA / name, 10 * SR))[None]
    noisy = torch.from_numpy(with_white_noise(x[0].numpy(), 10.0))[None]
    lengths = torch.tensor([x.shape[1]])
    speech = torch.ones(1, x.shape[1] // 320, dtype=torch.bool)
    plain, denoised = SpectralStats(denoise=0.0), SpectralStats(denoise=2.0)
    moved = [float((s.raw(noisy, lengths, speech) - s.raw(x, lengths, speech)).abs().mean()) for s in (plain, denoised)]
    assert moved[1] < 0.85 * moved[0], moved


def test_old_configs_load_with_it_off_and_bad_values_are_one_sentence():
    old = ModelConfig.from_dict({"encoder": {"kind": "ge2e", "freeze": "all"}, "labels": ["a", "b"]})
    assert old.encoder.denoise == 0.0
    for bad in (-1.0, float("nan"), True, "2", 9.0):
        with pytest.raises(ConfigError, match="encoder.denoise"):
            EncoderConfig(kind="ge2e", denoise=bad)
