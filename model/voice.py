"""Voice quality, loudness contour and speech rate for the spectral-statistics branch (``model.voice_stats``).

The eGeMAPS parameters (Eyben et al. 2016) that describe how a voice is produced rather than what is said, so
they carry across languages better than band energies do, computed in torch from quantities kept per 20 ms
frame (a growing segment's statistics are recomputed from its frames: :func:`serlive.model.incremental.spectral_stats`):

- **jitter** (local): the mean absolute difference of consecutive pitch periods over the mean period, and
  **shimmer** (local): the same of the periods' peak amplitudes. Each voiced frame finds its glottal pulses
  in the pitch tracker's 40 ms window: the largest sample in the first period, then the largest within
  0.8-1.2 periods of the last pulse (the frame's F0), refined by a parabola through the peak. A frame owns the
  pulse triples whose middle pulse lies in its central 20 ms (each triple counted once in a segment) and keeps
  four sums (:func:`pulse_sums`); period pairs differing by more than :data:`PERIOD_FACTOR`, or amplitudes by
  more than :data:`AMPLITUDE_FACTOR`, are missed pulses, left out (Praat's defaults).
- **harmonics-to-noise ratio** from the tracker's normalised autocorrelation peak r: 10 log10(r / (1 - r))
  dB (Boersma 1993), mean and spread over the voiced frames.
- **loudness**: the mel power's sum of band powers to the 0.3 (Zwicker's compression, as eGeMAPS), over
  its mean over the speech frames (the branch is gain-invariant, so the level itself is not kept: a
  device's gain is no emotion): spread (coefficient of variation), the 20th-80th percentile range, and the
  mean and spread of the rising and falling slopes (per second, frame to frame).
- **speech rate**: syllable nuclei per second of speech (De Jong and Wempe 2009): voiced frames whose
  intensity is the highest within 40 ms either side, at least the speech frames' median, with a dip of
  :data:`DIP_DB` on both sides within 160 ms; and voiced stretches per second of speech.

An item with fewer than 3 voiced frames gets NaN for jitter, shimmer and HNR (standardised to 0, the
training mean, as the pitch statistics do); one with no rising (falling) frame gets NaN for those slopes.
"""

from __future__ import annotations

import math

import torch

from .frames import FRAME_STRIDE_SAMPLES, SAMPLE_RATE_HZ
from .pitch import F0_MAX_HZ, F0_MIN_HZ, VOICED_CORRELATION, WINDOW_SAMPLES, windows

FEATURES = ("jitter_local", "shimmer_local", "hnr_db_mean", "hnr_db_std", "loudness_cv", "loudness_range",
            "rise_mean", "rise_std", "fall_mean", "fall_std", "syllables_per_s", "voiced_runs_per_s")
"""What :func:`voice_stats` returns per item, in this order."""

PULSE_SUMS = 4
"""Per frame: sum |dT|, sum of mean periods, sum |dA|, sum of mean amplitudes (:func:`pulse_sums`)."""
PERIOD_FACTOR = 1.3
"""Consecutive periods further apart than this ratio are a missed or doubled pulse, not jitter (Praat)."""
AMPLITUDE_FACTOR = 1.6
"""Consecutive peak amplitudes further apart than this ratio are left out of shimmer (Praat)."""
SEARCH = (0.8, 1.2)
"""The next pulse is looked for within these multiples of the frame's period after the last one."""
LOUDNESS_POWER = 0.3
"""Specific loudness grows as band power to this power (Zwicker; eGeMAPS's auditory-spectrum loudness)."""
PEAK_FRAMES, DIP_FRAMES, DIP_DB = 2, 8, 2.0
"""A syllable nucleus is the loudest frame within 2 frames either side, with a 2 dB dip within 8 either side."""
HNR_CORRELATION = (1e-3, 1.0 - 1e-3)
"""The autocorrelation peak is clipped to this range: HNR from -30 to +30 dB."""


