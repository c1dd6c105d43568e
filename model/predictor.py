"""The Predictor: waveforms in, typed emotion predictions out. The engine and evaluation both use it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import to_mono_16k
from .checkpoint import load_model_dir
from .config import ModelConfig
from .frames import SAMPLE_RATE_HZ, num_frames, speech_mask, trim_to_speech
from .knn import KnnDatastore, interpolate
from .ser import SERModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One utterance's prediction.

    ``probs`` are per-class probabilities in the order of ``labels`` (after kNN interpolation when
    ``knn`` is True); ``valence`` / ``arousal`` are None for a model trained without them;
    ``speech_frames`` is 0 when the VAD heard no speech (SAP then pooled every frame).
    """

    label: str
    labels: tuple[str, ...]
    probs: tuple[float, ...]
    confidence: float
    valence: float | None
    arousal: float | None
    embedding: np.ndarray
    knn: bool
    speech_frames: int
    frames: int

    @property
    def prob_dict(self) -> dict[str, float]:
        return dict(zip(self.labels, self.probs))


class Predictor:
    """Owns a :class:`SERModel` on one device; pads batches, builds VAD masks, applies kNN.

    ``dtype`` is the autocast dtype on CUDA (``torch.bfloat16`` or ``torch.float16``); the CPU runs float32.
    """

    def __init__(
        self,
        model: SERModel,
        datastore: KnnDatastore | None = None,
        device: torch.device = torch.device("cpu"),
        dtype: torch.dtype = torch.float32,
        use_knn: bool = True,
    ) -> None:
        self.model = model.eval().to(device)
        self.config: ModelConfig = model.config
        self.datastore = datastore
        self.device, self.dtype = device, dtype
        self.use_knn = use_knn and datastore is not None and self.config.knn.alpha > 0

    @classmethod
    def from_dir(cls, directory: str | Path, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32, use_knn: bool = True) -> "Predictor":
        model, _, datastore, _ = load_model_dir(directory)
        return cls(model, datastore, device, dtype, use_knn)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def max_samples(self) -> int:
        return int(self.config.max_duration_s * SAMPLE_RATE_HZ)

    def prepare(self, audio, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
        """Validated 16 kHz mono float32, truncated to the model's ``max_duration_s``."""
        return to_mono_16k(audio, sample_rate_hz)[: self.max_samples]

    def mask(self, waveform: np.ndarray) -> np.ndarray:
        """The SAP speech mask of a prepared waveform (the one function training uses too)."""
        return speech_mask(waveform, self.config.vad.mode, self.config.vad.frame_ms)

    def predict(self, audio, sample_rate_hz: int = SAMPLE_RATE_HZ) -> Prediction:
        """Predict one waveform: any rate, mono or stereo, float or integer samples."""
        return self.predict_batch([audio], sample_rate_hz)[0]

    def predict_batch(self, audios: list, sample_rate_hz: int = SAMPLE_RATE_HZ,
                      masks: list[np.ndarray] | None = None) -> list[Prediction]:
        """Predict several waveforms in one padded forward pass. ``masks`` (already-computed speech
        masks of the prepared waveforms, e.g. from the engine) skip the VAD pass."""
        waves = [self.prepare(a, sample_rate_hz) for a in audios]
        return self.predict_prepared(waves, [self.mask(w) for w in waves] if masks is None else masks)

    def predict_prepared(self, waves: list[np.ndarray], masks: list[np.ndarray]) -> list[Prediction]:
        """Predict waveforms already through :meth:`prepare`, with their :meth:`mask` (the engine's path:
        it prepares and masks on its worker thread and must not pay for either twice)."""
        if not waves:
            return []
        for w, m in zip(waves, masks, strict=True):
            if len(m) != num_frames(len(w)):
                raise ValueError(f"speech mask has {len(m)} frames; a {len(w)}-sample waveform has {num_frames(len(w))}")
        pad = self.config.speech_pad_s
        if pad is not None:
            waves, masks = map(list, zip(*(trim_to_speech(w, m, pad) for w, m in zip(waves, masks))))
        return self._forward(waves, masks)

    @torch.inference_mode()
    def _forward(self, waves: list[np.ndarray], masks: list[np.ndarray]) -> list[Prediction]:
        n = max(len(w) for w in waves)
        batch = np.zeros((len(waves), n), np.float32)
        speech = np.zeros((len(waves), num_frames(n)), bool)
        for i, (w, m) in enumerate(zip(waves, masks)):
            batch[i, : len(w)] = w
            speech[i, : len(m)] = m
        x = torch.from_numpy(batch).to(self.device)
        lengths = torch.tensor([len(w) for w in waves], device=self.device)
        autocast = self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            out = self.model(x, lengths, torch.from_numpy(speech).to(self.device))
        p_model = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
        emb = out.embedding.float().cpu().numpy()
        probs = p_model
        if self.use_knn:
            k, alpha, temp = self.config.knn.k, self.config.knn.alpha, self.config.knn.temperature
            probs = interpolate(p_model, self.datastore.probs(emb, k, temp), alpha)
        dims = out.dims.float().cpu().numpy() if out.dims is not None else None
        n_speech = out.speech_frames.cpu().numpy()
        return [self._prediction(probs[i], emb[i], None if dims is None else dims[i], int(n_speech[i]),
                                 len(masks[i])) for i in range(len(waves))]

    def _prediction(self, probs, emb, dims, speech_frames: int, frames: int) -> Prediction:
        best = int(np.argmax(probs))
        return Prediction(
            label=self.labels[best], labels=self.labels, probs=tuple(float(p) for p in probs),
            confidence=float(probs[best]),
            valence=None if dims is None else float(dims[0]), arousal=None if dims is None else float(dims[1]),
            embedding=emb, knn=self.use_knn, speech_frames=speech_frames, frames=frames,
        )
