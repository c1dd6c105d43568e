"""Perturbed draws computed once: training on a frozen encoder at the cost of its heads.

With a frozen encoder (GE2E) the frames of a perturbed utterance never change, so running the encoder on
every epoch's fresh perturbation is wasted work (4 s of a 4.5 s batch on 2 CPU cores). ``DrawSource``
perturbs every utterance ``draws`` times up front, as :class:`.sources.WaveSource` would per batch
(the classifier's row: :func:`.batching.perturbed_rows`, the whole recording perturbed and cut as live;
the SCL view through ``augment.kind``), runs the encoder and the statistics branch once per draw, and keeps the raw frames as
float16 with their speech masks and raw statistics. Each training batch then picks one draw per item for
the classifier's row and another for its view; evaluation uses the clean audio. Standardisation stays per
fold (the fold's training utterances, clean), applied as each batch is built.

Babble noise (``run.babble_groups``): with 0 each utterance's babble is made of its own speaker's other
utterances, so one cache serves every fold without putting any fold's test speaker into a training
utterance's background. But babble is other people: a voice encoder hears a room of one's own voice as that
voice, and the benchmark (and a café) mixes in other speakers. With N >= 1 the folds are split into N groups
(:func:`babble_exclusions`) and each group gets a cache of its own whose babble is made of other speakers only,
never a speaker that any fold of the group tests: N caches instead of one.

The cache is saved beside the run (``draws-<key>.pt``) and reused by every fold, process and ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from serlive.model import ConfigError, SERModel

from .augment import TrainAugment
from .batching import AudioSet, bucket_batches, collate, pad_rows, perturbed_rows, scl_views, sorted_batches
from .config import AugmentConfig
from .devices import shard
from .sources import FeatBatch, feat_batch, n_batches

log = logging.getLogger(__name__)


_MEMO: dict = {}
"""The draws in memory, by key: every fold of a process shares them."""

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""One utterance under one draw: raw frames (T, H) float16, speech mask (T,), raw statistics (E,) or None."""


