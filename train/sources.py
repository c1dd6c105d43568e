"""Where batches come from: waveforms through the whole model (``WaveSource``), or encoder features
computed once with a frozen encoder and fed to :meth:`SERModel.forward_frames` (``FeatureSource``).

Both yield objects with ``labels``, ``dims`` and ``index`` tensors and have ``forward(model, batch)``.
With ``views`` (SCL on), training batches carry 2B rows: the originals, then one augmented view each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from serlive.model import SERModel

from .batching import AudioSet, Batch, bucket_batches, collate, sorted_batches
from .config import AugmentConfig
from .devices import shard

log = logging.getLogger(__name__)


class WaveSource:
    """With ``perturb`` (``augment.classifier``), training batches are perturbed by a ``TrainAugment`` whose
    babble comes from the training utterances; validation and evaluation batches stay clean."""

    def __init__(self, data: AudioSet, views: AugmentConfig | None, batch_size: int, bucket: int,
                 perturb: AugmentConfig | None = None) -> None:
        self.data, self.views, self.batch_size, self.bucket = data, views, batch_size, bucket
        self.perturb, self._augmenters = perturb, {}

    def train_batches(self, index: np.ndarray, rng: np.random.Generator, ranks: tuple[int, int] = (0, 1)):
        augmenter = self.augmenter(index) if self.perturb is not None else None
        for idx in shard(bucket_batches(self.data.lengths, index, self.batch_size, rng, self.bucket), *ranks):
            yield collate(self.data, idx, self.views, rng, augmenter)

    def augmenter(self, index: np.ndarray, pool_size: int = 256):
        """The ``TrainAugment`` of the training utterances ``index`` (its babble pool: up to ``pool_size`` of them)."""
        from .augment import TrainAugment

        key = hash(np.asarray(index).tobytes())
        if key not in self._augmenters:
            pick = np.random.default_rng(0).permutation(np.asarray(index))[:pool_size]
            self._augmenters[key] = TrainAugment(self.perturb, [self.data.wave(int(i)) for i in pick])
        return self._augmenters[key]

    def eval_batches(self, index: np.ndarray, batch_size: int, views: bool = False, seed: int = 0):
        rng = np.random.default_rng(seed)
        for idx in sorted_batches(self.data.lengths, index, batch_size):
            yield collate(self.data, idx, self.views if views else None, rng)

    def n_batches(self, n: int, ranks: tuple[int, int] = (0, 1)) -> int:
        """Training batches per epoch for ``n`` items on one of ``ranks[1]`` processes."""
        return n_batches(n, self.batch_size, ranks)

    @staticmethod
    def forward(model: SERModel, batch: Batch):
        return model(batch.waves, batch.lengths, batch.speech)


@dataclass(frozen=True, slots=True)
class FeatBatch:
    """``hidden`` (B, T, H), ``n_frames`` (B,), ``speech`` (B, T), labels, dims, index as in Batch, and the
    statistics branch's standardised ``extra`` (B, E) when the source computed it."""

    hidden: torch.Tensor
    n_frames: torch.Tensor
    speech: torch.Tensor
    labels: torch.Tensor
    dims: torch.Tensor
    index: torch.Tensor
    extra: torch.Tensor | None = None

    def to(self, device: torch.device) -> "FeatBatch":
        return FeatBatch(*(None if t is None else t.to(device) for t in (
            self.hidden, self.n_frames, self.speech, self.labels, self.dims, self.index, self.extra)))


def feat_batch(data: AudioSet, rows: list[int], frames: list[torch.Tensor], masks: list[torch.Tensor],
               extra: torch.Tensor | None = None) -> FeatBatch:
    """Per-row encoder ``frames`` (T_r, H) and speech ``masks`` (T_r,) of the utterances ``rows``, padded."""
    t = max(max(h.shape[0] for h in frames), 1)
    hidden = torch.zeros(len(frames), t, frames[0].shape[1])
    speech = torch.zeros(len(frames), t, dtype=torch.bool)
    for r, (h, s) in enumerate(zip(frames, masks)):
        hidden[r, : h.shape[0]] = h.float()
        speech[r, : s.shape[0]] = s
    utts = data.utts
    labels = torch.tensor([utts[i].label for i in rows])
    dims = torch.tensor([[utts[i].valence, utts[i].arousal] for i in rows], dtype=torch.float32)
    return FeatBatch(hidden, torch.tensor([h.shape[0] for h in frames]), speech, labels, dims, torch.tensor(rows), extra)


def n_batches(n: int, batch_size: int, ranks: tuple[int, int] = (0, 1)) -> int:
    """Training batches per epoch for ``n`` items on one of ``ranks[1]`` processes."""
    return -(-(-(-n // batch_size)) // ranks[1])


class FeatureSource:
    """Encoder outputs of every utterance (and of one fixed augmented view when SCL is on), computed
    once with the encoder frozen, held as float16 on the CPU. Augmentation is drawn once, not per epoch."""

    def __init__(self, model: SERModel, data: AudioSet, views: AugmentConfig | None, batch_size: int,
                 bucket: int, device: torch.device, seed: int = 0) -> None:
        self.data, self.batch_size, self.bucket = data, batch_size, bucket
        self.views = views is not None
        waves = WaveSource(data, None, batch_size, bucket)
        self.orig = self._encode(model, waves, views=None, device=device, seed=seed)
        self.aug = self._encode(model, WaveSource(data, views, batch_size, bucket), views, device, seed) if views else None

    @torch.inference_mode()
    def _encode(self, model, source: WaveSource, views, device, seed):
        feats: list = [None] * len(self.data)
        all_idx = np.arange(len(self.data))
        total = source.n_batches(len(all_idx))
        for batch in tqdm(source.eval_batches(all_idx, self.batch_size, views is not None, seed), total=total,
                          desc="encoder features" + (" (views)" if views else ""), leave=False):
            batch = batch.to(device)
            hidden, n_frames = model.encoder(batch.waves, batch.lengths)
            rows = len(batch.index) // 2 if views else 0
            for r in range(rows, len(batch.index)):
                t = int(n_frames[r])
                feats[int(batch.index[r])] = (hidden[r, :t].half().cpu(), batch.speech[r, :t].cpu())
        return feats

    def _collate(self, idx: list[int], with_views: bool) -> FeatBatch:
        items = [self.orig[i] for i in idx] + ([self.aug[i] for i in idx] if with_views else [])
        return feat_batch(self.data, idx + (idx if with_views else []), [h for h, _ in items], [s for _, s in items])

    def train_batches(self, index: np.ndarray, rng: np.random.Generator, ranks: tuple[int, int] = (0, 1)):
        for idx in shard(bucket_batches(self.data.lengths, index, self.batch_size, rng, self.bucket), *ranks):
            yield self._collate(idx, self.views)

    def eval_batches(self, index: np.ndarray, batch_size: int, views: bool = False, seed: int = 0):
        for idx in sorted_batches(self.data.lengths, index, batch_size):
            yield self._collate(idx, views and self.views)

    def n_batches(self, n: int, ranks: tuple[int, int] = (0, 1)) -> int:
        """Training batches per epoch for ``n`` items on one of ``ranks[1]`` processes."""
        return n_batches(n, self.batch_size, ranks)

    @staticmethod
    def forward(model: SERModel, batch: FeatBatch):
        return model.forward_frames(batch.hidden, batch.n_frames, batch.speech)
