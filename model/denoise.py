"""Spectral floor subtraction: a stationary noise floor taken out of the mel power before the encoder sees it.

A fan, a hum, a line's hiss or the steady part of a crowd fills the quiet bands and the pauses between words
with a floor that clean training speech never had. Here each mel band's floor is estimated from the item
itself, as the ``QUANTILE`` (10th percentile) of that band's power over the item's valid frames: in speech with
pauses those are the frames where only the background is heard. ``factor`` times that floor is subtracted
from every frame (power spectral subtraction, Boll 1979, with Berouti et al.'s over-subtraction), and no
frame falls below ``FLOOR`` of its own power (what keeps the musical noise of classic spectral subtraction
small: a noise-only frame ends 10 dB down, not at zero). Clean studio speech has a floor 50-60 dB below its
voiced frames, so it passes almost unchanged.

Per item, from the item alone: a live segment is denoised with what it holds, with no look-ahead past it
and no state across segments; a gain scales the floor with the speech, so the result is gain-invariant.
``encoder.denoise`` (0 = off, as every model directory made before it) sets ``factor``; the GE2E front end
and the spectral-statistics branch both apply it, the VAD and the pitch tracker hear the raw audio.
"""

from __future__ import annotations

import torch

QUANTILE = 0.1
"""Which quantile of a band's power over the item's frames is taken as its noise floor."""
FLOOR = 0.1
"""No frame is taken below this share of its own power (-10 dB)."""


def noise_floor(power: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each item's per-band floor: the ``QUANTILE`` of ``power`` (B, T, F) over its ``valid`` (B, T) frames
    -> (B, F); zero for an item with no valid frame."""
    b, t, f = power.shape
    if t == 0:
        return power.new_zeros(b, f)
    if b == 1:  # one item (the incremental interims' running front end): a selection, not a sort
        n = int(valid.sum())
        if n == 0:
            return power.new_zeros(1, f)
        k = int((QUANTILE * torch.tensor(n - 1, dtype=power.dtype)).floor()) + 1  # as the batched path rounds
        return power[0][valid[0]].kthvalue(k, dim=0).values[None]
    inf = torch.full((), float("inf"), dtype=power.dtype, device=power.device)
    ranked = torch.where(valid[..., None], power, inf).sort(dim=1).values  # valid frames first, ascending
    n = valid.sum(1)
    index = (QUANTILE * (n - 1).clamp(min=0).to(power.dtype)).floor().long()  # (B,)
    floor = ranked.gather(1, index[:, None, None].expand(b, 1, f)).squeeze(1)
    return torch.where((n > 0)[:, None], floor, power.new_zeros(()))


def subtract_floor(power: torch.Tensor, valid: torch.Tensor, factor: float) -> torch.Tensor:
    """``power`` (B, T, F) with ``factor`` times each item's :func:`noise_floor` subtracted, kept at or above
    ``FLOOR`` of itself; ``factor`` 0 returns it unchanged."""
    if factor <= 0:
        return power
    floor = noise_floor(power, valid)[:, None, :]
    return torch.maximum(power - factor * floor, FLOOR * power)
