"""A narrow-band front end (encoder.band_hz): what a telephone line removes, the model never looked at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import butter, sosfiltfilt

from serlive.model import ConfigError, ModelConfig, SERModel
from serlive.model.builtin import LogMel, N_FFT, mel_filterbank
from serlive.train.data import load_audio

SR = 16000
DATA = Path(__file__).parent / "data" / "ravdess"
SMALL = {"kind": "builtin", "dim": 16, "n_mels": 16, "transformer_layers": 1, "heads": 2, "input_norm": "utterance"}


def test_band_filters_cover_the_band_only_and_every_filter_sees_a_bin():
    fbank = mel_filterbank(64, band_hz=(300.0, 3400.0))
    hz = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    weight = fbank.sum(1).numpy()
    assert weight[(hz < 300) | (hz > 3400)].max() == 0
    assert weight[(hz > 330) & (hz < 3370)].min() > 0
    assert (fbank.sum(0) > 0).all()  # no empty filter, even at 300 Hz where they are narrower than a bin
    full = mel_filterbank(64).sum(1).numpy()
    assert full[(hz > 100) & (hz < 7900)].min() > 0


def band_pass(x, low=300.0, high=3400.0):
    return sosfiltfilt(butter(8, [low, high], btype="band", fs=SR, output="sos"), x).astype(np.float32)


@pytest.mark.parametrize("name", ["03-01-05-01-01-01-01.flac", "03-01-04-01-01-01-02.flac"])
def test_a_band_limited_line_barely_moves_the_narrow_band_log_mel(name):
    x = load_audio(DATA / name, 10 * SR)
    line = band_pass(x)
    moved = {}
    for band in [(), (300.0, 3400.0)]:
        mel = LogMel(64, band)
        a, b = mel(torch.from_numpy(x)[None]), mel(torch.from_numpy(line)[None])
        loud = a > a.max() - 8  # frames and bands within 8 nats (35 dB) of the loudest: speech, not digital silence
        moved[band] = float((a - b).abs()[loud].mean())
    assert moved[(300.0, 3400.0)] < 0.35 < 1.0 < moved[()]  # full band: the lowest and highest bands are gone


def test_band_is_checked_and_old_configs_load_full_band():
    assert ModelConfig.from_dict({"encoder": SMALL}).encoder.band_hz == ()
    for bad in ([300], [3400, 300], [300, 9000], ["low", 3400], [True, 3400]):
        with pytest.raises(ConfigError, match="band_hz"):
            ModelConfig.from_dict({"encoder": {**SMALL, "band_hz": bad}})
    with pytest.raises(ConfigError, match="built-in"):
        ModelConfig.from_dict({"encoder": {"kind": "hf", "name": "x", "band_hz": [300, 3400]}})


def test_narrow_band_model_round_trips_through_a_model_dir(tmp_path):
    from serlive.model import Predictor, save_model_dir

    cfg = ModelConfig.from_dict({"encoder": {**SMALL, "band_hz": [300, 3400]}, "spectral_stats": True,
                                 "pitch_stats": True, "dimensional": False})
    torch.manual_seed(0)
    model = SERModel(cfg).eval()
    assert torch.equal(model.encoder.frontend.fbank, mel_filterbank(16, band_hz=(300.0, 3400.0)))
    assert torch.equal(model.spectral.frontend.fbank, mel_filterbank(64, band_hz=(300.0, 3400.0)))  # both
    path = save_model_dir(tmp_path / "m", model)
    loaded = Predictor.from_dir(path, use_knn=False)
    assert loaded.config.encoder.band_hz == (300, 3400)
    x = load_audio(DATA / "03-01-03-01-01-01-01.flac", 10 * SR)
    assert np.allclose(loaded.predict(x).probs, Predictor(model, None).predict(x).probs, atol=1e-5)
