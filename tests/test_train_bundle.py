"""The path to a shipped model: cross-validation, a final run on every speaker with the cross-fold kNN
setting (``--knn-from``), and ``ser-train bundle`` writing the model directory with its evidence."""

from __future__ import annotations

import json

import torch

from serlive.model import Predictor
from serlive.train import cli

from .test_train_fit import TINY


def test_cv_then_final_then_bundle(tmp_path, capsys):
    torch.set_num_threads(1)
    sets = [a for s in TINY + [f"data.cache_dir='{tmp_path / 'vad'}'", "optim.epochs=1", "optim.select='last'"]
            for a in ("--set", s)]
    assert cli.main(["fit", *sets, "--set", "protocol.max_folds=2", "--out", str(tmp_path / "cv")]) == 0
    chosen = json.loads((tmp_path / "cv" / "metrics.json").read_text())["knn_final"]
    table = [line for line in (tmp_path / "cv" / "metrics.md").read_text().splitlines() if line.startswith("|")]
    assert "| model + kNN (cross-fold k, α) |" in table[0]
    assert len({line.count("|") for line in table}) == 1  # every row, the header too, has the same columns
    assert cli.main(["fit", *sets, "--set", "protocol.kind='all'", "--knn-from", str(tmp_path / "cv"),
                     "--out", str(tmp_path / "final")]) == 0
    final = json.loads((tmp_path / "final" / "fold_0" / "result.json").read_text())
    assert final["n_train"] == final["n_val"] and final["knn"]["k"] == chosen["k"]  # every speaker trains
    capsys.readouterr()
    assert cli.main(["bundle", "--cv", str(tmp_path / "cv"), "--final", str(tmp_path / "final"),
                     "--out", str(tmp_path / "model")]) == 0
    assert "2-fold UA" in capsys.readouterr().out
    predictor = Predictor.from_dir(tmp_path / "model")
    assert (predictor.config.knn.k, predictor.config.knn.alpha) == (chosen["k"], chosen["alpha"])
    # A final run trained without the CV's setting (in parallel with it) is bundled with it all the same.
    assert cli.main(["fit", *sets, "--set", "protocol.kind='all'", "--set", "knn.tune=false",
                     "--out", str(tmp_path / "final2")]) == 0
    assert cli.main(["bundle", "--cv", str(tmp_path / "cv"), "--final", str(tmp_path / "final2"),
                     "--out", str(tmp_path / "model2")]) == 0
    again = Predictor.from_dir(tmp_path / "model2").config.knn
    assert (again.k, again.alpha) == (chosen["k"], chosen["alpha"])
    # Bundling over a model directory replaces it, but keeps its hand-written card.
    (tmp_path / "model2" / "README.md").write_text("# card\n")
    (tmp_path / "model2" / "robustness.md").write_text("stale figures\n")
    (tmp_path / "model2" / "LICENSE-weights.txt").write_text("Apache License 2.0\n")
    assert cli.main(["bundle", "--cv", str(tmp_path / "cv"), "--final", str(tmp_path / "final2"),
                     "--out", str(tmp_path / "model2")]) == 0
    assert (tmp_path / "model2" / "README.md").read_text() == "# card\n"
    assert (tmp_path / "model2" / "LICENSE-weights.txt").read_text() == "Apache License 2.0\n"  # and the licences
    assert not (tmp_path / "model2" / "robustness.md").exists()
    # The level check: with no gain the "gain" column is the clean one, fold by fold.
    from serlive.train import gain_check

    same = gain_check.run(tmp_path / "cv", 0.0)
    assert [r["fold"] for r in same["per_fold"]] == [0, 1]
    assert all(r["gain"] == r["clean"] for r in same["per_fold"]) and 0 <= same["clean"]["mean"] <= 1
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["cross_validation"]["folds"] == 2
    base = metrics["baseline_same_folds"]
    assert set(base) >= {"as_is", "gain_free", "as_is_test_gain_10db", "gain_free_test_gain_10db"}
    assert len(base["as_is"]["per_fold"]) == 2 and metrics["train_config"]["protocol"]["kind"] == "all"
    assert not (tmp_path / "model.staging").exists()
    # Calibration measured on the CV's folds and written into the bundled directory.
    capsys.readouterr()
    assert cli.main(["calibrate", "--cv", str(tmp_path / "cv"), "--orders", "2", "--apply", str(tmp_path / "model")]) == 0
    assert "online per-speaker protocol (2 orders)" in capsys.readouterr().out
    cal = json.loads((tmp_path / "cv" / "calibration.json").read_text())
    assert [f["fold"] for f in cal["per_fold"]] == [0, 1] and all(0 <= f["ua_online"] <= 1 for f in cal["per_fold"])
    ref = cal["final"]["ood_reference"]
    assert len(ref) == 21 and ref == sorted(ref) and cal["final"]["temperature"] > 0
    final = cal["final"]
    assert final["speech_limit"] > ref[10] and final["shift_beta"] >= 0 and final["min_confidence"] == 0.4
    assert set(cal["shipped_path"]) == {"test", "degraded", "short"} and cal["shipped_path"]["degraded"]["n"] == 2 * cal["shipped_path"]["test"]["n"] > 0
    from serlive.train.calibrate import SHORT_PREFIXES_S  # the short split: each test utterance cut at 5 lengths

    assert cal["shipped_path"]["short"]["n"] == len(SHORT_PREFIXES_S) * cal["shipped_path"]["test"]["n"]
    assert final["short_frames"] > 0 and final["short_gamma"] >= 0
    calibrated = Predictor.from_dir(tmp_path / "model")
    assert calibrated.config.calibration.temperature == cal["final"]["temperature"] and calibrated.can_adapt
    assert calibrated.config.calibration.speech_limit == final["speech_limit"]
    assert (calibrated.config.calibration.short_frames, calibrated.config.calibration.short_gamma) == \
        (final["short_frames"], final["short_gamma"])
    assert (calibrated.config.knn.k, calibrated.config.knn.alpha) == (chosen["k"], chosen["alpha"])
    wave = torch.randn(16000).numpy() * 0.05
    p = calibrated.predict(wave)
    assert p.ood is not None and 0 <= p.ood <= 1
    assert "calibration" in json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert (tmp_path / "model" / "calibration.md").read_text() == (tmp_path / "cv" / "calibration.md").read_text()


def test_bundle_and_knn_from_refuse_what_is_not_a_run(tmp_path, capsys):
    assert cli.main(["fit", "--knn-from", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json does not exist" in err and "finished ser-train fit run" in err
    assert cli.main(["bundle", "--cv", str(tmp_path), "--final", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
