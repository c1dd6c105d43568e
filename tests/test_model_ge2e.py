"""The GE2E voice encoder: Resemblyzer's front end (checked against librosa's filters), its weights mapped
onto per-layer LSTMs (checked against one 3-layer nn.LSTM), the 20 ms grid, padding and gain invariance,
and what happens when the weights are missing. Random weights in Resemblyzer's file format stand in for
the real ones (the model directory carries those; no download here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serlive.model import ConfigError
from serlive.model.config import EncoderConfig
from serlive.model.encoders import build_encoder, frame_lengths
from serlive.model.ge2e import GE2EEncoder, resemblyzer_weights, slaney_filterbank

DATA = Path(__file__).parent / "data"


def fake_resemblyzer(path: Path, seed: int = 0) -> tuple[Path, torch.nn.LSTM]:
    """A ``pretrained.pt`` laid out as Resemblyzer's (``model_state`` of a 3-layer LSTM plus its linear
    layer), with random weights; returns its path and the 3-layer LSTM it holds."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    state |= {"linear.weight": torch.randn(256, 256), "linear.bias": torch.zeros(256)}
    torch.save({"step": 1, "model_state": state}, path)
    return path, lstm


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path, lstm = fake_resemblyzer(tmp_path_factory.mktemp("ge2e") / "pretrained.pt")
    enc = build_encoder(EncoderConfig(kind="ge2e", name=str(path), freeze="all"))
    enc.load_pretrained()
    return enc.eval(), lstm


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 12))
    return (0.1 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def test_filterbank_is_librosas():
    # librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) from librosa 0.11, what Resemblyzer's front end uses
    reference = np.load(DATA / "librosa_mel_16k_400_40.npy")
    assert np.allclose(slaney_filterbank().numpy(), reference, rtol=1e-4, atol=1e-7)


def test_weights_map_onto_the_three_layers(encoder):
    enc, lstm = encoder
    mel = torch.rand(2, 50, 40)
    with torch.no_grad():
        ours = enc.layers(mel)
        theirs, _ = lstm(mel)
        first = torch.nn.LSTM(40, 256, 1, batch_first=True)
        first.load_state_dict({k: v for k, v in lstm.state_dict().items() if k.endswith("_l0")})
        layer1, _ = first(mel)
    assert ours.shape == (2, 50, 768)
    assert torch.allclose(ours[..., 512:], theirs, atol=1e-6)  # the last layer is the 3-layer LSTM's output
    assert torch.allclose(ours[..., :256], layer1, atol=1e-6)
    assert not torch.allclose(ours[..., :256], ours[..., 256:512])


def test_frames_are_on_the_20ms_grid_and_padding_changes_nothing(encoder):
    enc, _ = encoder
    long, short = speechlike(2.0), speechlike(1.13, seed=1)
    batch = torch.zeros(2, len(long))
    batch[0], batch[1, : len(short)] = torch.from_numpy(long), torch.from_numpy(short)
    with torch.no_grad():
        both, n = enc(batch, torch.tensor([len(long), len(short)]))
        alone, m = enc(torch.from_numpy(short)[None], torch.tensor([len(short)]))
    assert n.tolist() == frame_lengths(torch.tensor([len(long), len(short)])).tolist() == [99, 56]
    assert alone.shape == (1, 56, 768) and m.tolist() == [56]
    assert torch.allclose(both[1, :56], alone[0], atol=1e-5)


def test_a_microphones_gain_changes_nothing(encoder):
    enc, _ = encoder
    x = torch.from_numpy(speechlike(1.5))[None]
    with torch.no_grad():
        a, _ = enc(x, torch.tensor([x.shape[1]]))
        b, _ = enc(0.05 * x, torch.tensor([x.shape[1]]))
    assert torch.allclose(a, b, atol=1e-4)


def test_standardisation_is_kept_in_the_state_dict(encoder):
    enc, _ = encoder
    fresh = GE2EEncoder(EncoderConfig(kind="ge2e", freeze="all"))
    frames = torch.randn(500, 768) * 3 + 1
    fresh.standardise_with(frames)
    state = fresh.state_dict()
    assert {"shift", "scale"} <= set(state) and torch.allclose(state["shift"], frames.mean(0))
    assert not any(p.requires_grad for p in fresh.parameters())


def test_missing_weights_are_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps resemblyzer"):
        resemblyzer_weights("resemblyzer")
    with pytest.raises(ConfigError, match="is not a file"):
        resemblyzer_weights(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"model_state": {"lstm.weight_ih_l0": torch.zeros(3, 3)}}, bad)
    with pytest.raises(ConfigError, match="does not hold a 3-layer"):
        GE2EEncoder(EncoderConfig(kind="ge2e", name=str(bad))).load_pretrained()
