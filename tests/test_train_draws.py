"""Training a frozen GE2E encoder from perturbed draws computed once (train/draws.py), on real RAVDESS
files: the draws are perturbed and re-masked, cached and reused, each fold standardises from its own
training speakers, the fit learns and writes a model directory that predicts, and the settings that
cannot work are refused in one sentence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serlive.model import ConfigError, Predictor
from serlive.train import fit, losses
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
    model, data, source = draw_source(cfg)
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


def draw_source(cfg):
    """The fixture's draws (read from its cache): the model, the data and the source."""
    data = fit.load_data(cfg, progress=False)
    model = build_model(cfg, torch.device("cpu"))
    return model, data, DrawSource(model, data, cfg.augment, True, 2, 4, 1, torch.device("cpu"), cfg.run.seed,
                                   cfg.data.cache_dir)


def test_training_batches_mix_draws_and_views(trained):
    tmp, cfg, _ = trained
    model, data, source = draw_source(cfg)
    batch = next(source.train_batches(np.arange(8), np.random.default_rng(0)))
    assert batch.hidden.shape[0] == 8 and batch.hidden.shape[2] == 768  # 4 rows, then their 4 views
    assert torch.equal(batch.index[:4], batch.index[4:]) and batch.extra.shape == (8, model.spectral.out_dim)
    clean = next(source.eval_batches(np.arange(4), 4))
    assert clean.hidden.shape[0] == 4


def test_anchored_batches_end_with_the_clean_forms_and_pick_the_same_draws(trained):
    tmp, cfg, _ = trained
    _, _, source = draw_source(cfg)
    plain = next(source.train_batches(np.arange(8), np.random.default_rng(0)))
    batch = next(source.train_batches(np.arange(8), np.random.default_rng(0), anchors=True))
    assert batch.hidden.shape[0] == 12  # 4 draws, their 4 views, their 4 clean forms
    assert torch.equal(batch.index[:4], batch.index[8:]) and torch.equal(batch.labels[:4], batch.labels[8:])
    assert torch.equal(batch.hidden[:8], plain.hidden[:8]), "the anchors change nothing else in the batch"
    clean = next(source.eval_batches(batch.index[8:].numpy(), 4))
    order = [clean.index.tolist().index(i) for i in batch.index[8:].tolist()]
    t = clean.hidden.shape[1]
    assert torch.allclose(batch.hidden[8:, :t], clean.hidden[order]), "the anchors are the clean utterances"


def test_consistency_trains_each_draw_against_its_clean_form(trained, monkeypatch):
    tmp, cfg, _ = trained
    seen = []
    real = losses.clean_consistency

    def spy(perturbed, clean):
        seen.append((perturbed.shape[0], clean.shape[0], clean.requires_grad))
        return real(perturbed, clean)

    monkeypatch.setattr(losses, "clean_consistency", spy)
    cfg = cfg.replace(loss=dataclasses.replace(cfg.loss, consistency=1.0))
    fit.run(cfg, tmp / "consistency", torch.device("cpu"))  # the draws come from the fixture's cache
    result = json.loads((tmp / "consistency" / "fold_0" / "result.json").read_text())
    assert len(result["history"]) == 4 and all(np.isfinite(h["train_loss"]) for h in result["history"])
    assert Predictor.from_dir(tmp / "consistency" / "fold_0" / "model").config.encoder.kind == "ge2e"
    assert seen and all(p == c for p, c, _ in seen), "one clean anchor for each perturbed draw"
    assert any(grad for _, _, grad in seen), "the anchors go through the network (their gradient is cut in the loss)"


def test_consistency_needs_draws_and_a_weight_of_zero_or_more(tmp_path):
    with pytest.raises(ConfigError, match="loss.consistency .* set run.draws"):
        tiny_cfg(tmp_path, "loss.consistency=1.0")
    with pytest.raises(ConfigError, match="must not be negative"):
        tiny_cfg(tmp_path, "loss.consistency=-1.0")


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


