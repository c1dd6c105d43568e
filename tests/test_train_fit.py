"""End to end on real RAVDESS files (tests/data/ravdess): fit, model directory, Predictor, resume,
the VAD cache, evaluate and the CLI's error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serlive.model import Predictor
from serlive.train import cache as cache_module
from serlive.train import cli, config, fit
from serlive.train.trainer import Trainer

DATA = Path(__file__).parent / "data" / "ravdess"
MANIFEST = DATA / "manifest.csv"

TINY = [
    f"data.manifest='{MANIFEST}'", "data.label_map='ravdess'",
    "protocol.folds=3", "protocol.max_folds=1",
    "optim.epochs=4", "optim.batch_size=4", "optim.lr=3e-3", "optim.patience=10", "optim.warmup_ratio=0.1",
    "model.dimensional=false", "model.max_duration_s=3.0", "model.embed_dim=16",
    "model.encoder.dim=32", "model.encoder.n_mels=32", "model.encoder.conv_layers=1",
    "model.encoder.transformer_layers=1", "model.encoder.heads=2", "model.encoder.freeze='none'",
    "knn.k_max=4", "knn.alpha_steps=3", "run.plots=false", "run.num_threads=1",
]


def tiny_cfg(tmp_path: Path, *extra: str):
    return config.load(None, TINY + [f"data.cache_dir='{tmp_path / 'vad'}'", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("fit")
    cfg = tiny_cfg(tmp)
    summary = fit.run(cfg, tmp / "run", torch.device("cpu"))
    return tmp, cfg, summary


def test_fit_lowers_training_loss_and_writes_a_loadable_model(trained):
    tmp, _, summary = trained
    result = json.loads((tmp / "run" / "fold_0" / "result.json").read_text())
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert summary["folds"] == 1 and 0 <= summary["test"]["ua"]["mean"] <= 1
    assert (tmp / "run" / "metrics.md").read_text().startswith("| metric")
    assert json.loads((tmp / "run" / "train_config.json").read_text())["data"]["label_map"] == "ravdess"
    predictor = Predictor.from_dir(tmp / "run" / "fold_0" / "model")
    assert predictor.config.dimensional is False
    assert 1 <= predictor.config.knn.k <= 4 and 0 < predictor.config.knn.alpha < 1
    audio, rate = sf.read(DATA / "03-01-05-01-01-01-01.flac")
    pred = predictor.predict(audio, rate)
    assert pred.label in ("angry", "happy", "neutral", "sad") and pred.valence is None
    assert pred.knn and abs(sum(pred.probs) - 1) < 1e-4


def test_label_map_keeps_calm_as_neutral_and_drops_fearful(trained):
    from serlive.train.data import read_manifest

    utts = read_manifest(MANIFEST, ("angry", "happy", "neutral", "sad"), "ravdess")
    raw = {u.raw_label for u in utts}
    assert len(utts) == 25 and "fearful" not in raw and "calm" in raw
    assert {u.label for u in utts if u.raw_label == "calm"} == {2}


def test_vad_cache_is_hit_on_a_second_run(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    first = fit.load_data(cfg, progress=False)
    assert list(Path(cfg.data.cache_dir).glob("*.npz")) and len(list(Path(cfg.data.cache_dir).glob("*.npz"))) == 25

    def no_vad(*_a, **_k):
        raise AssertionError("speech_mask called although the mask is cached")

    monkeypatch.setattr(cache_module, "speech_mask", no_vad)
    cache = cache_module.MaskCache(cfg.data.cache_dir, cfg.model.vad, first.max_samples)
    second = fit.AudioSet(first.utts, first.max_samples, cache, progress=False)
    assert cache.hits == 25 and cache.misses == 0
    assert all(np.array_equal(a, b) for a, b in zip(first.masks, second.masks))


def test_resume_continues_after_the_last_finished_epoch(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "protocol.max_folds=1", "optim.epochs=3", "loss.scl_lambda=0.1")
    data = fit.load_data(cfg, progress=False)
    reference = fit.run(cfg, tmp_path / "straight", torch.device("cpu"), data=data)
    original = Trainer.run_epoch

    def crash_at_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit.run(cfg, tmp_path / "broken", torch.device("cpu"), data=data)
    saved = torch.load(tmp_path / "broken" / "fold_0" / "checkpoint.pt", weights_only=False)
    assert saved["state"]["epoch"] == 2 and not (tmp_path / "broken" / "fold_0" / "result.json").exists()
    monkeypatch.setattr(Trainer, "run_epoch", original)
    resumed = fit.run(cfg, tmp_path / "broken", torch.device("cpu"), resume=True, data=data)
    history = json.loads((tmp_path / "broken" / "fold_0" / "result.json").read_text())["history"]
    straight = json.loads((tmp_path / "straight" / "fold_0" / "result.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in straight], rel=1e-5)
    assert resumed["per_fold"][0]["ua"] == pytest.approx(reference["per_fold"][0]["ua"])


def test_evaluate_cli_on_the_trained_model(trained, capsys, tmp_path):
    tmp, _, _ = trained
    out_csv = tmp_path / "pred.csv"
    rc = cli.main(["evaluate", "--model", str(tmp / "run" / "fold_0" / "model"), "--data", str(MANIFEST),
                   "--label-map", "ravdess", "--predictions", str(out_csv), "--device", "cpu"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 25 and set(result) >= {"ua", "wa", "recall", "confusion"}
    assert np.sum(result["confusion"]) == 25
    assert len(out_csv.read_text().splitlines()) == 26


def test_cli_bad_input_is_one_sentence_and_nonzero(tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(MANIFEST)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1\n")
    assert cli.main(["fit", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) in [optim]: learning_rate" in err and "Traceback" not in err
    assert cli.main(["fit", "--set", f"data.manifest='{tmp_path / 'missing.csv'}'", "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["fit", "--set", f"data.manifest='{MANIFEST}'", "--set", "data.label_column='mood'",
                     "--out", str(tmp_path / "r")]) == 2
    assert "no 'mood' column" in capsys.readouterr().err


def test_example_config_loads():
    cfg = config.load(Path(__file__).parents[1] / "train" / "configs" / "ravdess-builtin.toml")
    assert cfg.model.dimensional is False and cfg.model.pooling == "sr" and cfg.loss.scl_lambda == 0.1
    assert cfg.data.label_map["calm"] == "neutral"


def test_evaluate_without_the_bundled_model_says_so(monkeypatch, tmp_path, capsys):
    from serlive.train import evaluate

    monkeypatch.setattr(evaluate, "bundled_model_dir", lambda: tmp_path / "pretrained" / "ravdess-builtin")
    assert cli.main(["evaluate", "--data", str(MANIFEST)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ravdess-builtin does not exist" in err
