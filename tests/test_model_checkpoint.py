"""Offline Hugging Face loading and the model-directory round trip."""

import json

import numpy as np
import pytest
import torch

from serlive.model import (CheckpointError, EncoderConfig, KnnConfig, KnnDatastore, ModelConfig, Predictor,
                           SERModel, load_model_dir, save_model_dir)


def test_tiny_wavlm_save_pretrained_round_trip_offline(tiny_wavlm_dir):
    from transformers import WavLMModel

    a = WavLMModel.from_pretrained(tiny_wavlm_dir).eval()
    b = WavLMModel.from_pretrained(tiny_wavlm_dir, local_files_only=True).eval()
    x = torch.randn(2, 16_000)
    with torch.no_grad():
        torch.testing.assert_close(a(x).last_hidden_state, b(x).last_hidden_state, rtol=0, atol=0)


def _store(cfg, n=40):
    rng = np.random.default_rng(0)
    return KnnDatastore(rng.standard_normal((n, cfg.embed_dim)), rng.integers(0, len(cfg.labels), n), len(cfg.labels))


@pytest.mark.parametrize("kind", ["builtin", "hf", "builtin+stats"])
def test_checkpoint_round_trip_is_bit_identical(kind, tiny_wavlm_dir, tmp_path):
    enc = EncoderConfig(kind="hf", name=str(tiny_wavlm_dir)) if kind == "hf" else EncoderConfig(dim=32, heads=4)
    stats = kind.endswith("stats")
    cfg = ModelConfig(encoder=enc, knn=KnnConfig(k=5, alpha=0.4), gap_std=stats, spectral_stats=stats)
    model = SERModel(cfg)
    if stats:  # a standardisation that differs from the initial one, so losing it would show
        model.spectral.standardise_with(torch.randn(10, model.spectral.out_dim) * 2 + 1)
    model.eval()
    store = _store(cfg)
    save_model_dir(tmp_path / "m", model, store, metrics={"ua": 0.5})
    waves = [np.random.default_rng(i).standard_normal(16_000 + 999 * i).astype(np.float32) * 0.1 for i in range(3)]
    before = Predictor(model, store).predict_batch(waves)
    again, cfg2, store2, metrics = load_model_dir(tmp_path / "m")
    after = Predictor(again, store2).predict_batch(waves)
    assert metrics == {"ua": 0.5} and cfg2.knn == cfg.knn
    for p, q in zip(before, after):
        assert p.knn and q.knn
        assert p.probs == q.probs and p.valence == q.valence and p.label == q.label
        np.testing.assert_array_equal(p.embedding, q.embedding)


def test_hf_checkpoint_loads_without_the_original_folder(tiny_wavlm_dir, tmp_path):
    import shutil

    src = tmp_path / "wavlm"
    shutil.copytree(tiny_wavlm_dir, src)
    model = SERModel(ModelConfig(encoder=EncoderConfig(kind="hf", name=str(src)))).eval()
    save_model_dir(tmp_path / "m", model)
    shutil.rmtree(src)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model"]["encoder"]["hf_config"]["model_type"] == "wavlm"
    assert "torch" in cfg["versions"]
    load_model_dir(tmp_path / "m")


def _saved(tmp_path):
    save_model_dir(tmp_path / "m", SERModel(ModelConfig(encoder=EncoderConfig(dim=16, heads=2))))
    return tmp_path / "m"


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_dir(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="not a ser-live model directory"):
        load_model_dir(tmp_path)


def test_truncated_weights(tmp_path):
    d = _saved(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model_dir(d)


def test_truncated_config(tmp_path):
    d = _saved(tmp_path)
    text = (d / "config.json").read_text()
    (d / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_dir(d)


def test_incompatible_config(tmp_path):
    d = _saved(tmp_path)
    data = json.loads((d / "config.json").read_text())
    data["model"]["pooling"] = "max"
    (d / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="pooling must be one of"):
        load_model_dir(d)
    data["model"]["pooling"], data["format_version"] = "sr", 99
    (d / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="newer ser-live"):
        load_model_dir(d)


def test_weights_of_another_architecture(tmp_path):
    d = _saved(tmp_path)
    data = json.loads((d / "config.json").read_text())
    data["model"]["encoder"]["dim"] = 32
    (d / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not matching its config|does not match"):
        load_model_dir(d)
