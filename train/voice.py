"""Saying when the model does not know this voice: the stream-level temperature ``calibration.voice_beta``.

A stream's speaker mean (the adapter's, shrunk as the shift is) lies at some distance from the training
speakers' mean embedding. On unseen RAVDESS actors it stays near (their language, studio and microphone);
on another language recorded on people's own devices it lies several times further, and the model is right
far less often at the same confidence. ``voice_beta`` makes the temperature grow as ``exp(beta * (d - from))``
past ``voice_from``; it is fitted by NLL on a development corpus's online predictions (the distances each
prediction was made at, causally), and measured cross-fitted: the corpus's speakers in two halves, each
scored with the beta of the other half.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from serlive.model import Predictor
from serlive.model.calibration import fit_shift, temper_prediction, voice_factor
from serlive.model.checkpoint import CONFIG_FILE, write_json

from .crosscorpus import Corpus, online, rows_of

log = logging.getLogger(__name__)


def online_with_distances(predictor: Predictor, corpus: Corpus, factory: Callable, orders: int,
                          seed: int) -> list[tuple[list, list[float]]]:
    """``orders`` online runs of ``corpus`` with the voice term off: (predictions, distances) per order."""
    plain, rng = predictor.with_calibration(voice_beta=0.0), np.random.default_rng(seed)
    runs = []
    for _ in range(orders):
        distances: list[float] = []
        preds = online(plain, corpus, factory, rng, distances)
        runs.append((preds, distances))
    return runs


def fit_beta(runs: list[tuple[list, list[float]]], labels: np.ndarray, rows: np.ndarray, start: float) -> float:
    """``voice_beta`` by NLL over the predictions of utterances ``rows`` in every run."""
    probs = np.concatenate([np.array([preds[i].probs for i in rows]) for preds, _ in runs])
    dist = np.concatenate([np.array(d)[rows] for _, d in runs])
    return fit_shift(probs, np.tile(labels[rows], len(runs)), dist, 1.0, start)


def cross_fitted(predictor: Predictor, corpus: Corpus, runs, start: float, mode: str) -> tuple[list[dict], dict]:
    """The runs' predictions flattened with ``beta`` fitted on the other half of the speakers (CSV rows of
    ``mode``), and the betas: each half's and the one fitted on every speaker."""
    labels = np.array([u.label for u in corpus.utts])
    speakers = sorted({u.speaker for u in corpus.utts})
    half = np.array([speakers.index(u.speaker) % 2 for u in corpus.utts])
    betas = [fit_beta(runs, labels, np.flatnonzero(half == h), start) for h in (0, 1)]
    min_conf = predictor.config.calibration.min_confidence
    out = []
    for order, (preds, dist) in enumerate(runs):
        tempered = [temper_prediction(p, voice_factor(d, start, betas[1 - h]), min_conf)
                    for p, d, h in zip(preds, dist, half)]
        out += rows_of(corpus, mode, order, tempered)
    every = fit_beta(runs, labels, np.arange(len(labels)), start)
    return out, {"voice_from": start, "voice_beta": every, "halves": betas}


def apply(model_dir: Path, start: float, beta: float) -> None:
    """Write ``voice_from`` / ``voice_beta`` into a model directory's calibration."""
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["model"]["calibration"] |= {"voice_from": round(start, 4), "voice_beta": round(beta, 4)}
    write_json(model_dir / CONFIG_FILE, config)
    log.info("voice_from %.3f, voice_beta %.4f written into %s", start, beta, model_dir)
