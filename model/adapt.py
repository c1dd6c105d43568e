"""Calibrating to the speaker, causally: emotion relative to how this voice usually sounds.

A stream is usually one person talking for a while. Each final prediction's 32-d embedding updates the
stream's running mean; later utterances are predicted from ``e - shift``. Every adapter here is such a shift
(the heads are linear in the embedding and the kNN query moves with it), so :meth:`Predictor.adapt` serves
them all, and none looks ahead: :meth:`shift` uses only what :meth:`update` was given before.

* ``mean`` (:class:`SpeakerAdapter`): ``shift = m_speaker - m_reference``, the classic per-speaker feature
  standardisation (mean only), ``m_speaker`` shrunk towards the training speakers' mean by ``prior``
  pseudo-utterances. It assumes a speaker's emotions balance as the training actors' did: someone who is
  calm for ten utterances in a row drifts towards the model's average (on natural speech it made the model
  worse, 37 -> 34 UA).
* ``mixture`` (:class:`MixtureAdapter`): the speaker's mean is expected at ``sum_c pi_c mu_c`` (the training
  class means weighted by this stream's own label priors), not at the training mean; ``pi`` is estimated
  from the earlier utterances by EM (Saerens et al., 2002), jointly with the shift, shrunk towards the
  training priors. A calm stream keeps its calm: only the voice's offset is removed.
* ``prior`` (:class:`PriorAdapter`): no centring; the EM label priors alone, applied as the logit offset
  ``log(pi / uniform)`` (an embedding shift along the heads' row space).
* ``guard``: the mean shift scaled down as the stream's unadapted predictions concentrate on one class.

``reset()`` (a new speaker, the stream's state reset) forgets them; ``window`` bounds the memory.

``ser-live`` runs ``mean`` through :func:`adapted`, which also applies the calibration's familiarity gate
(``adapt_near``) and voice term (``voice_beta``). The other kinds are measured by ``ser-train crosscorpus
--adapt``; on ASED and on RAVDESS actors out of training, balanced or not, none beat the mean shift with a slow
prior (the bundled model's card, "Other languages, other voices").
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .calibration import temper_prediction, voice_factor

KINDS = ("none", "mean", "mixture", "prior", "guard")
"""Adaptation kinds :func:`build` knows; ``none`` is no adapter."""

EM_ITERATIONS = 20
"""EM steps per :meth:`shift` (a stream holds at most ``window`` utterances: 20 steps cost well under a ms)."""


class SpeakerAdapter:
    """One stream's (or one test speaker's) running embedding statistics: the ``mean`` kind."""

    def __init__(self, reference_mean: np.ndarray, prior: float = 4.0, window: int = 64) -> None:
        self.reference = np.asarray(reference_mean, np.float32)
        self.prior = float(prior)
        self._seen: deque[np.ndarray] = deque(maxlen=window)

    @property
    def count(self) -> int:
        return len(self._seen)

    def reset(self) -> None:
        self._seen.clear()

    def update(self, embedding: np.ndarray) -> None:
        """Add one finished utterance's raw (unadapted) embedding ``(D,)``."""
        self._seen.append(np.asarray(embedding, np.float32).copy())

    def speaker_mean(self) -> np.ndarray:
        """The stream's mean embedding shrunk towards the reference by ``prior`` pseudo-utterances, ``(D,)``."""
        total = np.sum(self._seen, axis=0) + self.prior * self.reference
        return total / (len(self._seen) + self.prior)

    def shift(self) -> np.ndarray:
        """``m_speaker - m_reference`` with the shrinkage, ``(D,)``; zeros before any utterance."""
        if not self._seen:
            return np.zeros_like(self.reference)
        return (self.speaker_mean() - self.reference).astype(np.float32)

    def distance(self) -> float:
        """How far the stream's (shrunk) mean lies from the reference; 0 before any utterance."""
        return float(np.linalg.norm(self.speaker_mean() - self.reference)) if self._seen else 0.0

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Adapted embeddings ``(N, D)`` (or ``(D,)``) with the current shift."""
        return np.asarray(embeddings, np.float32) - self.shift()


class _Heads:
    """The classifier's weights ``(C, D)``, bias ``(C,)`` and temperature: posteriors of embeddings."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, temperature: float) -> None:
        self.weight, self.bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
        self.temperature = float(temperature)
        self.inverse = np.linalg.pinv(self.weight)  # (D, C): an embedding shift giving a logit offset

    def posteriors(self, embeddings: np.ndarray) -> np.ndarray:
        logits = (embeddings @ self.weight.T + self.bias) / self.temperature
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)


def em_priors(posteriors: np.ndarray, start: np.ndarray, strength: float) -> np.ndarray:
    """Label priors of the rows of ``posteriors`` (N, C) (computed under uniform priors: the heads are trained
    with class weights) by Saerens et al.'s EM, with ``strength`` pseudo-utterances of ``start`` (C,)."""
    pi = np.asarray(start, np.float64)
    for _ in range(EM_ITERATIONS):
        q = posteriors * pi
        q /= q.sum(-1, keepdims=True)
        pi = (q.sum(0) + strength * start) / (len(q) + strength)
    return pi


