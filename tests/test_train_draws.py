"""Training a frozen GE2E encoder from perturbed draws computed once (train/draws.py), on real RAVDESS
files: the draws are perturbed and re-masked, cached and reused, each fold standardises from its own
training speakers, the fit learns and writes a model directory that predicts, and the settings that
cannot work are refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serlive.model import ConfigError, Predictor
from serlive.train import fit
from serlive.train.draws import _MEMO, DrawSource
from serlive.train.fold import build_model

from .test_model_ge2e import fake_resemblyzer
from .test_train_fit import DATA, tiny_cfg

GE2E = ["model.encoder.kind='ge2e'", "model.encoder.freeze='all'", "model.gap_std=true", "model.spectral_stats=true",
        "model.pitch_stats=true", "augment.classifier=true", "augment.classifier_codec_p=0.0",
        "augment.classifier_p=1.0", "run.draws=2", "loss.scl_lambda=0.1", "model.speech_pad_s=0.15"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("draws")
    weights, _ = fake_resemblyzer(tmp / "pretrained.pt")
    cfg = tiny_cfg(tmp, *GE2E, f"model.encoder.name='{weights}'", "optim.epochs=4", "optim.lr=3e-3")
    _MEMO.clear()
    summary = fit.run(cfg, tmp / "run", torch.device("cpu"))
    return tmp, cfg, summary


def test_fit_on_draws_learns_and_writes_a_model_that_predicts(trained):
    tmp, _, summary = trained
    result = json.loads((tmp / "run" / "fold_0" / "result.json").read_text())
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert list((tmp / "vad").glob("draws-*.pt")), "the draws are cached in data.cache_dir"
    predictor = Predictor.from_dir(tmp / "run" / "fold_0" / "model")
    assert predictor.config.encoder.kind == "ge2e"
    enc = predictor.model.encoder
    assert not torch.allclose(enc.shift, torch.zeros_like(enc.shift)), "the fold's standardisation is saved"
    audio, rate = sf.read(DATA / "03-01-05-01-01-01-01.flac")
    pred = predictor.predict(audio, rate)
    assert pred.label in ("angry", "happy", "neutral", "sad") and 0.25 <= pred.confidence <= 1


def test_draws_are_perturbed_remasked_and_reused(trained, monkeypatch):
    tmp, cfg, _ = trained
    data = fit.load_data(cfg, progress=False)
    model = build_model(cfg, torch.device("cpu"))
    source = DrawSource(model, data, cfg.augment, True, 2, 4, 1, torch.device("cpu"), cfg.run.seed, cfg.data.cache_dir)
    n = len(data)
    assert len(source.clean) == len(source.rows) == len(source.view_rows) == n
    changed = sum(not torch.equal(source.rows[i][0][0], source.clean[i][0]) for i in range(n))
    assert changed == n, "classifier_p = 1: every draw is perturbed"
    assert any(not torch.equal(source.rows[i][0][1], source.clean[i][1]) for i in range(n)), \
        "the VAD runs again on perturbed audio"
    assert any(len(source.rows[i][0][1]) != len(source.clean[i][1]) for i in range(n)), \
        "the whole recording is perturbed and cut again to the speech span the VAD finds in it"
    # a fresh process (empty memory) reads the file instead of perturbing again
    _MEMO.clear()
    monkeypatch.setattr(DrawSource, "_build", lambda *a, **k: pytest.fail("rebuilt instead of read"))
    again = DrawSource(model, data, cfg.augment, True, 2, 4, 1, torch.device("cpu"), cfg.run.seed, cfg.data.cache_dir)
    assert torch.equal(again.rows[3][1][0], source.rows[3][1][0])


def test_training_batches_mix_draws_and_views(trained):
    tmp, cfg, _ = trained
    data = fit.load_data(cfg, progress=False)
    model = build_model(cfg, torch.device("cpu"))
    source = DrawSource(model, data, cfg.augment, True, 2, 4, 1, torch.device("cpu"), cfg.run.seed, cfg.data.cache_dir)
    batch = next(source.train_batches(np.arange(8), np.random.default_rng(0)))
    assert batch.hidden.shape[0] == 8 and batch.hidden.shape[2] == 768  # 4 rows, then their 4 views
    assert torch.equal(batch.index[:4], batch.index[4:]) and batch.extra.shape == (8, model.spectral.out_dim)
    clean = next(source.eval_batches(np.arange(4), 4))
    assert clean.hidden.shape[0] == 4


def test_draws_need_a_frozen_ge2e_encoder(tmp_path):
    cfg = tiny_cfg(tmp_path, "run.draws=2", "augment.classifier=true")  # the built-in encoder
    with pytest.raises(ConfigError, match="run.draws needs a frozen GE2E encoder"):
        fit.run(cfg, tmp_path / "run", torch.device("cpu"))


def test_perturbed_rows_are_whole_recordings_cut_where_the_vad_hears_speech(tmp_path):
    import dataclasses

    from serlive.model import num_frames
    from serlive.train.augment import TrainAugment
    from serlive.train.batching import collate, perturbed_rows

    cfg = tiny_cfg(tmp_path, "model.speech_pad_s=0.15", "augment.classifier=true", "augment.classifier_codec_p=0.0")
    data = fit.load_data(cfg, progress=False)
    idx = list(range(8))
    untouched = TrainAugment(dataclasses.replace(cfg.augment, classifier_p=0.0), [data.wave(0)])
    batch = collate(data, idx, None, np.random.default_rng(0), untouched)
    for r, i in enumerate(idx):  # nothing drawn: exactly the clean cut and its mask
        n = len(data.wave(i))
        assert int(batch.lengths[r]) == n and np.array_equal(batch.waves[r, :n].numpy(), data.wave(i))
        assert np.array_equal(batch.speech[r, : len(data.masks[i])].numpy(), data.masks[i])
    noisy = TrainAugment(dataclasses.replace(cfg.augment, classifier_p=1.0, classifier_chain=1, classifier_families=("pink",),
                                             classifier_snr_db=(0.0, 0.0)), [data.wave(0)])
    waves, masks = perturbed_rows(data, idx, noisy, np.random.default_rng(0))
    assert all(len(m) == num_frames(len(w)) for w, m in zip(waves, masks))
    # the noise fills the recording's pauses too; at 0 dB pink noise the VAD hears dense speech there, so the cut grows
    assert sum(map(len, waves)) > sum(len(data.wave(i)) for i in idx)
    assert max(map(len, waves)) <= data.max_samples
