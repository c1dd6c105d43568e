"""A classic baseline: multinomial logistic regression on utterance statistics of log-mel frames.

Features per utterance (speech frames from the same VAD mask the model uses): mean and standard
deviation of 64 log-mel bands and of their frame-to-frame deltas, plus log-energy mean, std, range and
the speech ratio. Standardised on the training speakers; L2-regularised, fitted with L-BFGS.

Two of those numbers carry the recording's absolute level (the band means and the energy mean). On a
corpus recorded at one gain that level is a cue to emotion (angry is loud); on a microphone of unknown
gain it is not. ``gain_free`` removes it (band means taken relative to their average, no energy mean),
and ``test_gain_db`` plays each test utterance at a random gain to measure what the level cue costs.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from serlive.model.builtin import LogMel
from serlive.model.frames import speech_mask

log = logging.getLogger(__name__)

N_MELS = 64
_LOGMEL = LogMel(N_MELS)


def utterance_features(wave: np.ndarray, mask: np.ndarray | None = None, gain_free: bool = False) -> np.ndarray:
    """A fixed-length statistics vector for one 16 kHz waveform, ``(4 * 64 + 4,)``; with ``gain_free``
    the band means are relative to their average and the energy mean is 0, so a gain changes nothing."""
    with torch.no_grad():
        mel = _LOGMEL(torch.from_numpy(np.asarray(wave, np.float32))[None])[0].numpy()  # (T, 64)
    mask = speech_mask(wave) if mask is None else mask
    speech = mel[mask] if mask.sum() >= 3 else mel
    delta = np.diff(speech, axis=0)
    energy = np.log(np.exp(speech).sum(1) + 1e-6)
    means, level = speech.mean(0), energy.mean()
    if gain_free:
        means, level = means - means.mean(), 0.0
    return np.concatenate([
        means, speech.std(0), delta.mean(0), delta.std(0),
        [level, energy.std(), np.ptp(energy), mask.mean()],
    ]).astype(np.float32)


class LinearBaseline:
    """Standardise, then softmax regression with an L2 penalty ``l2``."""

    def __init__(self, l2: float = 1e-2, class_weights: np.ndarray | None = None) -> None:
        self.l2, self.class_weights = l2, class_weights

    def fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> "LinearBaseline":
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        xt = torch.from_numpy((x - self.mu) / self.sd)
        yt = torch.from_numpy(np.asarray(y, np.int64))
        self.w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
        self.b = torch.zeros(num_classes, requires_grad=True)
        weight = None if self.class_weights is None else torch.as_tensor(self.class_weights, dtype=torch.float32)
        opt = torch.optim.LBFGS([self.w, self.b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ self.w + self.b, yt, weight=weight)
            loss = loss + self.l2 * (self.w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = torch.from_numpy((x - self.mu) / self.sd) @ self.w + self.b
        return torch.softmax(logits, -1).numpy()


def test_gains(seed: int, n: int, gain_db: float) -> np.ndarray:
    """Linear gains, one per utterance, drawn uniformly within ±``gain_db`` dB with ``seed``: the same
    draw for the baseline and for the network (:mod:`.gain_check`), so their figures compare."""
    return (10 ** (np.random.default_rng(seed).uniform(-gain_db, gain_db, n) / 20)).astype(np.float32)


def fit_fold(feats: np.ndarray, y: np.ndarray, fold, labels: tuple[str, ...], l2_grid=(1e-3, 1e-2, 1e-1),
             refit: bool = True) -> tuple[LinearBaseline, float]:
    """One fold's baseline and its L2 strength, chosen on the validation speakers (class-weighted by the
    training labels); refit on train + validation with ``refit`` (see :func:`cross_validate`)."""
    from .metrics import classification

    counts = np.bincount(y[fold.train], minlength=len(labels)).astype(np.float64)
    weights = len(fold.train) / (len(labels) * np.maximum(counts, 1))

    def fitted(l2, idx):
        return LinearBaseline(l2, weights).fit(feats[idx], y[idx], len(labels))

    val_ua = {l2: classification(y[fold.val], fitted(l2, fold.train).predict_proba(feats[fold.val]).argmax(1), labels)["ua"]
              for l2 in l2_grid}
    best = max(l2_grid, key=lambda l2: (val_ua[l2], -l2))
    return fitted(best, np.concatenate([fold.train, fold.val]) if refit else fold.train), best


def cross_validate(cfg, l2_grid=(1e-3, 1e-2, 1e-1), refit: bool = True, gain_free: bool = False,
                   test_gain_db: float = 0.0, data=None, folds_only=None) -> dict:
    """The baseline on the folds of ``cfg`` (same protocol, seed and label map as ``ser-train fit``).
    The L2 strength is chosen per fold on its validation speakers; test speakers are never seen. With
    ``refit`` the chosen model is refit on train + validation speakers (a third more data than the
    network, which keeps validation for early stopping and kNN tuning); without, on train alone.
    ``gain_free`` and ``test_gain_db``: see the module docstring (the gains are drawn with the protocol seed).
    ``data``: the AudioSet of ``cfg`` when the caller has it loaded already. ``folds_only``: fold indices to
    run (a cross-validation that ran some folds only is compared on those)."""
    from .fit import load_data
    from .metrics import classification, mean_ci
    from .protocols import make_folds

    labels = cfg.model.labels
    data = data or load_data(cfg, progress=False)  # the network's input: same VAD masks, same speech_pad_s cut
    utts = data.utts
    feats = np.stack([utterance_features(data.wave(i), data.masks[i], gain_free) for i in range(len(data))])
    test_feats = feats
    if test_gain_db:
        gains = test_gains(cfg.protocol.seed, len(data), test_gain_db)
        test_feats = np.stack([utterance_features(data.wave(i) * g, data.masks[i], gain_free) for i, g in enumerate(gains)])
    y = data.labels
    folds = []
    for fold in make_folds(utts, cfg.protocol):
        if folds_only is not None and fold.index not in folds_only:
            continue
        model, best = fit_fold(feats, y, fold, labels, l2_grid, refit)
        m = classification(y[fold.test], model.predict_proba(test_feats[fold.test]).argmax(1), labels)
        folds.append({"fold": fold.index, "test_speakers": list(fold.test_groups), "l2": best, **m})
        log.info("baseline fold %d: UA %.3f WA %.3f (l2 %g)", fold.index, m["ua"], m["wa"], best)
    return {"folds": folds, "refit_on_val": refit, "gain_free": gain_free, "test_gain_db": test_gain_db, "ua": mean_ci([f["ua"] for f in folds]),
            "wa": mean_ci([f["wa"] for f in folds])}
