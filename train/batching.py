"""Audio held in memory with its speech masks, length-bucketed batches, and padding into tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from serlive.model import num_frames, trim_to_speech
from serlive.model.frames import FRAME_STRIDE_SAMPLES, speech_mask, speech_span

from .augment import augment
from .cache import MaskCache
from .config import AugmentConfig
from .data import Utterance, load_audio

log = logging.getLogger(__name__)


class AudioSet:
    """The waveforms (truncated, 16 kHz) and speech masks of ``utts``. With ``preload`` every waveform
    stays in memory; otherwise files are read again on each access (masks are always kept). With
    ``speech_pad_s`` each item is cut to its speech span plus that context (``trim_to_speech``), as the
    Predictor cuts a model's inputs when its config sets ``speech_pad_s``."""

    def __init__(self, utts: list[Utterance], max_samples: int, cache: MaskCache, preload: bool = True,
                 progress: bool = True, speech_pad_s: float | None = None) -> None:
        self.utts, self.max_samples, self.preload, self.speech_pad_s = utts, max_samples, preload, speech_pad_s
        self.vad = cache.vad  # how perturbed rows' masks are recomputed (collate)
        self.waves: list[np.ndarray | None] = []
        self.spans: list[tuple[int, int]] = []
        self.masks: list[np.ndarray] = []
        lengths = []
        for u in tqdm(utts, desc="audio + VAD", unit="utt", disable=not progress, leave=False):
            recording = w = load_audio(u.path, max_samples)
            mask = cache.get(u.path, w)
            start = 0
            if speech_pad_s is not None:
                start = speech_span(mask, speech_pad_s)[0] * FRAME_STRIDE_SAMPLES
                w, mask = trim_to_speech(w, mask, speech_pad_s)
            self.spans.append((start, start + len(w)))
            self.masks.append(mask)
            self.waves.append(recording if preload else None)  # the whole recording: wave(i) is a slice of it
            lengths.append(len(w))
        self.lengths = np.asarray(lengths, np.int64)
        log.info("loaded %d utterances (%.1f min of audio); VAD cache %d hits, %d misses",
                 len(utts), self.lengths.sum() / 16000 / 60, cache.hits, cache.misses)

    def __len__(self) -> int:
        return len(self.utts)

    def recording(self, i: int) -> np.ndarray:
        """Utterance ``i``'s whole recording (up to ``max_samples``), before the speech-span cut."""
        w = self.waves[i]
        return w if w is not None else load_audio(self.utts[i].path, self.max_samples)

    def wave(self, i: int) -> np.ndarray:
        """Utterance ``i`` as the model takes it: cut to its speech span when ``speech_pad_s`` is set."""
        start, stop = self.spans[i]
        return self.recording(i)[start:stop]

    @property
    def labels(self) -> np.ndarray:
        return np.array([u.label for u in self.utts], np.int64)

    @property
    def dims(self) -> np.ndarray:
        """(N, 2) valence, arousal; NaN where absent."""
        return np.array([[u.valence, u.arousal] for u in self.utts], np.float32).reshape(-1, 2)


@dataclass(frozen=True, slots=True)
class Batch:
    """Padded tensors: ``waves`` (B, N), ``lengths`` (B,), ``speech`` (B, T), ``labels`` (B,),
    ``dims`` (B, 2) with NaN where absent, ``index`` (B,) positions in the AudioSet."""

    waves: torch.Tensor
    lengths: torch.Tensor
    speech: torch.Tensor
    labels: torch.Tensor
    dims: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.waves, self.lengths, self.speech,
                                                                 self.labels, self.dims, self.index)))


def collate(data: AudioSet, index: list[int], views: AugmentConfig | None = None,
            rng: np.random.Generator | None = None, augmenter=None) -> Batch:
    """Pad ``index`` into a batch; with ``views``, append one augmented view of each item (2B rows,
    originals first), as the SCL batch of 2N instances. With ``augmenter`` (a ``TrainAugment``) the
    original rows are :func:`perturbed_rows`; the SCL views start from the clean audio."""
    rng = rng or np.random.default_rng()
    waves = [data.wave(i) for i in index]
    masks = [data.masks[i] for i in index]
    if augmenter is not None:
        waves, masks = perturbed_rows(data, index, augmenter, rng)
    waves, idx = list(waves), list(index)
    if views is not None:
        view_waves, view_masks = scl_views(data, index, views, rng)
        waves, masks, idx = waves + view_waves, list(masks) + view_masks, idx + list(index)
    return pad_rows(data, waves, masks, idx)


def scl_views(data: AudioSet, index: list[int], views: AugmentConfig, rng: np.random.Generator):
    """One augmented view (``augment.kind``) of each utterance's clean audio, for SCL: waves and masks."""
    pairs = [augment(data.wave(i), data.masks[i], views, rng) for i in index]
    return [w for w, _ in pairs], [m for _, m in pairs]


def perturbed_rows(data: AudioSet, index: list[int], augmenter, rng: np.random.Generator):
    """The utterances ``index`` perturbed by ``augmenter`` as the live engine meets such audio: the whole
    recording perturbed (its pauses get the noise, the room, the line too), the VAD run on the result (noise
    makes it hear more speech) and, with ``speech_pad_s``, the input cut to the speech span it finds, as
    :meth:`Predictor.predict_prepared` cuts it. Returns the waves and their speech masks.

    Perturbing the already-cut clean utterance instead (as ser-train did before) trains on inputs that a
    microphone never delivers: GE2E models trained that way lost 6-16 more points at 10-20 dB SNR."""
    waves, masks = [], []
    for w in augmenter.batch([data.recording(i) for i in index], rng):
        mask = speech_mask(w, data.vad.mode, data.vad.frame_ms)
        if data.speech_pad_s is not None:
            w, mask = trim_to_speech(w, mask, data.speech_pad_s)
        waves.append(w)
        masks.append(mask)
    return waves, masks


def pad_rows(data: AudioSet, waves: list[np.ndarray], masks: list[np.ndarray], idx: list[int]) -> Batch:
    """Rows ``waves`` with their speech ``masks``, of the utterances ``idx`` of ``data``, as one padded Batch."""
    n = max(len(w) for w in waves)
    x = np.zeros((len(waves), n), np.float32)
    speech = np.zeros((len(waves), max(num_frames(n), 1)), bool)
    for row, (w, m) in enumerate(zip(waves, masks)):
        x[row, : len(w)] = w
        speech[row, : len(m)] = m
    labels = np.array([data.utts[i].label for i in idx], np.int64)
    dims = np.array([[data.utts[i].valence, data.utts[i].arousal] for i in idx], np.float32)
    return Batch(torch.from_numpy(x), torch.tensor([len(w) for w in waves]), torch.from_numpy(speech),
                 torch.from_numpy(labels), torch.from_numpy(dims), torch.tensor(idx))


def bucket_batches(lengths: np.ndarray, index: np.ndarray, batch_size: int, rng: np.random.Generator,
                   bucket_batches: int = 20) -> list[list[int]]:
    """Shuffle ``index``, sort each run of ``batch_size * bucket_batches`` items by length, cut into
    batches and shuffle the batches: little padding, still a different order every epoch."""
    order = rng.permutation(np.asarray(index))
    span = batch_size * max(1, bucket_batches)
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start: start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i: i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, index: np.ndarray, batch_size: int) -> list[list[int]]:
    """Deterministic length-sorted batches for evaluation."""
    order = np.asarray(index)[np.argsort(lengths[np.asarray(index)], kind="stable")]
    return [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
