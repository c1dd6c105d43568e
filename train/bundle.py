"""``ser-train bundle``: a shippable model directory with the evidence for it.

Takes a cross-validation run (``ser-train fit`` over speaker-independent folds) and a final run of the same
recipe on every speaker (``protocol.kind = "all"``), copies the final model directory, sets its kNN k and
alpha to the CV run's cross-fold choice (``knn_final``; the weights do not depend on them, so the final run
may train before the CV run ends) and writes its ``metrics.json``: the cross-validated figures, the classic baseline
on the same folds (as it is, without the absolute level, and each with the test audio at an unknown gain),
the final model's kNN setting and training fit, and the resolved training configuration. A model card
(``README.md``) and licence files (``LICENSE*``) already in the output directory are kept; everything else there
is replaced.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from serlive.model import ConfigError
from serlive.model.checkpoint import write_json

from .config import load_json, read_json
from .fit import CONFIG_FILE

log = logging.getLogger(__name__)

TEST_GAIN_DB = 10.0
"""The baseline is also measured with each test utterance at a random gain within this many dB."""

MODEL_CARD = "README.md"
"""A model directory's hand-written card, which ``bundle`` keeps when it replaces the directory."""

LICENCES = "LICENSE*"
"""Licence files of what a model directory carries (the GE2E weights' Apache 2.0 text), kept like the card."""

FINAL_FOLD = "fold_0"
"""A ``protocol.kind = "all"`` run has this one fold."""


def load_cv_summary(cv_dir: str | Path) -> dict:
    """A finished cross-validation run's ``metrics.json``, which must hold a cross-fold kNN setting."""
    path = Path(cv_dir) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is {cv_dir} a finished ser-train fit run?")
    summary = read_json(path, "the metrics of a ser-train fit run")
    if not isinstance(summary.get("knn_final"), dict) or not {"k", "alpha"} <= set(summary["knn_final"]):
        raise ConfigError(f"{path} has no cross-fold kNN setting (a run with knn.tune and two folds or more has one)")
    return summary


def load_knn_final(cv_dir: str | Path) -> dict:
    """The kNN setting a cross-validation run chose for a model of all its speakers (``knn_final``)."""
    return load_cv_summary(cv_dir)["knn_final"]


def check_out(out: Path, runs: tuple[Path, ...]) -> None:
    """``out`` is replaced: refuse anything but a model directory (or nothing), and a folder holding a run."""
    if out.exists() and not (out / "config.json").is_file():
        raise ConfigError(f"--out {out} exists and is not a ser-live model directory; it is not replaced")
    for run in runs:
        if run.resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"--out {out} holds the run {run}; write the model directory elsewhere")


def run(cv_dir: str | Path, final_dir: str | Path, out: str | Path) -> dict:
    """Write ``out`` (a ser-live model directory) from the final run, with the evidence in metrics.json."""
    from .baseline import cross_validate
    from .fit import load_data

    cv_dir, final_dir, out = Path(cv_dir), Path(final_dir), Path(out)
    check_out(out, (cv_dir, final_dir))
    cv_cfg, final_cfg = load_json(cv_dir / CONFIG_FILE), load_json(final_dir / CONFIG_FILE)
    model_dir = final_dir / FINAL_FOLD / "model"
    if final_cfg.protocol.kind != "all" or not (model_dir / "config.json").is_file():
        raise ConfigError(f"{final_dir} is not a finished run with protocol.kind = \"all\"")
    cv = load_cv_summary(cv_dir)
    final = read_json(final_dir / FINAL_FOLD / "result.json", "a finished fold's result")
    data = load_data(cv_cfg, progress=False)  # once for the four baseline variants
    baseline = {}
    for name, gain_free in (("as_is", False), ("gain_free", True)):
        for suffix, gain in (("", 0.0), (f"_test_gain_{TEST_GAIN_DB:g}db", TEST_GAIN_DB)):
            r = cross_validate(cv_cfg, gain_free=gain_free, test_gain_db=gain, data=data,
                               folds_only={int(f["fold"]) for f in cv["per_fold"]})
            baseline[name + suffix] = {k: r[k] for k in ("ua", "wa")} | {"per_fold": [f["ua"] for f in r["folds"]]}
    protocol = cv_cfg.protocol
    metrics = {
        "note": (f"Cross-validation of this recipe ({cv['folds']} speaker-independent folds, protocol "
                 f"{protocol.kind!r}, folds={protocol.folds} (0: one per speaker), seed {protocol.seed}) and the "
                 "classic baseline (ser-train baseline) on the same folds. The model itself was trained on every "
                 "speaker with the kNN setting searched across the folds' validation speakers; its training fit "
                 "below is not a test."),
        "cross_validation": cv,
        "baseline_same_folds": {"method": "logistic regression on log-mel statistics (ser-train baseline)",
                                "test_gain_db": TEST_GAIN_DB, **baseline},
        "final_model": {"knn": cv["knn_final"], "training_fit": final["test"]},
        "train_config": final_cfg.to_dict(),
    }
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    config = json.loads((staging / "config.json").read_text())
    knn = metrics["final_model"]["knn"]
    config["model"]["knn"] = {"k": knn["k"], "alpha": knn["alpha"], "temperature": cv_cfg.knn.temperature}
    write_json(staging / "config.json", config)
    write_json(staging / "metrics.json", metrics)
    card = out / MODEL_CARD
    if card.is_file():  # hand-written: carried over (the figures beside it are the run's to write anew)
        shutil.copy2(card, staging / MODEL_CARD)
        log.warning("kept the model card %s: bring its figures up to date with metrics.json", card)
    for licence in sorted(out.glob(LICENCES)) if out.is_dir() else ():
        if licence.is_file():
            shutil.copy2(licence, staging / licence.name)
    for path in staging.iterdir():
        path.chmod(0o644)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    log.info("bundled %s -> %s", model_dir, out)
    return metrics