def test_babble_exclusions_hold_out_each_groups_test_speakers_and_pools_never_hear_them():
    from types import SimpleNamespace

    from serlive.train.config import ProtocolConfig
    from serlive.train.draws import babble_exclusions, babble_pools
    from serlive.train.protocols import make_folds

    names = [f"{s:02d}" for s in range(1, 7) for _ in range(3)]
    utts = [SimpleNamespace(speaker=s, session=s) for s in names]
    speakers = np.array(names)
    folds = make_folds(utts, ProtocolConfig(kind="loso"))
    ex = babble_exclusions(speakers, folds, 2)
    first, second = ex[folds[0].index], ex[folds[-1].index]
    assert len(first) == len(second) == 3 and not first & second, "two groups of three folds, disjoint held-out halves"
    for fold in folds:
        tested = set(speakers[fold.test])
        assert tested <= ex[fold.index]
        for s, pool in babble_pools(speakers, ex[fold.index]).items():
            heard = set(speakers[pool])
            assert not heard & tested and s not in heard and heard, f"fold {fold.index}: {s}'s babble heard {heard}"
    own = babble_pools(speakers, None)
    assert all(set(speakers[p]) == {s} for s, p in own.items()), "0 groups: each speaker's own voice, as before"
    every = make_folds(utts, ProtocolConfig(kind="all"))
    assert babble_exclusions(speakers, every, 2) == {0: frozenset()}, "a final model holds nobody out"
    with pytest.raises(ConfigError, match="no other speaker's voice"):
        babble_pools(speakers, frozenset(names) - {"01"})


def test_draws_babble_is_other_speakers_outside_the_held_out_ones(tmp_path, monkeypatch):
    """What the perturbation actually mixes in: every babble pool the draws hand to the noise is other speakers'
    utterances, never the held-out speaker's; with no exclusion set, the speaker's own (the old cache key)."""
    from serlive.train import perturb

    weights, _ = fake_resemblyzer(tmp_path / "pretrained.pt")
    cfg = tiny_cfg(tmp_path, *GE2E, f"model.encoder.name='{weights}'", "augment.classifier_families=['babble']",
                   "augment.classifier_chain=1")
    data = fit.load_data(cfg, progress=False)
    speakers = np.array([u.speaker for u in data.utts])
    model = build_model(cfg, torch.device("cpu"))
    heard: list[set[str]] = []
    real = perturb.babble_noise

    def spy(n, rng, pool, talkers=6):
        heard.append({speakers[j] for x in pool for j in range(len(data)) if np.shares_memory(x, data.recording(j))})
        return real(n, rng, pool, talkers)

    monkeypatch.setattr(perturb, "babble_noise", spy)

    def build(exclude):
        _MEMO.clear()
        heard.clear()
        DrawSource(model, data, cfg.augment, False, 1, 4, 1, torch.device("cpu"), 0, None, exclude)
        return [h for h in heard]

    held = sorted(set(speakers))[0]
    others = build(frozenset({held}))
    assert len(others) == len(data), "every utterance's one draw is babble"
    assert all(h and held not in h for h in others)
    assert sum(len(h) > 1 for h in others) == int((speakers == held).sum()), "the held-out speaker hears both others"
    own = build(None)
    assert all(len(h) == 1 for h in own)
    key = DrawSource.key
    assert key(model, data, cfg.augment, False, 1, 0) == key(model, data, cfg.augment, False, 1, 0, None)
    assert key(model, data, cfg.augment, False, 1, 0, frozenset()) != key(model, data, cfg.augment, False, 1, 0, None)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("groups", [0, 3])
def test_fit_hands_each_fold_its_groups_held_out_speakers(tmp_path, monkeypatch, groups):
    weights, _ = fake_resemblyzer(tmp_path / "pretrained.pt")
    cfg = tiny_cfg(tmp_path, *GE2E, f"model.encoder.name='{weights}'", f"run.babble_groups={groups}")
    seen = []

    def record(self, *args, babble_exclude=None, **kwargs):
        seen.append(babble_exclude)
        raise _Stop

    monkeypatch.setattr(DrawSource, "__init__", record)
    with pytest.raises(_Stop):
        fit.run(cfg, tmp_path / "run", torch.device("cpu"), only_folds=[0])
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["run"]["babble_groups"] == groups
    data = fit.load_data(cfg, progress=False)
    from serlive.train.protocols import make_folds

    fold = make_folds(data.utts, cfg.protocol)[0]
    assert seen == [None if groups == 0 else frozenset(fold.test_groups)]


def test_babble_groups_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="run.babble_groups"):
        tiny_cfg(tmp_path, "run.babble_groups=-1")
