"""Dereverberation (encoder.dereverb, WPE): a convolutive tail built in the STFT domain is predicted and taken
back out (the clean STFT recovered), padding and gain change nothing, the GE2E front end and the spectral
statistics run with it, and old model directories (no ``dereverb`` key) load with it off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serlive.model import ConfigError, ModelConfig
from serlive.model.config import EncoderConfig
from serlive.model.dereverb import filter_frames, frames_for, wpe
from serlive.model.encoders import length_mask
from serlive.model.ge2e import GE2EEncoder
from serlive.model.spectral import SpectralStats
from serlive.train.data import load_audio

SR = 16000
DATA = Path(__file__).parent / "data" / "ravdess"


def speech_like(b: int, f: int, t: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """Complex STFT cells whose level moves from frame to frame (``spread`` 1: by about 9 dB, as speech's does)."""
    g = torch.Generator().manual_seed(seed)
    envelope = torch.exp(spread * torch.randn(b, 1, t, generator=g))
    phase = torch.randn(b, f, t, generator=g) + 1j * torch.randn(b, f, t, generator=g)
    return (envelope * phase).to(torch.complex64)


def recursive_room(s: torch.Tensor, delay: int, tail: torch.Tensor) -> torch.Tensor:
    """WPE's own model of a room: in every bin, the observation is ``s`` plus ``tail[f, k]`` times the
    observation ``delay + k`` frames back."""
    y = s.clone()
    for t in range(delay, s.shape[-1]):
        for k in range(min(tail.shape[1], t - delay + 1)):
            y[..., t] += tail[:, k] * y[..., t - delay - k]
    return y


def convolutive_room(s: torch.Tensor, delay: int, tail: torch.Tensor) -> torch.Tensor:
    """``s`` plus, in every bin, ``tail[f, k]`` times ``s`` ``delay + k`` frames back."""
    y = s.clone()
    for k in range(tail.shape[1]):
        y[..., delay + k:] += tail[:, k, None] * s[..., : -(delay + k)]
    return y


def a_tail(f: int, taps: int, seed: int, gain: float = 0.6) -> torch.Tensor:
    """A tail that decays frame by frame, with a different phase and gain in every bin."""
    g = torch.Generator().manual_seed(seed)
    decay = gain * torch.exp(-0.5 * torch.arange(taps))
    return decay * torch.complex(torch.randn(f, taps, generator=g), torch.randn(f, taps, generator=g)) / 2 ** 0.5


def error(x: torch.Tensor, s: torch.Tensor) -> float:
    return float((x - s).abs().pow(2).sum() / s.abs().pow(2).sum())


# WPE's own model is recovered exactly, even with levels 26 dB apart; a convolutive room's tail, which the
# observation's past predicts only in part, is cut by a quarter or more at speech's level changes
@pytest.mark.parametrize("room, spread, tail, left", [(recursive_room, 3.0, 0.3, 0.001), (convolutive_room, 1.0, 0.6, 0.8)])
def test_a_reverberant_tail_is_predicted_from_the_past_and_taken_out(room, spread, tail, left):
    b, f, t, delay, taps = 2, 6, 400, 3, 4
    s = speech_like(b, f, t, 0, spread)
    y = room(s, delay, a_tail(f, taps, 1, tail))
    x = wpe(y, torch.ones(b, t, dtype=torch.bool), delay, taps)
    assert error(y, s) > 0.1 and error(x, s) < left * error(y, s), (error(y, s), error(x, s))
    # the filter starts `delay` frames back: the first frames (nothing to predict them from) are untouched
    assert torch.allclose(x[..., :delay], y[..., :delay])


def test_dry_input_whose_past_predicts_nothing_passes_nearly_unchanged():
    s = speech_like(1, 8, 500, 2)
    assert error(wpe(s, torch.ones(1, 500, dtype=torch.bool), 3, 10), s) < 0.05


def test_padding_and_gain_change_nothing():
    s = convolutive_room(speech_like(2, 5, 300, 3), 3, a_tail(5, 3, 4))
    lengths = torch.tensor([300, 170])
    valid = length_mask(lengths, 300)
    s[1, :, 170:] = 0.0
    both = wpe(s, valid, 3, 3)
    alone = wpe(s[1:, :, :170], torch.ones(1, 170, dtype=torch.bool), 3, 3)
    assert torch.allclose(both[1, :, :170], alone[0], rtol=1e-3, atol=1e-4 * float(alone.abs().max()))
    assert both[1, :, 170:].eq(0).all()
    assert torch.allclose(wpe(1e3 * s, valid, 3, 3), 1e3 * both, rtol=1e-3, atol=1e-3 * float(both.abs().max()))
    assert wpe(s[..., :3], valid[:, :3], 3, 3) is not None  # shorter than the delay: returned as it is


def test_the_delay_and_span_round_up_to_whole_frames():
    assert frames_for(0.03, 0.01) == 3 and frames_for(0.03, 0.02) == 2 and frames_for(0.1, 0.02) == 5
    assert frames_for(0.001, 0.02) == 1
    assert filter_frames(0.01) == (3, 10) and filter_frames(0.02) == (2, 5)  # the two front ends' hops


def test_the_front_ends_run_with_it_on_real_speech():
    x = torch.from_numpy(load_audio(DATA / "03-01-05-01-01-01-01.flac", 10 * SR))[None]
    lengths = torch.tensor([x.shape[1]])
    plain = GE2EEncoder(EncoderConfig(kind="ge2e", freeze="all"))
    dry = GE2EEncoder(EncoderConfig(kind="ge2e", freeze="all", dereverb=True))
    a, b = plain.mel(x, lengths), dry.mel(x, lengths)
    assert a.shape == b.shape and torch.isfinite(b).all()
    assert torch.allclose(a.sum(), b.sum(), rtol=1e-4)  # the level is restored to the -30 dBFS item's
    assert float((a - b).abs().sum() / a.sum()) < 0.25  # studio speech: a dry room, little to take out
    speech = torch.ones(1, x.shape[1] // 320, dtype=torch.bool)
    stats = SpectralStats(dereverb=True).raw(x, lengths, speech)
    assert stats.shape == (1, SpectralStats().out_dim) and torch.isfinite(stats).all()


def test_old_configs_load_with_it_off_and_bad_values_are_one_sentence():
    old = ModelConfig.from_dict({"encoder": {"kind": "ge2e", "freeze": "all"}, "labels": ["a", "b"]})
    assert old.encoder.dereverb is False
    for bad in (1, "yes", None):
        with pytest.raises(ConfigError, match="encoder.dereverb"):
            EncoderConfig(kind="ge2e", dereverb=bad)
    with pytest.raises(ConfigError, match="encoder.dereverb"):
        EncoderConfig(kind="builtin", dereverb=True)