def pulse_sums(waveforms: torch.Tensor, f0_hz: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` waveforms and the tracker's F0 and correlation ``(B, T)`` -> ``(B, T, 4)`` per-frame sums over
    the pulse triples the frame owns: |T_i - T_(i-1)|, (T_i + T_(i-1)) / 2, |A_i - A_(i-1)|, (A_i + A_(i-1)) / 2
    (periods in samples, amplitudes as the waveform's); zeros for unvoiced frames, whose pulses are not looked
    for (the search costs about 3.5x the tracker per frame, and speech is about a third voiced)."""
    b, t = f0_hz.shape
    out = torch.zeros(b * t, PULSE_SUMS, device=f0_hz.device)
    voiced = (corr >= VOICED_CORRELATION).reshape(-1).nonzero().squeeze(-1)
    if len(voiced) == 0:
        return out.reshape(b, t, PULSE_SUMS)
    x = windows(waveforms, t).reshape(b * t, WINDOW_SAMPLES)[voiced]  # (M, W)
    x = torch.where((x.amax(-1) < -x.amin(-1))[:, None], -x, x)  # pulses point up
    period = SAMPLE_RATE_HZ / f0_hz.float().clamp(F0_MIN_HZ, F0_MAX_HZ).reshape(-1)[voiced]  # (M,)
    pos, ok = _pulses(x, period)
    # a parabola through each peak and its neighbours: sub-sample position and height
    left = x.gather(-1, (pos - 1).clamp(min=0))
    mid = x.gather(-1, pos)
    right = x.gather(-1, (pos + 1).clamp(max=WINDOW_SAMPLES - 1))
    curve = left - 2 * mid + right
    shift = torch.where(curve < -1e-9, 0.5 * (left - right) / curve, torch.zeros_like(curve)).clamp(-0.5, 0.5)
    where, amp = pos + shift, mid - 0.25 * (left - right) * shift
    per = where[:, 1:] - where[:, :-1]  # (M, K): period k from pulse k to k + 1
    pair = ok[:, 1:] & ok[:, :-1]
    both = pair[:, 1:] & pair[:, :-1]  # triples (k - 1, k, k + 1) by their middle pulse k = 1..K - 1
    middle = where[:, 1:-1]
    own = both & (middle >= WINDOW_SAMPLES / 4) & (middle < 3 * WINDOW_SAMPLES / 4)
    t0, t1 = per[:, :-1], per[:, 1:]
    a0, a1 = amp[:, :-2], amp[:, 1:-1]
    jit = own & (torch.maximum(t0, t1) <= PERIOD_FACTOR * torch.minimum(t0, t1))
    shim = own & (a0 > 0) & (a1 > 0) & (torch.maximum(a0, a1) <= AMPLITUDE_FACTOR * torch.minimum(a0, a1))
    out[voiced] = torch.stack([((t1 - t0).abs() * jit).sum(-1), ((t0 + t1) / 2 * jit).sum(-1),
                               ((a1 - a0).abs() * shim).sum(-1), ((a0 + a1) / 2 * shim).sum(-1)], dim=-1)
    return out.reshape(b, t, PULSE_SUMS)


def _pulses(x: torch.Tensor, period: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pulse positions ``(M, K)`` (integer samples) in windows ``x`` ``(M, W)`` with periods ``(M,)``, and
    whether each was found with its whole search span inside the window."""
    w = x.shape[-1]
    steps = math.ceil(w / (SEARCH[0] * SAMPLE_RATE_HZ / F0_MAX_HZ))
    idx = torch.arange(w, device=x.device)
    first = torch.where(idx < period[:, None], x, torch.full_like(x, -math.inf)).argmax(-1)  # (M,)
    span = torch.arange(math.ceil((SEARCH[1] - SEARCH[0]) * SAMPLE_RATE_HZ / F0_MIN_HZ) + 1, device=x.device)
    width = ((SEARCH[1] - SEARCH[0]) * period).floor().long()
    pos, ok = [first], [torch.ones_like(first, dtype=torch.bool)]
    for _ in range(steps):
        start = (pos[-1] + SEARCH[0] * period).ceil().long()
        cand = start[:, None] + span  # (M, S)
        inside = (span <= width[:, None]) & (cand < w)
        vals = torch.where(inside, x.gather(-1, cand.clamp(max=w - 1)), torch.full(cand.shape, -math.inf, device=x.device))
        pos.append((start + vals.argmax(-1)).clamp(max=w - 1))
        ok.append(ok[-1] & (start + width < w))
    return torch.stack(pos, dim=-1), torch.stack(ok, dim=-1)


def voice_stats(clean_power: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, corr: torch.Tensor,
                sums: torch.Tensor) -> torch.Tensor:
    """``(B, T, F)`` mel power (after the branch's floor subtraction), the item's frames ``valid`` and the
    frames to use ``keep`` ``(B, T)`` (speech frames inside the item),
    the tracker's correlation ``(B, T)`` and :func:`pulse_sums` ``(B, T, 4)`` -> ``(B, 12)`` statistics named
    by :data:`FEATURES`."""
    keep = keep.bool()
    voiced = keep & (corr >= VOICED_CORRELATION)
    w = voiced.float()
    n_voiced = w.sum(1)
    total = (sums * w[..., None]).sum(1)  # (B, 4)
    jitter = total[:, 0] / total[:, 1]
    shimmer = total[:, 2] / total[:, 3]
    r = corr.float().clamp(*HNR_CORRELATION)
    hnr = 10 * torch.log10(r / (1 - r))
    nv = n_voiced.clamp(min=1)
    hnr_mean = (hnr * w).sum(1) / nv
    hnr_std = torch.sqrt(((hnr - hnr_mean[:, None]).pow(2) * w).sum(1) / nv)
    enough = n_voiced >= 3
    quality = torch.stack([jitter, shimmer, hnr_mean, hnr_std], dim=-1)
    quality = torch.where(enough[:, None], quality, torch.full_like(quality, math.nan))
    seconds = keep.sum(1).clamp(min=1) * (FRAME_STRIDE_SAMPLES / SAMPLE_RATE_HZ)
    return torch.cat([quality, loudness_stats(clean_power, keep),
                      rate_stats(clean_power, valid, keep, voiced, seconds)], dim=-1)


def loudness_stats(clean_power: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(B, 6)``: the loudness contour's coefficient of variation, 20-80 % range (over its mean), and the
    mean and spread of its rising and falling slopes (mean loudness per second) over ``keep``."""
    loud = clean_power.clamp(min=0).pow(LOUDNESS_POWER).sum(-1)  # (B, T)
    k = keep.float()
    level = (loud * k).sum(1, keepdim=True) / k.sum(1, keepdim=True).clamp(min=1)
    rel = loud / level.clamp(min=1e-12)
    mean = (rel * k).sum(1) / k.sum(1).clamp(min=1)
    cv = torch.sqrt(((rel - mean[:, None]).pow(2) * k).sum(1) / k.sum(1).clamp(min=1))
    q = torch.nanquantile(torch.where(keep, rel, torch.full_like(rel, math.nan)),
                          torch.tensor([0.2, 0.8], dtype=rel.dtype, device=rel.device), dim=1)  # (2, B)
    slope = (rel[:, 1:] - rel[:, :-1]) * (SAMPLE_RATE_HZ / FRAME_STRIDE_SAMPLES)  # (B, T - 1)
    both = keep[:, 1:] & keep[:, :-1]
    parts = [cv, q[1] - q[0]]
    for side in (slope, -slope):
        m = (both & (side > 0)).float()
        n = m.sum(1)
        mu = (side * m).sum(1) / n
        parts += [mu, torch.sqrt(((side - mu[:, None]).pow(2) * m).sum(1) / n)]
    return torch.stack(parts, dim=-1)


def rate_stats(clean_power: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, voiced: torch.Tensor,
               seconds: torch.Tensor) -> torch.Tensor:
    """``(B, 2)``: syllable nuclei and voiced stretches per second of speech (``seconds`` (B,)); ``valid``, ``keep``
    and ``voiced`` (B, T): the item's frames (past them nothing is a dip or a peak), its speech frames and the
    voiced ones among those."""
    level = 10 * torch.log10(clean_power.sum(-1) + 1e-10)  # (B, T) intensity, dB
    t = level.shape[1]
    median = torch.nanquantile(torch.where(keep, level, torch.full_like(level, math.nan)), 0.5, dim=1)

    def around(fill: float, reach: range, pick) -> torch.Tensor:  # pick over frames t + d, d in reach
        src = torch.nn.functional.pad(torch.where(valid, level, fill), (DIP_FRAMES, DIP_FRAMES), value=fill)
        return pick(torch.stack([src[:, DIP_FRAMES + d: DIP_FRAMES + d + t] for d in reach]), 0)

    peak = (voiced & (level > around(-math.inf, range(-PEAK_FRAMES, 0), torch.amax))
            & (level >= around(-math.inf, range(1, PEAK_FRAMES + 1), torch.amax)) & (level >= median[:, None])
            & (around(math.inf, range(-DIP_FRAMES, 0), torch.amin) <= level - DIP_DB)
            & (around(math.inf, range(1, DIP_FRAMES + 1), torch.amin) <= level - DIP_DB))
    runs = voiced & ~torch.nn.functional.pad(voiced, (1, 0))[:, :-1]
    return torch.stack([peak.sum(1) / seconds, runs.sum(1) / seconds], dim=-1)
