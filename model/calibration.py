"""Saying how sure the model is: temperature calibration, an out-of-distribution score, ``uncertain``.

* **Temperature** (Guo et al., 2017): the final probabilities (after kNN interpolation) are sharpened or
  flattened as ``p_i ∝ p_i^(1/T)``; for a model without kNN that is exactly ``softmax(logits / T)``. T is
  fitted by negative log-likelihood on validation speakers the model never trained on (``ser-train
  calibrate``, across the folds of a cross-validation run).
* **OOD score** in [0, 1]: where an utterance's *atypicality* falls among those of in-domain speakers the
  model never heard (the cross-validation's test speakers). Atypicality is the RMS of the standardised
  spectral statistics when the model has that branch (speaker- and space-independent: noise, music, tones,
  silence and synthetic speech lie 3-5 standard deviations out, speech within about 1), else the mean
  distance to the 10 nearest kNN keys. 0.99 means "more atypical than 99 % of unseen in-domain speech".
* **Shift-aware temperature**: degraded speech (noise, rooms, lines) is more atypical and the model is less
  often right on it, so the temperature grows with atypicality past ``shift_from`` (the median of unseen
  clean speech): ``T(a) = T * exp(shift_beta * (a - shift_from))``, ``shift_beta`` fitted by NLL on the
  folds' test speakers under the training augmentation. One T fitted on clean speech alone sharpened
  noisy speech into overconfidence; this keeps clean speech's T and makes the confidence fall with the
  expected accuracy, so a 10 dB kitchen gets a graded answer instead of a flag on every utterance.
* **Far out of distribution the probabilities are pulled towards uniform** (at most half way, so the label
  survives), so noise or a synthetic voice never comes out at 0.99 of anything. "Far" is past
  ``speech_limit``, the 99th percentile of the speech (clean or degraded) the calibration was checked on,
  or no voice at all (voiced share under ``min_voiced``: noise alone); older model directories (no
  ``speech_limit``) use the OOD score past ``ood_threshold`` instead.
* **A voice unlike the training speakers'** (another language, another microphone): a stream's speaker mean
  far from the training speakers' mean embedding makes its later predictions flatter (``voice_beta``, applied
  by :func:`serlive.model.adapt.adapted`); past a few utterances it is the strongest sign of a new domain.
* ``uncertain`` is set when the input is far out of distribution, the calibrated confidence is under
  ``min_confidence`` (on unseen speakers such predictions are right less often than not), or the VAD heard
  no speech.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .config import CalibrationConfig

__all__ = ["CalibrationConfig", "apply_temperature", "shift_temperatures", "fit_temperature", "fit_shift",
           "expected_calibration_error", "reference_percentiles", "ood_score", "temper_for_ood",
           "temper_prediction", "voice_factor"]

OOD_K = 10
"""Neighbours whose mean distance is the ``knn_distance`` atypicality."""


def apply_temperature(probs: np.ndarray, temperature) -> np.ndarray:
    """``p ∝ p^(1/T)`` row-wise, (N, C) -> (N, C); exact softmax temperature for softmax outputs. ``temperature``
    is one T or one per row (N,)."""
    probs = np.asarray(probs, np.float64)
    t = np.asarray(temperature, np.float64)
    if t.ndim == 0 and float(t) == 1.0:
        return probs
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / (t[..., None] if t.ndim else t)
    logp -= logp.max(axis=-1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=-1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T minimising the mean negative log-likelihood of ``labels`` under ``apply_temperature(probs, T)``
    (a golden-section search over log T; the NLL is convex in 1/T for softmax outputs)."""
    return round(math.exp(_golden(lambda log_t: _nll(apply_temperature(probs, math.exp(log_t)), labels),
                                  math.log(lo), math.log(hi))), 4)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels, np.int64)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def _golden(f, a: float, b: float, steps: int = 60) -> float:
    """The minimiser of a unimodal ``f`` on [a, b] by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(steps):
        if f(c) < f(d):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return (a + b) / 2


def shift_temperatures(atypicality: np.ndarray, temperature: float, beta: float, start: float) -> np.ndarray:
    """Each row's temperature ``T * exp(beta * max(0, a - start))``, (N,)."""
    return temperature * np.exp(beta * np.maximum(np.asarray(atypicality, np.float64) - start, 0.0))


def short_factors(speech_frames: np.ndarray, frames: float, gamma: float) -> np.ndarray:
    """Each row's temperature factor ``(frames / n) ** gamma`` for n < ``frames`` speech frames (at least one),
    else 1, (N,): the less speech, the flatter the probabilities."""
    n = np.maximum(np.asarray(speech_frames, np.float64), 1.0)
    return np.where(n < frames, (frames / n) ** gamma, 1.0) if frames > 0 and gamma > 0 else np.ones(len(n))


