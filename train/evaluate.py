"""``ser-train evaluate``: a model directory measured on a manifest through :class:`Predictor`, the object
the streaming engine uses, so the numbers are the ones a live user gets (same VAD mask, same kNN)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from serlive.model import CheckpointError, Predictor, bundled_model_dir

from .data import default_columns, load_audio, read_csv, read_manifest
from .metrics import classification, dimensional

log = logging.getLogger(__name__)


def run(model_dir: str | Path | None, manifest: str | Path, label_map: str = "", predictions: str | Path | None = None,
        device: torch.device = torch.device("cpu"), use_knn: bool = True, label_column: str = "emotion",
        batch_size: int = 16, orders: int = 10, seed: int = 0) -> dict:
    """Metrics of ``model_dir`` on ``manifest``: UA, WA, per-class recall, confusion, n (+ MAE/CCC), the share
    flagged uncertain, and (``orders`` > 0, a model that can adapt) ``online``: the same metrics under the
    online per-speaker protocol, averaged over ``orders`` random orders of each speaker's utterances."""
    predictor = load_predictor(model_dir, device, use_knn)
    model_dir = Path(model_dir) if model_dir else bundled_model_dir()
    labels = predictor.labels
    utts = read_manifest(manifest, labels, label_map or None, {"label": label_column} | _optional(manifest))
    preds = []
    for start in tqdm(range(0, len(utts), batch_size), desc="evaluate", unit="batch", leave=False):
        chunk = utts[start: start + batch_size]
        waves = [load_audio(u.path, predictor.max_samples) for u in chunk]  # already 16 kHz mono, truncated
        preds += predictor.predict_prepared(waves, [predictor.mask(w) for w in waves])
    y_true = np.array([u.label for u in utts])
    y_pred = np.array([labels.index(p.label) for p in preds])
    result = classification(y_true, y_pred, labels)
    if predictor.config.dimensional:
        pred_dims = np.array([[p.valence, p.arousal] for p in preds], np.float32)
        result |= dimensional(pred_dims, np.array([[u.valence, u.arousal] for u in utts], np.float32))
    result |= {"model": str(model_dir), "knn": predictor.use_knn, "uncertain": float(np.mean([p.uncertain for p in preds]))}
    if orders > 0 and predictor.can_adapt:
        result["online"] = online(predictor, utts, preds, y_true, orders, seed)
    if predictions:
        write_predictions(Path(predictions), utts, preds)
    return result


def load_predictor(model_dir, device: torch.device, use_knn: bool = True) -> Predictor:
    """The Predictor of ``model_dir`` (None: the bundled model), or one sentence saying why not."""
    model_dir = Path(model_dir) if model_dir else bundled_model_dir()
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist (train one with ser-train fit, or pass --model)")
    return Predictor.from_dir(model_dir, device=device, use_knn=use_knn)


def online(predictor: Predictor, utts, preds, y_true: np.ndarray, orders: int, seed: int) -> dict:
    """UA / WA with each speaker's utterances in ``orders`` random orders, each predicted knowing only that
    speaker's earlier ones (:func:`calibrate.online_labels`); mean over the orders."""
    from .calibrate import online_labels

    rng, prior = np.random.default_rng(seed), predictor.config.calibration.adapt_prior
    by_speaker: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_speaker.setdefault(u.speaker, []).append(i)
    runs = []
    for _ in range(orders):
        y_pred = np.zeros(len(utts), np.int64)
        for rows in by_speaker.values():
            y_pred[rows] = online_labels(predictor, [preds[i] for i in rows], rng, prior)
        runs.append(classification(y_true, y_pred, predictor.labels))
    return {"orders": orders, "speakers": len(by_speaker), "ua": float(np.mean([r["ua"] for r in runs])),
            "wa": float(np.mean([r["wa"] for r in runs]))}


def _optional(manifest) -> dict:
    """Valence / arousal / session columns are read when the manifest has them."""
    if not Path(manifest).is_file():
        return {}  # read_manifest says so
    header, _ = read_csv(Path(manifest))
    cols = default_columns()
    return {k: cols[k] for k in ("valence", "arousal", "session") if cols[k] in header}


def write_predictions(path: Path, utts, preds) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = preds[0].labels if preds else ()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "speaker", "true", "predicted", "confidence", *[f"p_{c}" for c in labels],
                    "valence", "arousal", "speech_frames", "frames", "ood", "uncertain"])
        for u, p in zip(utts, preds):
            w.writerow([str(u.path), u.speaker, labels[u.label], p.label, f"{p.confidence:.4f}",
                        *[f"{x:.4f}" for x in p.probs], "" if p.valence is None else f"{p.valence:.4f}",
                        "" if p.arousal is None else f"{p.arousal:.4f}", p.speech_frames, p.frames,
                        "" if p.ood is None else f"{p.ood:.4f}", int(p.uncertain)])
