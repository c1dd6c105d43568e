"""``ser-train crosscorpus --cv RUN``: a cross-validation run's fold models, each on its own unseen test speakers,
as one more corpus of the table (the training corpus out of training: a shipped model has heard every speaker
of it). Each fold model takes the shipped model's calibration (temperature, flags, adaptation prior, voice
term) with its own training speakers' mean embedding as the adaptation's reference, and the run's cross-fold
kNN setting, as ``ser-train calibrate`` scores folds."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from serlive.model import ConfigError, Predictor

from .calibrate import fold_predictor
from .config import load_json
from .crosscorpus import Corpus, predict_utts
from .data import columns_of, read_manifest
from .fit import CONFIG_FILE
from .fold import RESULT_FILE
from .protocols import make_folds

log = logging.getLogger(__name__)


def fold_corpora(run_dir: Path, shipped: Predictor, batch_size: int = 16) -> list[tuple[Predictor, Corpus]]:
    """One (fold predictor, its test speakers' corpus) per finished fold of ``run_dir``, all named alike."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"--cv {run_dir} is not a ser-train fit run (no {CONFIG_FILE})")
    cfg = load_json(run_dir / CONFIG_FILE)
    utts = read_manifest(cfg.data.manifest, cfg.model.labels, cfg.data.label_map, columns_of(cfg.data))
    metrics = run_dir / "metrics.json"
    summary = json.loads(metrics.read_text()) if metrics.is_file() else {}
    xknn = {r["fold"]: r for r in summary.get("test_knn_xfold", {}).get("per_fold", [])}
    folds = [f for f in make_folds(utts, cfg.protocol) if (run_dir / f"fold_{f.index}" / RESULT_FILE).is_file()]
    if not folds:
        raise ConfigError(f"--cv {run_dir} has no finished fold")
    name = f"{Path(cfg.data.manifest).parent.name} ({len(folds)} folds, unseen speakers)"
    settings = {k: v for k, v in dataclasses.asdict(shipped.config.calibration).items() if k != "embedding_mean"}
    out = []
    for fold in folds:
        model_dir = run_dir / f"fold_{fold.index}" / "model"
        plain = fold_predictor(model_dir, xknn.get(fold.index), np.zeros(0))  # raw embeddings only
        reference = np.mean([p.embedding for p in predict_utts(plain, [utts[i] for i in fold.train], batch_size)], 0)
        predictor = fold_predictor(model_dir, xknn.get(fold.index), reference).with_calibration(**settings)
        test = [utts[i] for i in fold.test]
        out.append((predictor, Corpus(name, test, predict_utts(predictor, test, batch_size))))
        log.info("fold %d: %d test utterances", fold.index, len(test))
    return out