def fit_short(probs: np.ndarray, labels: np.ndarray, temperatures: np.ndarray, speech_frames: np.ndarray,
              frames: float, hi: float = 3.0) -> float:
    """The ``gamma`` in [0, hi] minimising the mean NLL of ``labels`` under ``temperatures`` (N,) times
    :func:`short_factors`, by golden-section search; 0 unless it beats no growth."""
    def nll(gamma: float) -> float:
        return _nll(apply_temperature(probs, temperatures * short_factors(speech_frames, frames, gamma)), labels)

    gamma = _golden(nll, 0.0, hi, 50)
    return round(gamma, 4) if nll(gamma) < nll(0.0) else 0.0


def fit_shift(probs: np.ndarray, labels: np.ndarray, atypicality: np.ndarray, temperature: float, start: float,
              hi: float = 5.0) -> float:
    """The ``beta`` in [0, hi] minimising the mean NLL of ``labels`` under :func:`shift_temperatures` (T and the
    start fixed), by golden-section search; 0 unless it beats a single temperature."""
    def nll(beta: float) -> float:
        return _nll(apply_temperature(probs, shift_temperatures(atypicality, temperature, beta, start)), labels)

    beta = _golden(nll, 0.0, hi, 50)
    return round(beta, 4) if nll(beta) < nll(0.0) else 0.0


def temper_prediction(prediction, factor: float, min_confidence: float):
    """``prediction`` (a :class:`~serlive.model.predictor.Prediction`) with its probabilities' temperature
    multiplied by ``factor`` (>= 1: flatter); label, confidence and ``uncertain`` follow."""
    if factor == 1.0:
        return prediction
    probs = apply_temperature(np.array([prediction.probs]), factor)[0]
    best = int(np.argmax(probs))
    unsure = prediction.speech_frames == 0 or prediction.far or float(probs[best]) < min_confidence
    return dataclasses.replace(prediction, probs=tuple(float(p) for p in probs), label=prediction.labels[best],
                               confidence=float(probs[best]), uncertain=bool(unsure))


def voice_factor(distance: float, start: float, beta: float) -> float:
    """The temperature factor ``exp(beta * max(0, distance - start))`` of a stream whose speaker's mean lies
    ``distance`` from the training speakers' (see ``CalibrationConfig.voice_beta``)."""
    return float(math.exp(beta * max(0.0, distance - start)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over ``bins`` equal-width bins (Guo et al., 2017)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(float((pred[sel] == labels[sel]).mean()) - float(conf[sel].mean()))
    return total / max(len(labels), 1)


def reference_percentiles(values: np.ndarray) -> tuple[float, ...]:
    """Atypicality values of in-domain utterances -> the 21 percentiles (0, 5, ..., 100) kept in config.json."""
    return tuple(round(float(x), 5) for x in np.percentile(np.asarray(values, np.float64), np.arange(0, 101, 5)))


def ood_score(atypicality: np.ndarray, reference: tuple[float, ...]) -> np.ndarray:
    """Percentile rank in [0, 1] of each atypicality among the reference's; past the largest reference value
    the rank rises on towards 1 over one interquartile range of the reference more, so "a little past" and
    "far past" differ."""
    x = np.asarray(atypicality, np.float64)
    ref = np.asarray(reference, np.float64)
    levels = np.linspace(0.0, 1.0, len(ref))
    inside = np.interp(x, ref, levels)
    spread = max(float(np.interp(0.75, levels, ref) - np.interp(0.25, levels, ref)), 1e-6)
    beyond = 1.0 - 0.01 * np.exp(-np.maximum(x - ref[-1], 0.0) / spread)
    return np.where(x > ref[-1], np.maximum(beyond, 0.99), np.minimum(inside, 0.99))


def temper_for_ood(probs: np.ndarray, ood: np.ndarray, threshold: float, mix: float) -> np.ndarray:
    """Mix up to ``mix`` of uniform into rows whose OOD score passes ``threshold``, linearly in how far
    past it they are (all of ``mix`` at an OOD score of 1)."""
    probs = np.asarray(probs, np.float64)
    if threshold >= 1.0:
        return probs
    w = mix * np.clip((np.asarray(ood) - threshold) / (1.0 - threshold), 0.0, 1.0)[:, None]
    return (1.0 - w) * probs + w / probs.shape[-1]
