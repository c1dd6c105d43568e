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
from serlive.train.resume import load_checkpoint
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


def crash_at_epoch(monkeypatch, stop: int):
    """Make every Trainer stop with KeyboardInterrupt when it reaches epoch ``stop`` (0-based), as a kill
    would: the checkpoints of the epochs before are on disk. Returns the real ``run_epoch``."""
    original = Trainer.run_epoch

    def crash(self, epoch):
        if epoch == stop:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", crash)
    return original


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_continues_after_the_last_finished_epoch(tmp_path, monkeypatch, ema):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "protocol.max_folds=1", "optim.epochs=3", "loss.scl_lambda=0.1", f"optim.ema={ema}")
    data = fit.load_data(cfg, progress=False)
    reference = fit.run(cfg, tmp_path / "straight", torch.device("cpu"), data=data)
    original = crash_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fit.run(cfg, tmp_path / "broken", torch.device("cpu"), data=data)
    saved = load_checkpoint(tmp_path / "broken" / "fold_0" / "checkpoint.pt")
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
    assert cfg.augment.classifier and cfg.model.pitch_stats and cfg.model.spectral_stats  # the robust recipe
    ge2e = config.load(Path(__file__).parents[1] / "train" / "configs" / "ravdess-ge2e.toml")
    assert ge2e.model.encoder.kind == "ge2e" and ge2e.model.encoder.freeze == "all" and ge2e.run.draws == 8
    assert ge2e.model.pooling == "sr" and ge2e.model.sap_dim == 128 and ge2e.model.gap_std  # the bundled recipe
    # the recipe file is what the bundled model was trained with (the machine's thread count and cache aside)
    import json

    from serlive.model import bundled_model_dir

    shipped = json.loads((bundled_model_dir() / "metrics.json").read_text())["train_config"]
    shipped = json.loads(json.dumps(config.from_dict(shipped).to_dict()))  # options added since it: their defaults
    recipe = json.loads(json.dumps(ge2e.to_dict()))  # tuples as the JSON file has them
    for section in ("augment", "loss", "optim", "model"):  # calibration is ser-train calibrate's, not the recipe's
        keep = lambda d: {k: v for k, v in d.items() if k != "calibration"}  # noqa: E731
        assert keep(recipe[section]) == keep(shipped[section]) | {k: recipe[section][k] for k in ("description", "license")
                                                                  if section == "model"}, section
    assert {k: v for k, v in recipe["run"].items() if k != "num_threads"} == \
        {k: v for k, v in shipped["run"].items() if k != "num_threads"}


