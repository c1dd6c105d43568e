"""The classic baseline the bundled model is compared with."""

import json
from pathlib import Path

import numpy as np

from serlive.model.frames import num_frames
from serlive.train import cli
from serlive.train.baseline import LinearBaseline, utterance_features
from tests.signals import voiced

MANIFEST = Path(__file__).parent / "data" / "ravdess" / "manifest.csv"


def test_linear_baseline_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 10)) * 4
    y = np.repeat(np.arange(3), 40)
    x = (centres[y] + rng.standard_normal((120, 10))).astype(np.float32)
    model = LinearBaseline(l2=1e-3).fit(x[::2], y[::2], 3)
    p = model.predict_proba(x[1::2])
    assert (p.argmax(1) == y[1::2]).mean() >= 0.95
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_features_see_only_speech_frames_and_the_speech_ratio():
    wave = np.concatenate([np.zeros(8000, np.float32), voiced(1.0)])
    mask = np.zeros(num_frames(len(wave)), bool)
    mask[30:60] = True
    f = utterance_features(wave, mask)
    assert f.shape == (4 * 64 + 4,) and np.isfinite(f).all()
    assert f[-1] == np.float32(mask.mean())
    louder = utterance_features(wave * 4, mask)
    assert louder[0] > f[0]  # absolute level is kept (unlike a per-frame normalisation)
    # Gain-free: a x4 gain (12 dB) changes nothing but the log floor; the spectral shape is kept.
    quiet, loud = utterance_features(wave, mask, gain_free=True), utterance_features(wave * 4, mask, gain_free=True)
    np.testing.assert_allclose(quiet, loud, atol=1e-3)
    np.testing.assert_allclose(quiet[:64], f[:64] - f[:64].mean(), atol=1e-5)
    assert quiet[256] == 0 and np.ptp(quiet[:64]) > 1


def test_cli_baseline_cross_validates_on_the_same_folds(capsys):
    code = cli.main(["baseline", "--set", f"data.manifest='{MANIFEST}'", "--set", "data.label_map='ravdess'",
                     "--set", "protocol.folds=3"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    tested = [s for f in result["folds"] for s in f["test_speakers"]]
    assert len(result["folds"]) == 3 and sorted(tested) == sorted(set(tested))
    assert 0.0 <= result["ua"]["mean"] <= 1.0 and result["ua"]["n"] == 3


def test_cli_baseline_train_only_fits_on_the_training_speakers(capsys):
    args = ["baseline", "--set", f"data.manifest='{MANIFEST}'", "--set", "data.label_map='ravdess'",
            "--set", "protocol.folds=3"]
    assert cli.main(args + ["--train-only"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["refit_on_val"] is False and result["ua"]["n"] == 3


def test_baseline_on_some_folds_only_matches_those_folds_of_the_full_run():
    from serlive.train import config
    from serlive.train.baseline import cross_validate

    cfg = config.load(None, [f"data.manifest='{MANIFEST}'", "data.label_map='ravdess'", "protocol.folds=3"])
    full = cross_validate(cfg)
    some = cross_validate(cfg, folds_only={0, 2})
    assert [f["fold"] for f in some["folds"]] == [0, 2] and some["ua"]["n"] == 2
    assert [f["ua"] for f in some["folds"]] == [f["ua"] for f in full["folds"] if f["fold"] in (0, 2)]
