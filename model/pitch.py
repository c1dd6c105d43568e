"""Pitch (F0) contour and voicing statistics on the encoder's 20 ms grid, for the spectral-statistics branch.

Pitch level, range and movement are among the cues of emotion that carry best across speakers, rooms and
languages, and a log-mel encoder trained from scratch on 1,200 utterances does not learn them reliably.
This is a YIN-style tracker written in torch, batched and cheap (an FFT per frame, about 0.3 % of a CPU
core's real time), so it adds nothing to install; the whole Predictor costs about 1.2x what it does without
it (``python -m serlive.model.bench --models``), far inside the real-time budget:

- each 20 ms frame looks at 40 ms of audio starting where the log-mel frame starts;
- the normalised cross-correlation of the frame with itself at lags of 2.5-16.7 ms (400-60 Hz), each lag
  normalised by the energies of the two overlapping parts, so a long lag is not penalised;
- the period is the *shortest* lag whose correlation reaches :data:`OCTAVE_TOLERANCE` of the best one (the
  best is often a multiple of the period: YIN's remedy for octave-too-low errors);
- a frame is voiced when that correlation reaches :data:`VOICED_CORRELATION`.

Correlation finds the period from the harmonics, so a telephone band that removes the fundamental (300 Hz
high-pass) leaves F0 in place, which is why pitch is worth having beside band energies that a line changes.

torchcrepe (a pretrained network) is more accurate on hard frames; on this model's 2-core budget it costs
more than the whole encoder, and the statistics below need the contour's shape more than every frame.
"""

from __future__ import annotations

import torch

from .frames import FRAME_STRIDE_SAMPLES, SAMPLE_RATE_HZ

WINDOW_SAMPLES = 640
"""40 ms: at least two periods of a 60 Hz voice."""
F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0
VOICED_CORRELATION = 0.6
OCTAVE_TOLERANCE = 0.9
PEAK_SPAN = 0.2
"""After the shortest lag near the best correlation, its peak is looked for within this share of the lag."""
FFT_SIZE = 1024
"""At least the window plus the longest lag: the circular correlation equals the linear one up to that lag."""
MAX_STEP_OCTAVES = 0.5
"""Frame-to-frame F0 changes larger than this are tracking jumps, left out of the movement statistics."""

FEATURES = ("voiced_share", "periodicity", "log2_f0_mean", "log2_f0_std", "log2_f0_range",
            "step_mean", "step_std", "slope_octaves_per_s")
"""What :func:`pitch_stats` returns per item, in this order."""


def windows(waveforms: torch.Tensor, n_frames: int) -> torch.Tensor:
    """``(B, N)`` waveforms -> the tracker's mean-removed windows ``(B, n_frames, WINDOW_SAMPLES)``, window ``t``
    from sample ``320 t`` (zero padding past the end)."""
    x = waveforms.float()
    need = (n_frames - 1) * FRAME_STRIDE_SAMPLES + WINDOW_SAMPLES
    if x.shape[1] < need:
        x = torch.nn.functional.pad(x, (0, need - x.shape[1]))
    frames = x.unfold(1, WINDOW_SAMPLES, FRAME_STRIDE_SAMPLES)[:, :n_frames]  # (B, T, W)
    return frames - frames.mean(-1, keepdim=True)


