"""Training runs given bad data or bad settings: a real ``ser-train fit`` refuses each with one sentence and
exit 2 before it trains (or, for a loss that turns NaN, before it saves anything), and leaves what a run
directory already held as it was."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from serlive.train import cli, config
from serlive.train.data import read_manifest
from serlive.train.protocols import make_folds

from .test_train_fit import MANIFEST, TINY
from .test_train_resume import error_line


def manifest(tmp_path: Path, keep) -> Path:
    """A copy of the test manifest with only the rows ``keep(row)`` accepts (paths made absolute)."""
    with open(MANIFEST, newline="") as fh:
        rows = list(csv.DictReader(fh))
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in filter(keep, rows):
            writer.writerow(row | {"path": str(MANIFEST.parent / row["path"])})
    return path


def fold_0_test_speaker() -> str:
    cfg = config.load(None, TINY)
    utts = read_manifest(MANIFEST, cfg.model.labels, cfg.data.label_map)
    return make_folds(utts, cfg.protocol)[0].test_groups[0]


def ser_train(tmp_path: Path, out: Path, *args: str) -> subprocess.Popen:
    sets = [a for s in TINY + [f"data.cache_dir='{tmp_path / 'vad'}'", "optim.epochs=1"] for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "serlive.train.cli", "fit", *sets, "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "train.log"}


def test_bad_training_inputs_are_refused_in_one_sentence(tmp_path):
    one_class = manifest(tmp_path, lambda r: r["emotion"] == "angry")
    tested = fold_0_test_speaker()
    (tmp_path / "sad").mkdir()
    sad_of_one = manifest(tmp_path / "sad", lambda r: r["emotion"] != "sad" or r["speaker"] == tested)
    other = tmp_path / "other"  # a finished fold of a run with another configuration
    (other / "fold_0").mkdir(parents=True)
    config.load(None, TINY + ["optim.epochs=7"]).save(other / "train_config.json")
    (other / "fold_0" / "result.json").write_text('{"fold": 0}')
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "train_config.json").write_text('{"optim": {"lr": ')
    cases = {
        "one class": (["--set", f"data.manifest='{one_class}'"], "the manifest has utterances of one class only (angry)"),
        "a class no training speaker has": (["--set", f"data.manifest='{sad_of_one}'"],
                                            "has no training speaker of sad"),
        "a loss that diverges": (["--set", "optim.lr=1e30"], "the training loss became nan in epoch 1"),
        "--folds beyond the protocol": (["--folds", "7"], "--folds 7: this protocol has folds 0"),
        "a run directory of another config": (["--out", str(other)], "holds a run of another configuration"),
        "resuming a damaged train_config.json": (["--out", str(damaged), "--resume"],
                                                 "train_config.json cannot be read as a training configuration"),
    }
    before = {d: files_of(d) for d in (other, damaged)}
    procs = {name: ser_train(tmp_path, tmp_path / f"run{i}", *args) for i, (name, (args, _)) in enumerate(cases.items())}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert cases[name][1] in error_line(err), (name, err)
        assert out == ""
    assert not list(tmp_path.glob("run*/fold_*/checkpoint.pt"))  # the diverged run saved no NaN weights
    assert {d: files_of(d) for d in (other, damaged)} == before
    assert json.loads((other / "fold_0" / "result.json").read_text()) == {"fold": 0}


def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys):
    """The same refusals in process (they come before the run directory or the data are touched)."""
    (tmp_path / "a-file").write_text("not a folder")
    base = ["fit", "--set", f"data.manifest='{MANIFEST}'", "--out", str(tmp_path / "run")]
    cases = [
        (["--set", "optim.lr=nan"], "optim.lr must be a finite number, not nan"),
        (["--set", "run.num_threads=-1"], "run.num_threads must be 0"),
        (["--set", "data.speaker_column=3"], "data.speaker_column must be a string, not 3"),
        (["--set", "protocol.test_speakers='01'"], "protocol.test_speakers must be a list, not '01'"),
        (["--set", "knn.temperature=0"], "knn.k_max, knn.alpha_steps and knn.temperature must be positive"),
        (["--folds", "one"], "--folds must be comma-separated fold numbers, not 'one'"),
        (["--out", str(tmp_path / "a-file" / "run")], "cannot be written: Not a directory"),
    ]
    for args, sentence in cases:
        assert cli.main(base + args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ser-train: ") and err.count("\n") == 1 and sentence in err, (args, err)
    assert not (tmp_path / "run").exists() and (tmp_path / "a-file").read_text() == "not a folder"


def test_bundle_never_replaces_a_run_and_bad_run_files_are_one_sentence(tmp_path, capsys):
    """``bundle --out`` replaces its target: a run directory given there (a slip of the hand) is refused
    and kept; corrupt run files are named in one sentence; ``evaluate --batch-size 0`` is refused."""
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "metrics.json").write_bytes(b'{"knn_final": \xff')
    config.load(None, TINY).save(cv / "train_config.json")
    cases = [
        (["bundle", "--cv", str(cv), "--final", str(cv), "--out", str(cv)], "exists and is not a ser-live model directory"),
        (["bundle", "--cv", str(cv / "sub"), "--final", str(cv), "--out", str(tmp_path)], "exists and is not a ser-live"),
        (["bundle", "--cv", str(cv), "--final", str(cv), "--out", str(tmp_path / "m")], "is not a finished run with protocol.kind"),
        (["fit", "--knn-from", str(cv), "--out", str(tmp_path / "r")], "metrics.json cannot be read as the metrics"),
        (["evaluate", "--data", str(MANIFEST), "--batch-size", "0"], "--batch-size must be at least 1, not 0"),
    ]
    for args, sentence in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ser-train: ") and err.count("\n") == 1 and sentence in err, (args, err)
    assert (cv / "metrics.json").read_bytes() == b'{"knn_final": \xff' and (cv / "train_config.json").is_file()


def test_manifests_and_configs_that_are_not_utf8_or_lose_fields_are_one_sentence(tmp_path, capsys):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"path,emotion,speaker\n\xe9.flac,angry,01\n")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text('path,emotion,speaker\n"a.flac,angry,01\nb.flac,sad,02\n')
    toml = tmp_path / "latin.toml"
    toml.write_bytes(b'[data]\nmanifest = "caf\xe9.csv"\n')
    cases = [
        (["fit", "--config", str(toml), "--out", str(tmp_path / "r")], f"{toml} is not valid TOML: 'utf-8' codec"),
        (["evaluate", "--data", str(latin)], f"manifest {latin} is not UTF-8 text (byte 21)"),
        (["fit", "--set", f"data.manifest='{latin}'", "--out", str(tmp_path / "r")], "is not UTF-8 text"),
        (["fit", "--set", f"data.manifest='{ragged}'", "--out", str(tmp_path / "r")],
         "row 1 has fewer fields than its header (an unclosed quote?)"),
    ]
    for args, sentence in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ser-train: ") and err.count("\n") == 1 and sentence in err, (args, err)