class DrawSource:
    """``draws`` perturbed (classifier row, SCL view) pairs of every utterance plus its clean form, encoded
    once by ``model``'s frozen encoder (and statistics branch)."""

    def __init__(self, model: SERModel, data: AudioSet, augment: AugmentConfig, views: bool, draws: int,
                 batch_size: int, bucket: int, device: torch.device, seed: int = 0,
                 cache_dir: str | Path | None = None, babble_exclude: frozenset[str] | None = None) -> None:
        """``babble_exclude``: None for own-speaker babble; else babble from other speakers outside that set."""
        self.model, self.data, self.batch_size, self.bucket = model, data, batch_size, bucket
        self.views, self.draws, self.babble_exclude = views, draws, babble_exclude
        key = self.key(model, data, augment, views, draws, seed, babble_exclude)
        if key not in _MEMO:
            _MEMO.clear()  # one cache in memory at a time (about 2 GB for RAVDESS at 4 draws)
            path = Path(cache_dir) / f"draws-{key}.pt" if cache_dir else None
            if path is not None and path.is_file():
                log.info("perturbed draws from %s", path)
                cached = torch.load(path, weights_only=False)
                _MEMO[key] = cached["clean"], cached["rows"], cached["views"]
            else:
                _MEMO[key] = self._build(model, data, augment, views, draws, device, seed)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    torch.save(dict(zip(("clean", "rows", "views"), _MEMO[key])), tmp)
                    tmp.replace(path)
        self.clean, self.rows, self.view_rows = _MEMO[key]

    @staticmethod
    def key(model: SERModel, data: AudioSet, augment: AugmentConfig, views: bool, draws: int, seed: int,
            babble_exclude: frozenset[str] | None = None) -> str:
        """What the draws depend on: the encoder's settings, the statistics branch, what cuts the audio (VAD,
        speech padding, duration limit), the utterances, the augmentation, the seed and whose voices babble
        may hold (not the fold: standardisation happens per batch)."""
        cfg = model.config
        what = {"encoder": asdict(cfg.encoder), "spectral_stats": cfg.spectral_stats, "pitch_stats": cfg.pitch_stats,
                "vad": asdict(cfg.vad), "speech_pad_s": cfg.speech_pad_s, "max_duration_s": cfg.max_duration_s,
                "utts": [u.path for u in data.utts], "augment": asdict(augment), "views": views, "draws": draws,
                "seed": seed, "version": 4}
        if cfg.voice_stats:  # models without it keep the key they always had
            what["voice_stats"] = True
        if babble_exclude is not None:  # own-speaker draws keep the key they always had
            what["babble_exclude"] = sorted(babble_exclude)
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @torch.inference_mode()
    def _build(self, model, data, augment, views, draws, device, seed):
        model.eval()
        n = len(data)
        clean: list = [None] * n
        rows: list = [[None] * draws for _ in range(n)]
        view_rows: list = [[None] * draws for _ in range(n)]
        speakers = np.array([u.speaker for u in data.utts])
        total = sum(-(-int((speakers == s).sum()) // self.batch_size) for s in set(speakers)) * (1 + draws)
        bar = tqdm(total=total, desc="perturbed draws", leave=False)
        augmenter = TrainAugment(augment, [data.wave(0)])  # one bank of rooms; the babble pool changes below
        pools = babble_pools(speakers, self.babble_exclude)
        for speaker in sorted(set(speakers)):
            own = np.flatnonzero(speakers == speaker)
            augmenter.pool = [data.wave(int(i)) for i in pools[speaker]]
            rng = np.random.default_rng([seed, int(own[0])])
            for idx in sorted_batches(data.lengths, own, self.batch_size):
                for i, item in zip(idx, self._encode(model, collate(data, idx), device)):
                    clean[i] = item
                bar.update()
                for d in range(draws):
                    waves, masks = perturbed_rows(data, idx, augmenter, rng)
                    items = self._encode(model, pad_rows(data, waves, masks, list(idx)), device)
                    for r, i in enumerate(idx):
                        rows[i][d] = items[r]
                    if views:
                        batch = pad_rows(data, *scl_views(data, idx, augment, rng), list(idx))
                        for i, item in zip(idx, self._encode(model, batch, device)):
                            view_rows[i][d] = item
                    bar.update()
        bar.close()
        return clean, rows, view_rows

    @staticmethod
    def _encode(model: SERModel, batch, device) -> list[Item]:
        batch = batch.to(device)
        hidden, n_frames = model.encoder.raw(batch.waves, batch.lengths)
        stats = model.spectral.raw(batch.waves, batch.lengths, batch.speech) if model.spectral is not None else None
        out = []
        for r in range(len(batch.index)):
            t = int(n_frames[r])
            s = batch.speech[r, :t]
            s = torch.nn.functional.pad(s, (0, t - len(s)))
            out.append((hidden[r, :t].half().cpu(), s.cpu(), None if stats is None else stats[r].cpu()))
        return out

    def clean_raw(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw frames (every valid frame of ``index``, clean) and raw statistics (one row per item)."""
        frames = torch.cat([self.clean[int(i)][0] for i in index]).float()
        stats = [self.clean[int(i)][2] for i in index]
        return frames, (torch.stack(stats) if stats[0] is not None else None)

    def _collate(self, idx: list[int], items: list[Item]) -> FeatBatch:
        """Standardised with this fold's model (its encoder's and statistics branch's training statistics)."""
        enc, spectral = self.model.encoder, self.model.spectral
        frames = [(h.float() - enc.shift.cpu()) / enc.scale.cpu() for h, _, _ in items]
        extra = None
        if spectral is not None:
            raw = torch.stack([e for _, _, e in items])
            extra = torch.nan_to_num((raw - spectral.shift.cpu()) / spectral.scale.cpu(), nan=0.0)
        return feat_batch(self.data, idx, frames, [s for _, s, _ in items], extra)

    def train_batches(self, index: np.ndarray, rng: np.random.Generator, ranks: tuple[int, int] = (0, 1),
                      anchors: bool = False):
        """Rows: one draw of each utterance, [its SCL view from another draw], [with ``anchors``, its clean form
        last, for ``loss.consistency``]. The anchors take nothing from ``rng``: the draws picked stay the same."""
        for idx in shard(bucket_batches(self.data.lengths, index, self.batch_size, rng, self.bucket), *ranks):
            pick = rng.integers(self.draws, size=len(idx))
            items = [self.rows[i][d] for i, d in zip(idx, pick)]
            if self.views:
                other = (pick + rng.integers(1, max(self.draws, 2), size=len(idx))) % self.draws
                items += [self.view_rows[i][d] for i, d in zip(idx, other)]
            if anchors:
                items += [self.clean[i] for i in idx]
            yield self._collate(idx + (idx if self.views else []) + (idx if anchors else []), items)

    def eval_batches(self, index: np.ndarray, batch_size: int, views: bool = False, seed: int = 0):
        for idx in sorted_batches(self.data.lengths, index, batch_size):
            items = [self.clean[i] for i in idx]
            if views and self.views:
                items += [self.view_rows[i][0] for i in idx]
            yield self._collate(idx + (idx if views and self.views else []), items)

    def n_batches(self, n: int, ranks: tuple[int, int] = (0, 1)) -> int:
        """Training batches per epoch for ``n`` items on one of ``ranks[1]`` processes."""
        return n_batches(n, self.batch_size, ranks)

    @staticmethod
    def forward(model: SERModel, batch: FeatBatch):
        return model.forward_frames(batch.hidden, batch.n_frames, batch.speech, batch.extra)


def babble_pools(speakers: np.ndarray, exclude: frozenset[str] | None) -> dict[str, np.ndarray]:
    """Per speaker, the utterance indices its babble is made of: its own (``exclude`` None), or every other
    speaker's outside ``exclude``. A speaker left with nobody to make babble of is one ``ConfigError``."""
    speakers = np.asarray(speakers)
    out = {}
    for s in sorted(set(speakers.tolist())):
        if exclude is None:
            out[s] = np.flatnonzero(speakers == s)
            continue
        out[s] = np.flatnonzero((speakers != s) & ~np.isin(speakers, sorted(exclude)))
        if not len(out[s]):
            raise ConfigError(f"run.babble_groups leaves speaker {s} no other speaker's voice to make babble of "
                              f"(held out: {', '.join(sorted(exclude))}); use more groups, or 0 for own-speaker babble")
    return out


def babble_exclusions(speakers: np.ndarray, folds: list, groups: int) -> dict[int, frozenset[str]]:
    """``groups`` >= 1: fold i of n belongs to group i * groups // n; each fold's draws must never hear a speaker
    that a fold of its group holds out (its test-only speakers), so every group shares one cache. Returns the
    excluded speakers by fold index (a final model's one fold, whose test speakers also train, excludes none)."""
    speakers = np.asarray(speakers)
    held = [set(speakers[f.test].tolist()) - set(speakers[f.train].tolist()) for f in folds]
    group = [i * groups // len(folds) for i in range(len(folds))]
    union = {g: frozenset().union(*(h for h, gi in zip(held, group) if gi == g)) for g in set(group)}
    return {f.index: union[g] for f, g in zip(folds, group)}