def test_evaluate_without_the_bundled_model_says_so(monkeypatch, tmp_path, capsys):
    from serlive.train import evaluate

    monkeypatch.setattr(evaluate, "bundled_model_dir", lambda: tmp_path / "pretrained" / "ravdess-ge2e")
    assert cli.main(["evaluate", "--data", str(MANIFEST)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ravdess-ge2e does not exist" in err


@pytest.mark.parametrize("select,best_epoch,epochs_run", [("ua", 2, 4), ("loss", 4, 5), ("last", 5, 5)])
def test_selection_keeps_the_best_epoch_of_the_chosen_metric(tmp_path, monkeypatch, select, best_epoch, epochs_run):
    """Scripted validation: UA peaks at epoch 2, the loss at epoch 4. ``select="ua"`` keeps epoch 2's
    weights and stops after 2 epochs without a better UA; ``select="loss"`` keeps epoch 4's;
    ``select="last"`` never looks and keeps epoch 5's."""
    from serlive.train.fold import build_model, make_source
    from serlive.train.protocols import make_folds

    cfg = tiny_cfg(tmp_path, f"optim.select='{select}'", "optim.epochs=5", "optim.patience=2")
    data = fit.load_data(cfg, progress=False)
    fold = make_folds(data.utts, cfg.protocol)[0]
    model = build_model(cfg, torch.device("cpu"))
    trainer = Trainer(model, cfg, make_source(cfg, model, data, torch.device("cpu")), fold, tmp_path / "fold",
                      torch.device("cpu"), None)
    scripted = iter([(1.0, 0.30), (0.9, 0.50), (0.8, 0.40), (0.7, 0.45), (0.75, 0.20)])
    marker = model.classifier.bias

    def fake_epoch(rng):
        with torch.no_grad():
            marker.fill_(trainer.state.epoch + 1)  # the weights remember which epoch made them
        return 0.0

    monkeypatch.setattr(trainer, "_train_epoch", fake_epoch)
    monkeypatch.setattr(trainer, "validate", lambda: next(scripted))
    state = trainer.fit()
    assert (state.best_epoch, state.epoch) == (best_epoch, epochs_run)
    assert torch.all(marker == best_epoch)


def test_speech_pad_cuts_training_audio_like_the_predictor(tmp_path):
    """model.speech_pad_s: the AudioSet holds each file cut to its speech span (mask sliced to match),
    the same cut whether waveforms are preloaded or re-read."""
    from serlive.model import trim_to_speech

    whole = fit.load_data(tiny_cfg(tmp_path), progress=False)
    cfg = tiny_cfg(tmp_path, "model.speech_pad_s=0.15")
    cut = fit.load_data(cfg, progress=False)
    lazy = fit.load_data(tiny_cfg(tmp_path, "model.speech_pad_s=0.15", "data.preload=false"), progress=False)
    for i in range(len(whole)):
        want_wave, want_mask = trim_to_speech(whole.wave(i), whole.masks[i], 0.15)
        assert np.array_equal(cut.wave(i), want_wave) and np.array_equal(cut.masks[i], want_mask)
        assert np.array_equal(lazy.wave(i), want_wave) and np.array_equal(lazy.masks[i], want_mask)
    # RAVDESS files open and close with about a second of silence: the cut keeps roughly half.
    assert 0.3 < cut.lengths.sum() / whole.lengths.sum() < 0.8


def test_ema_weights_are_the_moving_average_of_every_step(tmp_path, monkeypatch):
    """optim.ema: after each optimiser step e = d * e + (1 - d) * w (the first step copies w); the
    validated and returned weights are e, checked against that recurrence run by hand."""
    from serlive.train.fold import build_model, make_source
    from serlive.train.protocols import make_folds

    torch.set_num_threads(1)
    decay = 0.8
    cfg = tiny_cfg(tmp_path, f"optim.ema={decay}", "optim.epochs=2", "optim.patience=10", "optim.select='ua'")
    data = fit.load_data(cfg, progress=False)
    fold = make_folds(data.utts, cfg.protocol)[0]
    model = build_model(cfg, torch.device("cpu"))
    trainer = Trainer(model, cfg, make_source(cfg, model, data, torch.device("cpu")), fold, tmp_path / "fold",
                      torch.device("cpu"), None)
    manual, seen = {}, []
    step = trainer._step

    def step_and_track():
        step()
        w = {k: v.detach().clone() for k, v in model.named_parameters()}
        for k, v in w.items():
            manual[k] = v if k not in manual else decay * manual[k] + (1 - decay) * v
        seen.append(w)

    monkeypatch.setattr(trainer, "_step", step_and_track)
    monkeypatch.setattr(trainer, "validate", lambda: (1.0, 0.5 + 0.1 * trainer.state.epoch))  # last epoch is best
    trainer.fit()
    assert len(seen) >= 4
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), manual[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(seen[-1][k], manual[k]) for k in manual)  # not just the last weights


def test_spectral_statistics_are_standardised_on_the_training_speakers(tmp_path):
    from safetensors.torch import load_file

    from serlive.model import SERModel
    from serlive.train.protocols import make_folds

    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "optim.epochs=1", "model.spectral_stats=true", "model.encoder.input_norm='utterance'")
    fit.run(cfg, tmp_path / "run", torch.device("cpu"))
    saved = load_file(str(tmp_path / "run" / "fold_0" / "model" / "model.safetensors"))
    data = fit.load_data(cfg, progress=False)
    fold = make_folds(data.utts, cfg.protocol)[0]
    branch = SERModel(cfg.model).spectral
    raw = torch.cat([branch.raw(torch.from_numpy(data.wave(i))[None], torch.tensor([len(data.wave(i))]),
                                torch.from_numpy(data.masks[i])[None]) for i in fold.train])
    torch.testing.assert_close(saved["spectral.shift"], raw.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(saved["spectral.scale"], raw.std(0).clamp(min=1e-3), rtol=1e-4, atol=1e-4)
