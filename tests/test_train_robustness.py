"""``ser-train robustness`` on a tiny cross-validation run of real RAVDESS files: the table's structure, the
clean condition equal to the folds' own test evaluation, the same figures from a second run, perturbations
that move the predictions, reuse of finished folds, and one-sentence errors."""

from __future__ import annotations

import json

import pytest
import torch

from serlive.train import cli, perturb, robustness

from .test_train_fit import TINY

CONDITIONS = ["white noise 5 dB SNR", "babble noise 10 dB SNR", "reverb RT60 0.3 s", "telephone 300-3400 Hz mu-law",
              "opus 12 kbit/s", "level -20 dB"]
SEEDED = ["white noise 5 dB SNR", "babble noise 10 dB SNR", "reverb RT60 0.3 s", "opus 12 kbit/s"]
"""The conditions a second run repeats: those drawing from the seed, and a codec."""


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("robust")
    extra = [f"data.cache_dir='{tmp / 'vad'}'", "protocol.max_folds=2", "model.speech_pad_s=0.15"]
    sets = [a for s in TINY + extra for a in ("--set", s)]
    assert cli.main(["fit", *sets, "--out", str(tmp / "cv")]) == 0
    return tmp


@pytest.fixture(scope="module")
def benchmark(cv_run):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(cv_run / "cache"))
    first = robustness.run(cv_run / "cv", conditions=robustness.select(",".join(CONDITIONS)))
    second = robustness.run(cv_run / "cv", cv_run / "again.json", robustness.select(",".join(SEEDED)), fresh=True)
    mp.undo()
    return first, second


def test_table_has_every_condition_and_system(benchmark, cv_run):
    summary, _ = benchmark
    assert [c["name"] for c in summary["conditions"]] == ["clean"] + CONDITIONS
    assert summary["folds"] == 2 and summary["systems"] == ["model", "model_knn", "baseline"]
    for entry in summary["conditions"]:
        for system in summary["systems"]:
            assert 0 <= entry[system]["ua"]["mean"] <= 1 and 0 <= entry[system]["wa"]["mean"] <= 1
            assert entry[system]["drop_ua"] == pytest.approx(
                100 * (summary["conditions"][0][system]["ua"]["mean"] - entry[system]["ua"]["mean"]))
        assert 0 <= entry["model"]["ece"]["mean"] <= 1 and "ece" not in entry["baseline"]
        assert entry["model_knn"]["uncertain"]["mean"] is None  # before calibrate: no OOD reference, no figure, not 0
    assert summary["conditions"][0]["model"]["drop_ua"] == 0
    saved = json.loads((cv_run / "cv" / "robustness.json").read_text())
    assert saved["conditions"] == json.loads(json.dumps(summary["conditions"]))
    md = (cv_run / "cv" / "robustness.md").read_text().splitlines()
    assert md[2].startswith("| condition | model UA | model + kNN UA | baseline UA | Δ UA model")
    assert len([row for row in md if row.startswith("| ")]) == 1 + 1 + len(CONDITIONS)
    assert all((cv_run / "cv" / f"fold_{i}" / "robustness.json").is_file() for i in (0, 1))
    assert summary["seconds_per_fold"]["mean"] > 0


def test_clean_is_the_folds_own_test_evaluation(benchmark, cv_run):
    summary, _ = benchmark
    for row in summary["per_fold"]:
        result = json.loads((cv_run / "cv" / f"fold_{row['fold']}" / "result.json").read_text())
        clean = row["conditions"]["clean"]
        assert clean["model"]["ua"] == pytest.approx(result["test"]["ua"])
        assert clean["model"]["wa"] == pytest.approx(result["test"]["wa"])
        assert clean["model_knn"]["ua"] == pytest.approx(result["test_knn"]["ua"])
        assert row["n_test"] == result["test"]["n"]


def test_a_second_run_gives_the_same_figures(benchmark):
    first, second = benchmark
    for a, b in zip(first["per_fold"], second["per_fold"]):
        assert a["fold"] == b["fold"] and set(b["conditions"]) == {"clean", *SEEDED}
        assert all(a["conditions"][name] == b["conditions"][name] for name in b["conditions"])


def test_destructive_conditions_move_the_model(benchmark):
    summary, _ = benchmark
    by_name = {c["name"]: c for c in summary["conditions"]}
    assert by_name["clean"]["model"]["changed"]["mean"] == 0
    assert by_name["white noise 5 dB SNR"]["model"]["changed"]["mean"] > 0
    assert by_name["telephone 300-3400 Hz mu-law"]["model"]["changed"]["mean"] > 0


