"""Calibrating to the speaker, causally: emotion relative to how this voice usually sounds.

A stream is usually one person talking for a while. Each final prediction's 32-d embedding updates the
stream's running mean; later utterances are predicted from ``e - (m_speaker - m_reference)``, where
``m_reference`` is the training speakers' mean embedding and ``m_speaker`` the stream's mean shrunk towards
it by ``prior`` pseudo-utterances (so the first utterance is predicted as without adaptation and the shift
grows as the voice becomes known). The heads are linear in the embedding, so this is the classic per-speaker
feature standardisation (mean only) done where the model summarises an utterance; the kNN query moves with it.

It assumes a speaker's emotions roughly balance over the utterances seen: someone who is angry for ten
utterances in a row will drift towards the model's average. ``reset()`` (a new speaker, the stream's state
reset) forgets them; ``window`` bounds the memory so an old voice fades.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class SpeakerAdapter:
    """One stream's (or one test speaker's) running embedding statistics; never looks ahead: :meth:`shift`
    uses only what :meth:`update` was given before."""

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

    def shift(self) -> np.ndarray:
        """``m_speaker - m_reference`` with the shrinkage, ``(D,)``; zeros before any utterance."""
        if not self._seen:
            return np.zeros_like(self.reference)
        total = np.sum(self._seen, axis=0) + self.prior * self.reference
        return (total / (len(self._seen) + self.prior) - self.reference).astype(np.float32)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Adapted embeddings ``(N, D)`` (or ``(D,)``) with the current shift."""
        return np.asarray(embeddings, np.float32) - self.shift()
