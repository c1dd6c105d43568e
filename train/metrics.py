"""Metrics: UA (mean per-class recall), WA (accuracy), per-class recall, the confusion matrix,
valence/arousal MAE and CCC, and mean ± 95% confidence interval (t distribution) across folds."""

from __future__ import annotations

import math

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows true class, columns predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def classification(y_true, y_pred, labels: tuple[str, ...]) -> dict:
    """UA over the classes present in ``y_true``, WA, per-class recall (None if absent), confusion, n."""
    cm = confusion(y_true, y_pred, len(labels))
    support = cm.sum(1)
    recall = [float(cm[c, c] / support[c]) if support[c] else None for c in range(len(labels))]
    present = [r for r in recall if r is not None]
    n = int(cm.sum())
    return {
        "ua": float(np.mean(present)) if present else math.nan,
        "wa": float(np.trace(cm) / n) if n else math.nan,
        "recall": dict(zip(labels, recall)),
        "confusion": cm.tolist(),
        "labels": list(labels),
        "n": n,
    }


def ccc(pred: np.ndarray, target: np.ndarray) -> float:
    """Lin's concordance correlation coefficient."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if len(pred) < 2:
        return math.nan
    mp, mt = pred.mean(), target.mean()
    cov = np.mean((pred - mp) * (target - mt))
    denom = pred.var() + target.var() + (mp - mt) ** 2
    return float(2 * cov / denom) if denom > 0 else math.nan


def dimensional(pred: np.ndarray | None, target: np.ndarray) -> dict:
    """MAE and CCC of valence and arousal over the rows with finite targets; {} when there are none."""
    if pred is None:
        return {}
    out = {}
    for j, name in enumerate(("valence", "arousal")):
        ok = np.isfinite(target[:, j])
        if ok.sum() == 0:
            continue
        out[f"{name}_mae"] = float(np.abs(pred[ok, j] - target[ok, j]).mean())
        out[f"{name}_ccc"] = ccc(pred[ok, j], target[ok, j])
    return out


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean, sample std, and the half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)`` (None for n < 2)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    if len(v) < 2:
        return {"mean": float(v[0]), "std": None, "ci95": None, "n": 1}
    s = float(v.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, len(v) - 1) * s / math.sqrt(len(v)))
    return {"mean": float(v.mean()), "std": s, "ci95": half, "n": int(len(v))}


def fmt_ci(entry: dict, scale: float = 100.0, digits: int = 1) -> str:
    """``"71.2 ± 3.4"`` (in percent by default; ``fmt_ci(e, 1.0, 3)``: ``"0.052 ± 0.011"``); ``"—"`` when empty."""
    if entry.get("mean") is None:
        return "—"
    if entry.get("ci95") is None:
        return f"{entry['mean'] * scale:.{digits}f}"
    return f"{entry['mean'] * scale:.{digits}f} ± {entry['ci95'] * scale:.{digits}f}"
