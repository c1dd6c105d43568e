"""Utterance pooling: GAP over valid frames, SAP over speech frames, and SR = [GAP; SAP].

SAP (Hyeon et al., Interspeech 2024, eq. 4-5): multi-head self-attention among the speech frames only
(every other frame is masked out as a key), then the mean of the attended speech frames.

No speech at all: when the VAD marks no frame of an item as speech, SAP is undefined (attention over
an empty set). ser-live then treats every valid frame as speech for that item, so SAP equals
"MHSA + mean over all frames": finite, and as close to GAP's view of the utterance as SAP gets.
Predictions report ``speech_frames == 0`` so callers can tell.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, H) over frames where ``mask`` (B, T) is True -> (B, H); 0 for empty rows."""
    m = mask[..., None]
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    return total / m.sum(1).clamp(min=1).to(x.dtype)


def effective_speech_mask(speech: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The speech frames SAP pools: ``speech & valid``, or all valid frames where that is empty."""
    speech = speech & valid
    empty = ~speech.any(dim=1, keepdim=True)
    return torch.where(empty, valid, speech)


class SegmentalPooling(nn.Module):
    """SAP: MHSA over speech frames (key padding mask), then their mean. (B, T, H) -> (B, H), or (B, ``dim``)
    when ``dim`` is given: the frames are first projected to it (a learned linear map)."""

    def __init__(self, in_dim: int, heads: int, dim: int = 0) -> None:
        super().__init__()
        dim = dim or in_dim
        self.down = nn.Linear(in_dim, dim) if dim != in_dim else None
        self.out_dim = dim
        if dim % heads:
            heads = 1
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, speech: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)
        keep = effective_speech_mask(speech, valid)
        # Zero the non-speech frames too: their queries are computed but never pooled, and zeroing
        # keeps a NaN or inf that came from non-speech audio from reaching the speech frames.
        x = torch.where(keep[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        h, _ = self.attn(x, x, x, key_padding_mask=~keep, need_weights=False)  # (B, T, H)
        return masked_mean(h, keep)


def masked_std(x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of ``x`` (B, T, H) over frames where ``mask`` (B, T) is True -> (B, H)."""
    mean = masked_mean(x, mask) if mean is None else mean
    var = masked_mean((x - mean[:, None, :]) ** 2, mask)
    return torch.sqrt(var + 1e-5)


class Pooling(nn.Module):
    """``gap``, ``sap`` or ``sr`` (concat) pooling of encoder frames; ``out_dim`` is H or 2H, plus H
    when ``gap_std`` adds the standard deviation to GAP (statistics pooling); SAP gives ``sap_dim`` when set."""

    def __init__(self, mode: str, dim: int, heads: int, gap_std: bool = False, sap_dim: int = 0) -> None:
        super().__init__()
        self.mode, self.gap_std = mode, gap_std and mode in ("gap", "sr")
        self.sap = SegmentalPooling(dim, heads, sap_dim) if mode in ("sap", "sr") else None
        gap = dim if mode in ("gap", "sr") else 0
        self.out_dim = gap + (dim if self.gap_std else 0) + (self.sap.out_dim if self.sap is not None else 0)

    def forward(self, x: torch.Tensor, speech: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, H); ``speech``, ``valid`` (B, T) bool -> (B, out_dim)."""
        parts = []
        if self.mode in ("gap", "sr"):
            parts.append(masked_mean(x, valid))
            if self.gap_std:
                parts.append(masked_std(x, valid, parts[-1]))
        if self.sap is not None:
            parts.append(self.sap(x, speech, valid))
        return torch.cat(parts, dim=-1)
