"""The Predictor: waveforms in, typed emotion predictions out. The engine and evaluation both use it."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .adapt import SpeakerAdapter
from .audio import to_mono_16k
from .calibration import OOD_K, apply_temperature, ood_score, shift_temperatures, short_factors, temper_for_ood
from .checkpoint import load_model_dir
from .config import ModelConfig
from .frames import FRAME_STRIDE_SAMPLES, SAMPLE_RATE_HZ, num_frames, speech_mask, speech_span, trim_to_speech
from .incremental import DEFAULT_TOLERANCE, FINAL_TOLERANCE, EncoderState, encode, spectral_stats
from .knn import KnnDatastore, interpolate
from .pitch import FEATURES as PITCH_FEATURES
from .ser import SERModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One utterance's prediction.

    ``probs`` are per-class probabilities in the order of ``labels`` (after kNN interpolation when
    ``knn`` is True); ``valence`` / ``arousal`` are None for a model trained without them;
    ``speech_frames`` is 0 when the VAD heard no speech (SAP then pooled every frame). ``ood`` is the
    out-of-distribution score in [0, 1] (None: the model has no OOD reference), ``uncertain`` says the
    label should not be trusted (far out of distribution, no voice, low confidence or no speech; see
    :mod:`serlive.model.calibration`), ``atypicality`` is the statistic behind ``ood``, ``voiced`` the pitch
    tracker's voiced share of the speech frames (None: the model has no pitch statistics), ``far`` that the
    input is past the checked speech or has no voice (one of the reasons for ``uncertain``; a voice heard
    with low confidence is not far, and still teaches the per-speaker adaptation), ``adapted`` that the
    speaker's running mean shifted the embedding (``embedding`` itself is always the raw one).
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
    ood: float | None = None
    uncertain: bool = False
    atypicality: float | None = None
    adapted: bool = False
    voiced: float | None = None
    far: bool = False

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
        self.tolerance = DEFAULT_TOLERANCE  # front-end drift before an interim reruns its segment (incremental)
        self.final_tolerance = FINAL_TOLERANCE  # the same for a final finishing its state (measured only)

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

    @property
    def incremental(self) -> bool:
        """Interims can carry encoder state over (:mod:`.incremental`: the GE2E encoder without dereverb)."""
        enc = self.config.encoder
        return enc.kind == "ge2e" and not enc.dereverb

    def predict_prepared(self, waves: list[np.ndarray], masks: list[np.ndarray],
                         states: list[EncoderState | None] | None = None,
                         finals: list[bool] | None = None) -> list[Prediction]:
        """Predict waveforms already through :meth:`prepare`, with their :meth:`mask` (the engine's path:
        it prepares and masks on its worker thread and must not pay for either twice). ``states``: per
        item, None (the whole-segment path) or the :class:`EncoderState` of a growing segment, whose waveforms
        are its audio from its start so far (:meth:`incremental` says whether the model can); ``finals``: per
        item, whether it finishes its segment's state as a final would, within :attr:`final_tolerance` (what
        ``ser-live bench --agreement`` measures; the worker's finals recompute their segment instead)."""
        if not waves:
            return []
        for w, m in zip(waves, masks, strict=True):
            if len(m) != num_frames(len(w)):
                raise ValueError(f"speech mask has {len(m)} frames; a {len(w)}-sample waveform has {num_frames(len(w))}")
        pad = self.config.speech_pad_s
        offsets = [0] * len(waves)
        if pad is not None:
            offsets = [0 if span == (0, len(m)) else span[0] * FRAME_STRIDE_SAMPLES
                       for m in masks for span in [speech_span(m, pad)]]
            waves, masks = map(list, zip(*(trim_to_speech(w, m, pad) for w, m in zip(waves, masks))))
        if not states or not self.incremental or all(s is None for s in states):
            return self._forward(waves, masks)
        whole = [i for i, s in enumerate(states) if s is None]
        grown = [i for i, s in enumerate(states) if s is not None]
        out = dict(zip(whole, self._forward([waves[i] for i in whole], [masks[i] for i in whole]) if whole else []))
        tolerances = [self.final_tolerance if finals and finals[i] else self.tolerance for i in grown]
        out |= dict(zip(grown, self._forward([waves[i] for i in grown], [masks[i] for i in grown],
                                             ([offsets[i] for i in grown], [states[i] for i in grown], tolerances))))
        return [out[i] for i in range(len(waves))]

    @torch.inference_mode()
    def _forward(self, waves: list[np.ndarray], masks: list[np.ndarray],
                 carry: tuple[list[int], list[EncoderState], list[float]] | None = None) -> list[Prediction]:
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
            speech_t = torch.from_numpy(speech).to(self.device)
            if carry is None:
                out = self.model(x, lengths, speech_t)
            else:  # the encoder's frames carried over from the segment's previous interim; the rest as usual
                frames = encode(self.model.encoder, waves, *carry)
                hidden = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)  # (B, T, 768)
                spectral = self.model.spectral
                extra = None if spectral is None else spectral_stats(spectral, waves, carry[1], speech_t)
                out = self.model.forward_frames(hidden, torch.tensor([len(f) for f in frames], device=self.device), speech_t, extra)
        emb = out.embedding.float().cpu().numpy()
        atyp = voiced = None
        if out.spectral is not None:  # RMS of the standardised spectral statistics (see calibration.py)
            atyp = out.spectral.float().pow(2).mean(-1).sqrt().cpu().numpy()
            if self.config.pitch_stats:  # the first pitch statistic, un-standardised
                stats, i = self.model.spectral, self.model.spectral.out_dim - len(PITCH_FEATURES)
                voiced = (out.spectral[:, i].float() * stats.scale[i] + stats.shift[i]).cpu().numpy()
        return self.finish(emb, atyp, out.speech_frames.cpu().numpy(), [len(m) for m in masks], voiced=voiced)

    def adapt(self, prediction: Prediction, adapter: SpeakerAdapter) -> Prediction:
        """``prediction`` again, from its embedding shifted by ``adapter`` (the speaker's running mean so far);
        the model is not run again. Unchanged when the adapter has seen nothing or the model cannot adapt."""
        if adapter.count == 0 or not self.can_adapt:
            return prediction
        return self.refinish([prediction], shift=adapter.shift())[0]

    def refinish(self, predictions: list[Prediction], shift: np.ndarray | None = None) -> list[Prediction]:
        """``predictions`` (raw, not adapted) again through this Predictor's heads, kNN and calibration, from
        their embeddings less ``shift`` (the model is not run again)."""
        def column(name):
            values = [getattr(p, name) for p in predictions]
            return None if values[0] is None else np.array(values)

        return self.finish(np.stack([p.embedding for p in predictions]), column("atypicality"),
                           column("speech_frames"), [p.frames for p in predictions], shift=shift,
                           voiced=column("voiced"))

    def with_calibration(self, **settings) -> "Predictor":
        """The same model and datastore with ``settings`` in its calibration (the model is not changed)."""
        out = Predictor(self.model, self.datastore, self.device, self.dtype, self.use_knn)
        out.config = self.config.replace(calibration=dataclasses.replace(self.config.calibration, **settings))
        return out

    @property
    def can_adapt(self) -> bool:
        """The model has the training speakers' mean embedding that per-speaker adaptation centres on."""
        return len(self.config.calibration.embedding_mean) == self.config.embed_dim

    def new_adapter(self, window: int = 64) -> SpeakerAdapter | None:
        """A :class:`SpeakerAdapter` for one stream or speaker, or None when the model cannot adapt."""
        cal = self.config.calibration
        return SpeakerAdapter(np.array(cal.embedding_mean), cal.adapt_prior, window) if self.can_adapt else None

    def finish(self, emb: np.ndarray, atypicality: np.ndarray | None, speech_frames: np.ndarray, frames: list[int],
               shift: np.ndarray | None = None, voiced: np.ndarray | None = None) -> list[Prediction]:
        """Heads, kNN, temperature and OOD on raw embeddings ``emb`` (B, D) (less ``shift`` (D,) when adapting);
        ``voiced`` (B,) the voiced shares when the model has pitch statistics."""
        cal = self.config.calibration
        query = emb if shift is None else emb - shift
        logits = query @ self._heads[0].T + self._heads[1]
        p_model = np.exp(logits - logits.max(-1, keepdims=True))
        probs = p_model / p_model.sum(-1, keepdims=True)
        dims = None if self._heads[2] is None else query @ self._heads[2].T + self._heads[3]
        dist = idx = None
        if self.datastore is not None and (self.use_knn or cal.ood_statistic == "knn_distance"):
            dist, idx = self.datastore.search(query, max(self.config.knn.k, OOD_K))
        if self.use_knn:
            knn = self.config.knn
            probs = interpolate(probs, self.datastore.vote(dist[:, :knn.k], idx[:, :knn.k], knn.temperature), knn.alpha)
        if cal.ood_statistic == "knn_distance":
            atypicality = None if dist is None else dist[:, :OOD_K].mean(-1)
        temperature = cal.temperature
        if cal.shift_beta > 0 and atypicality is not None:
            temperature = shift_temperatures(atypicality, cal.temperature, cal.shift_beta, cal.shift_from)
        if cal.short_gamma > 0:
            temperature = temperature * short_factors(speech_frames, cal.short_frames, cal.short_gamma)
        probs = apply_temperature(probs, temperature)
        ood = None if not cal.ood_reference or atypicality is None else ood_score(atypicality, cal.ood_reference)
        far = np.zeros(len(emb), bool)  # past the checked speech, or no voice: half way to uniform, uncertain
        if cal.speech_limit > 0 and atypicality is not None:
            far |= atypicality > cal.speech_limit
        if cal.min_voiced > 0 and voiced is not None:
            far |= np.asarray(voiced) < cal.min_voiced
        probs = np.where(far[:, None], (1.0 - cal.ood_mix) * probs + cal.ood_mix / probs.shape[-1], probs)
        if cal.speech_limit == 0 and ood is not None:  # a model directory from before the speech limit
            probs = temper_for_ood(probs, ood, cal.ood_threshold, cal.ood_mix)
            far |= ood >= cal.ood_threshold

        def item(values, i):
            return None if values is None else float(values[i])

        return [self._prediction(probs[i], emb[i], None if dims is None else dims[i], int(speech_frames[i]), frames[i],
                                 item(ood, i), item(atypicality, i), shift is not None, bool(far[i]), item(voiced, i))
                for i in range(len(emb))]

    @cached_property
    def _heads(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Classifier and regressor weights as float64 numpy: the heads are linear in the embedding."""
        def arr(t):
            return t.detach().float().cpu().numpy().astype(np.float64)
        reg = self.model.regressor
        return (arr(self.model.classifier.weight), arr(self.model.classifier.bias),
                None if reg is None else arr(reg.weight), None if reg is None else arr(reg.bias))

    def _prediction(self, probs, emb, dims, speech_frames: int, frames: int, ood: float | None,
                    atypicality: float | None, adapted: bool, far: bool, voiced: float | None) -> Prediction:
        best = int(np.argmax(probs))
        confidence = float(probs[best])
        uncertain = speech_frames == 0 or confidence < self.config.calibration.min_confidence or far
        return Prediction(
            label=self.labels[best], labels=self.labels, probs=tuple(float(p) for p in probs),
            confidence=confidence,
            valence=None if dims is None else float(dims[0]), arousal=None if dims is None else float(dims[1]),
            embedding=emb, knn=self.use_knn, speech_frames=speech_frames, frames=frames,
            ood=ood, uncertain=bool(uncertain), atypicality=atypicality, adapted=adapted, voiced=voiced, far=far,
        )
