"""Dereverberation: weighted prediction error (WPE) on the front end's STFT, before the mel filters.

A room adds to each STFT frame a decaying sum of what was said before it: the late reverberation that
smears the harmonics, fills the pauses and flattens the spectral movement that emotion is heard in. WPE
(Nakatani et al., IEEE TASLP 2010; Yoshioka & Nakatani 2012) predicts that part of each frequency bin from
its own past, ``delay`` frames back and ``taps`` frames deep, with a linear filter fitted per bin by least
squares weighted by the inverse power of the dereverberated estimate (a sparse, time-varying speech prior),
and subtracts it. The delay keeps the direct sound and the early reflections (the first ``DELAY_S``): only
what a frame's window cannot itself hold is predicted, so clean, dry speech, whose past does not predict
it, passes nearly unchanged; in a room the filter learns the room. ``ITERATIONS`` alternations of the power
estimate and the filter, as nara_wpe's default (Drude et al., ITG 2018; MIT).

Written here rather than taken from nara_wpe: it must run in torch on the encoder's own STFT, batched over
padded items (a padded frame is given no weight, so each item gets the filter it would get alone), with
no extra STFT/ISTFT pair per item and per interim; the single-channel filter is 20 lines of it.

Per item, from the item alone, with no look-ahead past its end and no state across segments; the power
floor is relative to each bin's mean power, so the result is gain-invariant.
"""

from __future__ import annotations

import math

import torch

DELAY_S = 0.03
"""The prediction starts this far back (rounded up to frames): the direct sound and early reflections stay."""
SPAN_S = 0.1
"""How deep into the past the filter reaches beyond the delay (rounded up to frames)."""
ITERATIONS = 3
"""Alternations of the power estimate and the filter."""
POWER_FLOOR = 1e-3
"""A frame's power weight is at least this share of its bin's mean power over the item (-30 dB)."""
RIDGE = 1e-6
"""Diagonal loading of each bin's normal equations, relative to their trace."""


def frames_for(seconds: float, hop_s: float) -> int:
    """The whole number of ``hop_s`` frames that covers ``seconds``."""
    return max(1, math.ceil(seconds / hop_s - 1e-9))


def filter_frames(hop_s: float) -> tuple[int, int]:
    """The ``delay`` and ``taps`` of :func:`wpe` on a front end whose frames are ``hop_s`` apart."""
    return frames_for(DELAY_S, hop_s), frames_for(SPAN_S, hop_s)


def wpe(spec: torch.Tensor, valid: torch.Tensor, delay: int, taps: int, iterations: int = ITERATIONS) -> torch.Tensor:
    """``spec`` (B, F, T) complex STFT with the late reverberation predicted from ``delay``..``delay + taps - 1``
    frames back subtracted; ``valid`` (B, T) marks each item's frames (the others are neither fitted on nor
    changed)."""
    b, f, t = spec.shape
    if t <= delay or taps <= 0:
        return spec
    w = valid[:, None, :].to(spec.real.dtype)  # (B, 1, T)
    y = spec * w
    # past[..., t, k] = y[..., t - delay - k], zero before the start
    padded = torch.nn.functional.pad(y, (delay + taps - 1, 0))
    past = padded.unfold(-1, taps, 1)[..., : t, :].flip(-1)  # (B, F, T, K)
    band = (y.abs().pow(2).sum(-1) / w.sum(-1).clamp(min=1)).clamp(min=1e-20)  # (B, F) mean power
    eye = torch.eye(taps, dtype=spec.dtype, device=spec.device)
    x = y
    for _ in range(iterations):
        weight = w / torch.maximum(x.abs().pow(2), POWER_FLOOR * band[..., None])  # (B, F, T)
        wp = past * weight[..., None]
        r = torch.einsum("bftk,bftl->bfkl", wp, past.conj())  # sum_t ytil ytil^H / lambda
        p = torch.einsum("bftk,bft->bfk", wp, y.conj())  # sum_t ytil y^* / lambda
        trace = r.diagonal(dim1=-2, dim2=-1).real.sum(-1).clamp(min=1e-30)  # (B, F)
        g = torch.linalg.solve(r + (RIDGE * trace / taps)[..., None, None] * eye, p[..., None])[..., 0]  # (B, F, K)
        x = y - torch.einsum("bfk,bftk->bft", g.conj(), past)
    return x * w + spec * (1 - w)
