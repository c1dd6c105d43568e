"""Per-stream rolling "current state" and the engine's latency window."""

from __future__ import annotations

from collections import deque

import numpy as np

from .chunks import SAMPLE_RATE_HZ
from .config import StateConfig
from .events import PredictionEvent, State


class RollingState:
    """Time-weighted smoothing of a stream's recent final predictions.

    Each final counts with weight ``speech duration * 0.5 ** (age / half_life)``, its age measured on the
    stream's sample clock from its end to the newest end, so the state is the same in real time and
    ``--fast``. Forgotten after ``reset_after_s`` without speech.
    """

    def __init__(self, stream: str, labels: tuple[str, ...], config: StateConfig = StateConfig()) -> None:
        self.stream, self.labels, self.config = stream, labels, config
        self.reset()

    def reset(self) -> None:
        self._finals: deque[PredictionEvent] = deque(maxlen=64)
        self.segments = 0

    @property
    def last_end_sample(self) -> int | None:
        return self._finals[-1].end_sample if self._finals else None

    def update(self, final: PredictionEvent) -> State:
        if self._finals and final.start_sample - self._finals[-1].end_sample > self.reset_samples:
            self.reset()
        self._finals.append(final)
        self.segments += 1
        return self.state()

    def expire(self, now_sample: int) -> State | None:
        """A reset State when the last final is older than ``reset_after_s`` at ``now_sample``, else None."""
        last = self.last_end_sample
        if last is None or now_sample - last <= self.reset_samples:
            return None
        self.reset()
        return self.state()

    def state(self) -> State:
        if not self._finals:
            return State(self.stream, None, {}, None, None, 0)
        newest = self._finals[-1].end_sample
        half_life = self.config.half_life_s * SAMPLE_RATE_HZ
        weights = np.array([max(f.end_sample - f.start_sample, 1) * 0.5 ** ((newest - f.end_sample) / half_life)
                            for f in self._finals])
        weights /= weights.sum()
        probs = {k: float(sum(w * f.probs.get(k, 0.0) for w, f in zip(weights, self._finals))) for k in self.labels}
        return State(self.stream, max(probs, key=probs.get), probs, self._mean(weights, "valence"),
                     self._mean(weights, "arousal"), self.segments)

    @property
    def reset_samples(self) -> float:
        return self.config.reset_after_s * SAMPLE_RATE_HZ

    def _mean(self, weights: np.ndarray, name: str) -> float | None:
        values = [getattr(f, name) for f in self._finals]
        if any(v is None for v in values):
            return None
        return float(np.dot(weights, values))


class LatencyWindow:
    """The last ``size`` end-of-audio -> emitted latencies of final predictions, in milliseconds."""

    def __init__(self, size: int = 500) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, latency_ms: float) -> None:
        self._values.append(latency_ms)

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        if not self._values:
            return None
        return round(float(np.percentile(np.fromiter(self._values, float), q)), 1)