def test_cli_reuses_finished_folds_and_refuses_bad_input(benchmark, cv_run, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cv_run / "cache"))
    monkeypatch.setattr(robustness, "run_fold", lambda *a, **k: pytest.fail("a finished fold was run again"))
    out = cv_run / "cli" / "table.json"
    out.parent.mkdir()
    assert cli.main(["robustness", "--cv", str(cv_run / "cv"), "--conditions", ",".join(SEEDED),  # the last run's
                     "--out", str(out)]) == 0
    assert "| white noise 5 dB SNR |" in capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert json.loads(out.read_text())["conditions"] == json.loads(json.dumps(benchmark[1]["conditions"]))
    assert cli.main(["robustness", "--cv", str(cv_run), "--conditions", "clean"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_config.json" in err
    assert cli.main(["robustness", "--cv", str(cv_run / "cv"), "--conditions", "thunder 3 dB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown condition" in err
    assert cli.main(["robustness", "--cv", str(cv_run / "cv"), "--folds", "first"]) == 2
    assert "--folds takes comma-separated fold numbers" in capsys.readouterr().err


def test_condition_names_select_and_keep_clean_first():
    assert len(perturb.BENCHMARK) == 24 and robustness.select("")[0].name == "clean"
    assert [c.name for c in robustness.select("opus 12 kbit/s,clean")] == ["clean", "opus 12 kbit/s"]


def test_missing_ffmpeg_is_one_sentence_before_any_work(cv_run, capsys, monkeypatch):
    from serlive.train import lines

    monkeypatch.setattr(lines.shutil, "which", lambda _name: None)
    assert cli.main(["robustness", "--cv", str(cv_run / "cv"), "--conditions", "opus 12 kbit/s", "--fresh"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs ffmpeg" in err


def test_ctrl_c_keeps_finished_folds_and_a_rerun_continues(cv_run, monkeypatch, caplog):
    """A real ``ser-train robustness`` process: SIGINT once fold 0 is kept, exit 130 with one sentence and no
    table; a rerun reuses fold 0 and computes fold 1 only."""
    import logging
    import os
    import signal
    import subprocess
    import sys

    env = os.environ | {"XDG_CACHE_HOME": str(cv_run / "cache"), "PYTHONUNBUFFERED": "1"}
    names = [c.name for c in perturb.BENCHMARK if c.family in ("noise", "level", "clipping")]  # fold 1 takes a while
    out = cv_run / "interrupted.json"
    cmd = [sys.executable, "-m", "serlive.train.cli", "robustness", "--cv", str(cv_run / "cv"), "--conditions",
           ",".join(names), "--out", str(out), "--fresh"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:  # wait for fold 0 to be kept (its log line), however long it takes
            if "fold 0:" in line and "kept in" in line:
                break
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    assert err.count("ser-train:") == 1 and "interrupted; finished folds are kept" in err and "Traceback" not in err
    assert not out.exists()
    assert json.loads((cv_run / "cv" / "fold_0" / "robustness.json").read_text())["key"]["conditions"][1:] == names
    monkeypatch.setenv("XDG_CACHE_HOME", str(cv_run / "cache"))
    with caplog.at_level(logging.INFO, logger="serlive.train.robustness"):
        summary = robustness.run(cv_run / "cv", out, robustness.select(",".join(names)))
    assert "fold 0: benchmark already done" in caplog.text and "fold 1: 8 utterances x 17 conditions" in caplog.text
    assert summary["folds"] == 2 and out.is_file()


def test_after_calibrate_each_fold_runs_with_the_calibration_fitted_on_the_others(benchmark, cv_run, monkeypatch):
    """Once ``ser-train calibrate`` has run, the benchmark's ECE and ``uncertain`` columns are those of the
    shipped path: each fold with the temperature, shift and flag settings fitted on the other folds."""
    from serlive.train import calibrate, uncertainty

    monkeypatch.setenv("XDG_CACHE_HOME", str(cv_run / "cache"))
    result = calibrate.run(cv_run / "cv", orders=1, degraded=1)
    summary = robustness.run(cv_run / "cv", cv_run / "calibrated.json", robustness.select("white noise 5 dB SNR"))
    for fold, row in zip(result["per_fold"], summary["per_fold"]):
        assert row["fold"] == fold["fold"] and row["temperature"] == fold["temperature"]
        assert row["key"]["calibration"]["speech_limit"] == fold["speech_limit"] > 0
        assert row["key"]["calibration"]["min_confidence"] == uncertainty.MIN_CONFIDENCE
    for entry in summary["conditions"]:
        assert 0 <= entry["model_knn"]["uncertain"]["mean"] <= 1  # a figure now, not None
    # a rerun with the same calibration reuses every fold (its key, with the calibration's lists, matches)
    with monkeypatch.context() as mp:
        mp.setattr(robustness, "run_fold", lambda *a, **k: pytest.fail("a calibrated fold was run again"))
        again = robustness.run(cv_run / "cv", cv_run / "calibrated.json", robustness.select("white noise 5 dB SNR"))
    assert again["conditions"] == summary["conditions"]
    # the online column: the shipped path with per-speaker adaptation, one speaker's utterances in one condition;
    # clean equals ser-train evaluate's online protocol on the same fold, computed from scratch
    from serlive.model import Predictor
    from serlive.train.data import load_audio
    from serlive.train.evaluate import online
    from serlive.train.fit import load_data
    from serlive.train.protocols import make_folds

    assert summary["systems"] == ["model", "model_knn", "online", "baseline"]
    assert "| online UA |" in (cv_run / "calibrated.md").read_text().replace(" | baseline UA", " |", 1)
    cfg = robustness.load_json(cv_run / "cv" / robustness.CONFIG_FILE)
    data = load_data(cfg, progress=False)
    folds = {f.index: f for f in make_folds(data.utts, cfg.protocol)}
    settings = robustness.fold_calibrations(cv_run / "cv")
    for row in summary["per_fold"]:
        fold = folds[row["fold"]]
        assert len(settings[fold.index]["embedding_mean"]) == cfg.model.embed_dim
        shipped = Predictor.from_dir(cv_run / "cv" / f"fold_{fold.index}" / "model").with_calibration(**settings[fold.index])
        preds = shipped.predict_batch([load_audio(data.utts[i].path, data.max_samples) for i in fold.test])
        want = online(shipped, [data.utts[i] for i in fold.test], preds, data.labels[fold.test],
                      robustness.ONLINE_ORDERS, cfg.protocol.seed)
        assert row["conditions"]["clean"]["online"]["ua"] == pytest.approx(want["ua"])
        assert row["conditions"]["clean"]["online"]["wa"] == pytest.approx(want["wa"])