class MixtureAdapter(SpeakerAdapter):
    """The ``mixture`` kind: the speaker's mean is centred on the training class means mixed by this stream's
    EM-estimated label priors. With the priors at the training proportions it is the ``mean`` kind."""

    def __init__(self, reference_mean, class_means, heads: _Heads, train_priors, prior: float = 4.0,
                 strength: float = 4.0, window: int = 64) -> None:
        super().__init__(reference_mean, prior, window)
        self.class_means = np.asarray(class_means, np.float64)  # (C, D)
        self.heads, self.train_priors, self.strength = heads, np.asarray(train_priors, np.float64), float(strength)

    def shift(self) -> np.ndarray:
        if not self._seen:
            return np.zeros_like(self.reference)
        seen, m = np.stack(self._seen).astype(np.float64), self.speaker_mean()
        pi = self.train_priors
        for _ in range(EM_ITERATIONS // 4):  # the priors and the shift, alternately
            delta = m - pi @ self.class_means
            pi = em_priors(self.heads.posteriors(seen - delta), self.train_priors, self.strength)
        return (m - pi @ self.class_means).astype(np.float32)


class PriorAdapter(SpeakerAdapter):
    """The ``prior`` kind: the stream's EM label priors as a logit offset; the voice is not centred."""

    def __init__(self, reference_mean, heads: _Heads, strength: float = 4.0, window: int = 64) -> None:
        super().__init__(reference_mean, 0.0, window)
        self.heads, self.strength = heads, float(strength)

    def shift(self) -> np.ndarray:
        if not self._seen:
            return np.zeros_like(self.reference)
        c = self.heads.weight.shape[0]
        pi = em_priors(self.heads.posteriors(np.stack(self._seen)), np.full(c, 1.0 / c), self.strength)
        offset = np.log(pi * c)  # logits + offset; the embedding moves against the shift
        return (-(self.heads.inverse @ (offset - offset.mean()))).astype(np.float32)


class GuardedAdapter(SpeakerAdapter):
    """The ``guard`` kind: the mean shift times the normalised entropy of the stream's unadapted predicted
    labels, so a stream the model hears as one class keeps most of its voice."""

    def __init__(self, reference_mean, heads: _Heads, prior: float = 4.0, window: int = 64) -> None:
        super().__init__(reference_mean, prior, window)
        self.heads = heads

    def shift(self) -> np.ndarray:
        if not self._seen:
            return np.zeros_like(self.reference)
        c = self.heads.weight.shape[0]
        labels = self.heads.posteriors(np.stack(self._seen)).argmax(-1)
        share = (np.bincount(labels, minlength=c) + 1.0) / (len(labels) + c)
        scale = float(-(share * np.log(share)).sum() / np.log(c))
        return (scale * super().shift()).astype(np.float32)


def familiarity_gate(distance: float, near: float) -> float:
    """The share of the shift a stream gets: 0 within ``near`` of the reference, whole from twice ``near`` on,
    linear between (``near`` 0: always whole)."""
    return 1.0 if near <= 0 else float(np.clip(distance / near - 1.0, 0.0, 1.0))


def adapted(predictor, prediction, adapter: SpeakerAdapter | None):
    """``prediction`` adapted to the stream as ``ser-live`` does it: shifted by ``adapter`` (what it learnt from
    the stream's earlier finals) through ``predictor`` (a :class:`~serlive.model.predictor.Predictor`), as much
    as :func:`familiarity_gate` allows (``calibration.adapt_near``), then flattened when the stream's voice is
    far from the training speakers' (``calibration.voice_beta``)."""
    if adapter is None:
        return prediction
    cal = predictor.config.calibration
    out = prediction
    if adapter.count and predictor.can_adapt:
        gate = familiarity_gate(adapter.distance(), cal.adapt_near)
        out = predictor.refinish([prediction], shift=gate * adapter.shift())[0]
    if cal.voice_beta > 0 and adapter.count:
        out = temper_prediction(out, voice_factor(adapter.distance(), cal.voice_from, cal.voice_beta),
                                cal.min_confidence)
    return out


def build(kind: str, reference_mean, prior: float, heads: tuple | None = None, class_means=None,
          train_priors=None, strength: float = 4.0, window: int = 64) -> SpeakerAdapter | None:
    """An adapter of ``kind`` (:data:`KINDS`); ``heads`` is (weight (C, D), bias (C,), temperature), needed
    by every kind but ``mean``; ``class_means`` (C, D) and ``train_priors`` (C,) by ``mixture``."""
    if kind not in KINDS:
        raise ValueError(f"adaptation must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "none":
        return None
    if kind == "mean":
        return SpeakerAdapter(reference_mean, prior, window)
    h = _Heads(*heads)
    if kind == "prior":
        return PriorAdapter(reference_mean, h, strength, window)
    if kind == "guard":
        return GuardedAdapter(reference_mean, h, prior, window)
    return MixtureAdapter(reference_mean, class_means, h, train_priors, prior, strength, window)