def track(waveforms: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N)`` 16 kHz waveforms -> ``(f0_hz, correlation)``, each ``(B, n_frames)``; frame ``t`` starts
    at sample ``320 t`` (the log-mel grid). ``correlation`` is the periodicity of the chosen lag in [-1, 1]."""
    frames = windows(waveforms, n_frames)
    lo, hi = int(SAMPLE_RATE_HZ / F0_MAX_HZ), int(SAMPLE_RATE_HZ / F0_MIN_HZ) + 1
    spec = torch.fft.rfft(frames, n=FFT_SIZE)
    acf = torch.fft.irfft(spec.abs().pow(2), n=FFT_SIZE)[..., :hi]  # (B, T, hi): sum x_j x_{j+lag}
    energy = torch.nn.functional.pad(frames.pow(2).cumsum(-1), (1, 0))  # energy[k] = sum_{j<k} x_j^2
    lags = torch.arange(lo, hi, device=frames.device)
    head = energy[..., WINDOW_SAMPLES - lags]  # sum_{j < W - lag} x_j^2
    tail = energy[..., -1:] - energy[..., lags]  # sum_{j >= lag} x_j^2
    ncc = acf[..., lo:] / torch.sqrt(head * tail + 1e-12)  # (B, T, hi - lo): lag lo + i at index i
    best = ncc.max(-1, keepdim=True).values
    first = (ncc >= OCTAVE_TOLERANCE * best).float().argmax(-1, keepdim=True)  # the shortest such lag
    # then the top of the peak it starts on: the best lag within a fifth of a period after it
    span = torch.arange(int(hi * PEAK_SPAN) + 1, device=frames.device)
    idx = (first + span).clamp(max=ncc.shape[-1] - 1)
    near = torch.where(span <= (first + lo) * PEAK_SPAN, ncc.gather(-1, idx), torch.full_like(idx, -2.0, dtype=ncc.dtype))
    peak = first + near.argmax(-1, keepdim=True)
    # parabolic interpolation between the neighbouring lags
    left = ncc.gather(-1, (peak - 1).clamp(min=0))
    mid = ncc.gather(-1, peak)
    right = ncc.gather(-1, (peak + 1).clamp(max=ncc.shape[-1] - 1))
    curve = left - 2 * mid + right
    shift = torch.where(curve < -1e-6, 0.5 * (left - right) / curve, torch.zeros_like(curve)).clamp(-0.5, 0.5)
    period = (peak + lo).float() + shift
    return (SAMPLE_RATE_HZ / period).squeeze(-1), mid.squeeze(-1)


def pitch_stats(waveforms: torch.Tensor | None, keep: torch.Tensor,
                tracked: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``(B, N)`` waveforms and the frames to use ``keep`` ``(B, T)`` (speech frames inside the item) ->
    ``(B, 8)`` statistics named by :data:`FEATURES`. Items with fewer than 3 voiced frames get NaN for
    the F0 statistics (there is no F0 to describe; their voiced share says why). ``tracked``: the
    waveforms' :func:`track` (f0, correlation) when already computed (then ``waveforms`` is not used)."""
    f0, corr = track(waveforms, keep.shape[1]) if tracked is None else tracked
    keep = keep.bool()
    voiced = keep & (corr >= VOICED_CORRELATION)
    n_keep = keep.sum(1).clamp(min=1).float()
    n_voiced = voiced.sum(1).float()
    share = n_voiced / n_keep
    periodicity = (corr.clamp(min=0) * keep).sum(1) / n_keep
    lf = torch.log2(f0)
    w = voiced.float()
    nv = n_voiced.clamp(min=1)
    mean = (lf * w).sum(1) / nv
    std = torch.sqrt(((lf - mean[:, None]).pow(2) * w).sum(1) / nv + 1e-6)
    big = torch.where(voiced, lf, torch.full_like(lf, -1e3)).max(1).values
    small = torch.where(voiced, lf, torch.full_like(lf, 1e3)).min(1).values
    span = big - small
    step = lf[:, 1:] - lf[:, :-1]
    moved = voiced[:, 1:] & voiced[:, :-1] & (step.abs() <= MAX_STEP_OCTAVES)
    ws = moved.float()
    ns = ws.sum(1).clamp(min=1)
    step_mean = (step.abs() * ws).sum(1) / ns
    step_std = torch.sqrt(((step - (step * ws).sum(1, keepdim=True) / ns[:, None]).pow(2) * ws).sum(1) / ns + 1e-6)
    t = torch.arange(lf.shape[1], device=lf.device, dtype=lf.dtype) * (FRAME_STRIDE_SAMPLES / SAMPLE_RATE_HZ)
    t_mean = (t * w).sum(1) / nv
    dt = (t - t_mean[:, None]) * w
    slope = (dt * (lf - mean[:, None])).sum(1) / dt.pow(2).sum(1).clamp(min=1e-6)
    out = torch.stack([share, periodicity, mean, std, span, step_mean, step_std, slope], dim=-1)
    enough = (n_voiced >= 3)[:, None]
    return torch.where(enough, out, torch.cat([out[:, :2], torch.full_like(out[:, 2:], float("nan"))], dim=-1))
