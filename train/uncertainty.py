"""The graded ``uncertain`` of ``ser-train calibrate`` (see :mod:`serlive.model.calibration`): from each fold's
test speakers, clean and under the recipe's training augmentation (``calibrate.degraded_split``), the
shift-aware temperature, speech limit and flag thresholds, and the flag measured on the shipped path (each
fold with the settings fitted on the other folds)."""

from __future__ import annotations

import numpy as np

from serlive.model.calibration import expected_calibration_error, fit_shift, fit_short, shift_temperatures

from .metrics import classification

MIN_CONFIDENCE = 0.4
"""Calibrated top probability under which a prediction is flagged uncertain (a 4-class model right less
than 4 times in 10 there; the measured accuracy of the flagged is in calibration.md)."""
MIN_VOICED = 0.02
"""Voiced share of the speech frames under which an utterance is flagged (noise alone has none; speech in
3 dB pink noise keeps 7 % or more)."""
LIMIT_PERCENTILE = 99.0
"""The speech limit: this percentile of the atypicality of the checked speech, clean and degraded (the
maximum is one extreme draw, e.g. a telephone line in 3 dB of noise; past the 99th lie synthetic voices)."""


SHIPPED = ("shift_beta", "shift_from", "speech_limit", "min_confidence", "min_voiced", "short_frames", "short_gamma")
"""The settings :func:`shift_settings` chooses that a model directory keeps."""


def shift_settings(rows: list[dict], temperature: float) -> dict:
    """The shift-aware settings fitted on ``rows`` (T fixed): the temperature's growth from the median
    atypicality of their clean test speech, the speech limit (:data:`LIMIT_PERCENTILE` of the speech seen,
    clean and degraded), and the flag thresholds. Empty when the rows have no degraded predictions or no atypicality."""
    if rows[0]["degraded"] is None or rows[0]["test"].preds[0].atypicality is None:
        return {}
    clean = np.concatenate([[p.atypicality for p in r["test"].preds] for r in rows])
    degraded = [r["degraded"] for r in rows]
    start = float(np.median(clean))
    atyp = np.concatenate([[p.atypicality for p in d.preds] for d in degraded])
    beta = fit_shift(np.concatenate([d.probs for d in degraded]), np.concatenate([d.labels for d in degraded]), atyp,
                     temperature, start)
    voiced = rows[0]["test"].preds[0].voiced is not None
    limit = float(np.percentile(np.concatenate([clean, atyp]), LIMIT_PERCENTILE))
    return {"shift_beta": beta, "shift_from": round(start, 5), "speech_limit": round(limit, 5),
            "min_confidence": MIN_CONFIDENCE, "min_voiced": MIN_VOICED if voiced else 0.0} \
        | short_settings(rows, temperature, beta, start)


def short_settings(rows: list[dict], temperature: float, beta: float, start: float) -> dict:
    """The temperature's growth for short inputs, fitted on ``rows``' short splits (prefixes of the clean test
    utterances) with T and the shift fixed: below the median speech frames of the whole clean utterances,
    ``(frames / n) ** gamma``. Empty without short splits."""
    if rows[0].get("short") is None:
        return {}
    frames = float(np.median(np.concatenate([[p.speech_frames for p in r["test"].preds] for r in rows])))
    preds = [p for r in rows for p in r["short"].preds]
    temps = shift_temperatures(np.array([p.atypicality for p in preds]), temperature, beta, start)
    gamma = fit_short(np.concatenate([r["short"].probs for r in rows]), np.concatenate([r["short"].labels for r in rows]),
                      temps, np.array([p.speech_frames for p in preds]), frames)
    return {"short_frames": frames, "short_gamma": gamma}


def shipped_path(rows: list[dict], per_fold: list[dict], labels) -> dict:
    """Each fold's clean and degraded test predictions with the settings fitted on the other folds, through
    the Predictor as a model directory will have them (without OOD reference: the flag does not use it):
    the pooled ECE with one T and with the shift, the share flagged uncertain, and the accuracy of the
    flagged and of the others."""
    out = {}
    for name in ("test", "degraded") + (("short",) if rows[0].get("short") is not None else ()):
        one_t, shifted, y = [], [], []
        for row, f in zip(rows, per_fold):
            split = row[name]
            settings = {k: f[k] for k in SHIPPED if k in f}
            one_t.append(row["predictor"].with_calibration(temperature=f["temperature"]).refinish(split.preds))
            shifted.append(row["predictor"].with_calibration(temperature=f["temperature"], **settings).refinish(split.preds))
            y.append(split.labels)
        one_t, shifted, y = sum(one_t, []), sum(shifted, []), np.concatenate(y)
        predicted = np.array([labels.index(p.label) for p in shifted])
        right, flag = predicted == y, np.array([p.uncertain for p in shifted])
        out[name] = {"n": len(y), "ua": classification(y, predicted, labels)["ua"],
                     "ece_one_t": expected_calibration_error(np.array([p.probs for p in one_t]), y),
                     "ece_shift": expected_calibration_error(np.array([p.probs for p in shifted]), y),
                     "uncertain": float(flag.mean()),
                     "right_when_flagged": float(right[flag].mean()) if flag.any() else None,
                     "right_otherwise": float(right[~flag].mean()) if (~flag).any() else None}
    return out


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"
