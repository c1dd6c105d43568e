"""The SER model: encoder -> pooling (GAP / SAP / SR) -> 32-d embedding -> classifier and regressors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .encoders import build_encoder, fit_mask, length_mask
from .pooling import Pooling
from .spectral import SpectralStats


@dataclass(frozen=True, slots=True)
class SEROutput:
    """One forward pass. ``logits`` (B, C); ``embedding`` (B, D); ``dims`` (B, 2) valence, arousal or None;
    ``spectral`` (B, 192) the standardised spectral statistics when the model has that branch."""

    logits: torch.Tensor
    embedding: torch.Tensor
    dims: torch.Tensor | None
    speech_frames: torch.Tensor
    spectral: torch.Tensor | None = None


class SERModel(nn.Module):
    """Encoder, pooling and heads of Hyeon et al. (2024), with the 32-d projection used by SCL and kNN."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.encoder)
        self.pooling = Pooling(config.pooling, self.encoder.dim, config.sap_heads, config.gap_std, config.sap_dim)
        self.spectral = SpectralStats(config.pitch_stats, config.encoder.band_hz, config.encoder.denoise,
                                      config.encoder.dereverb, config.voice_stats) if config.spectral_stats else None
        extra = self.spectral.out_dim if self.spectral is not None else 0
        self.project = nn.Linear(self.pooling.out_dim + extra, config.embed_dim)
        self.classifier = nn.Linear(config.embed_dim, len(config.labels))
        self.regressor = nn.Linear(config.embed_dim, 2) if config.dimensional else None

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, speech: torch.Tensor) -> SEROutput:
        """``waveforms`` (B, N) float at 16 kHz, ``lengths`` (B,) samples, ``speech`` (B, T') bool mask on
        the frame grid (T' >= the longest item's frame count; extra columns are ignored)."""
        hidden, n_frames = self.encoder(waveforms, lengths)
        extra = self.spectral(waveforms, lengths, speech) if self.spectral is not None else None
        return self.forward_frames(hidden, n_frames, speech, extra)

    def forward_frames(self, hidden: torch.Tensor, n_frames: torch.Tensor, speech: torch.Tensor,
                       extra: torch.Tensor | None = None) -> SEROutput:
        """Heads on encoder frames ``hidden`` (B, T, H) (precomputed ones too, for cached-feature training);
        ``extra`` (B, E): the spectral statistics when the model has that branch."""
        t = hidden.shape[1]
        valid = length_mask(n_frames, t)
        speech = fit_mask(speech, t) & valid
        pooled = self.pooling(hidden, speech, valid)
        if self.spectral is not None:
            if extra is None:
                raise ValueError("this model has a spectral-statistics branch: it needs waveforms, not cached frames")
            pooled = torch.cat([pooled, extra.to(pooled.dtype)], dim=-1)
        emb = self.project(pooled)  # (B, D)
        dims = self.regressor(emb) if self.regressor is not None else None
        return SEROutput(self.classifier(emb), emb, dims, speech.sum(1), extra)

