"""Incremental GE2E frames for a segment that grows between its interim predictions.

The whole-segment path (:meth:`.ge2e.GE2EEncoder.forward`) runs the three LSTM layers over every 10 ms frame
of the segment, so a segment of n interims costs O(n^2). Here an open segment keeps an :class:`EncoderState`
between its interims: each layer's LSTM hidden and cell state, the raw mel power of every frame seen (40
numbers per 10 ms: the front end's running statistics are recomputed from it exactly), and the 20 ms frames
already made. An interim then runs the LSTM over its new frames only.

What makes the front end non-causal is one scalar and one vector, both taken over the whole item: the gain
that brings it to -30 dBFS RMS (times the re-levelling after denoising), and each mel band's noise floor (the
10th percentile, :mod:`.denoise`). The mel power of an item at unit gain is linear in its samples, so both are
recomputed exactly, each interim, from the stored power: the *running front end*. New frames enter the LSTM
with the current values; frames already through it keep the values they had. When the current values have
drifted more than ``tolerance`` (relative) from those of the frames already committed, the LSTM is rerun over
the whole segment with the current values (a *rebuild*): with ``tolerance`` 0 every interim equals the
whole-segment prediction (to float rounding), with ``inf`` none rebuilds. The worker's finals do not use this
path: they recompute the segment exactly as training did. Finishing the state instead (with a tighter tolerance,
:data:`FINAL_TOLERANCE`) was measured and costs more than it saves (stream/BENCHMARKS.md): a final's front end has
drifted from its segment's first interims (its gain most of all), so most finals would rerun anyway.

The last one or two 10 ms frames of a prefix reach past its end (centred STFT, zero padding): they are run from
a copy of the state and not committed, so the committed state is exactly what the longer segment will have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .denoise import FLOOR, noise_floor
from .frames import FRAME_STRIDE_SAMPLES, num_frames
from .ge2e import HIDDEN, HOP, MIN_RMS, N_FFT, TARGET_DBFS, GE2EEncoder
from .pitch import WINDOW_SAMPLES as PITCH_WINDOW_SAMPLES, track
from .spectral import N_MELS as N_SPECTRAL_MELS, SpectralStats
from .voice import PULSE_SUMS, pulse_sums

DEFAULT_TOLERANCE = 1.0
"""The running front end's drift (relative) past which an interim reruns its segment's LSTM: only a gain that
has doubled or halved since the segment's first interim (a whisper, then a shout). Measured on 180 RAVDESS files
of actors 10, 15 and 20 and the demo file (stream/BENCHMARKS.md): 97.6 % of interims keep the whole-segment
interim's label (p99 probability difference 0.22) for 40 % of its LSTM frames, with 0.4 % rebuilding; 0.25 kept
99.4 % for 53 % of the frames, but a rebuild reruns the whole segment, and rebuilding each time the gain moves by
a quarter rebuilds a growing segment over and over: in the benchmark's 32 streams it ran 2.6x the frames of
the segments' finals, never rebuilding 0.9x, and interims are provisional (their final recomputes)."""

FINAL_TOLERANCE = 0.1
"""What a final finishing its segment's state would allow (``ser-live bench --agreement --final-tolerance``
measures it; the worker's finals recompute): at 0.1, 99.5 % of 189 finals keep the whole-segment label, but
77 % of them rerun the segment anyway."""

_EDGE = N_FFT
"""Samples before the commit point that a later request must repeat (what the next STFT frames overlap)."""

SPREAD_FRAMES = 8
"""Interims whose new frames differ by at most this many share one LSTM call (the rest step through cells)."""


@dataclass(slots=True)
class EncoderState:
    """One open segment's encoder state between its interims (mutable; one thread uses it at a time).
    ``offset_samples``: where the encoder's input starts in the segment's audio (-1: nothing seen yet)."""

    offset_samples: int = -1
    end_sample: int = -1  # where the audio of the last request that used it ended (its owner's clock)
    committed: int = 0  # 10 ms frames through the LSTM
    power: torch.Tensor | None = None  # (frames seen, 40) raw mel power at unit gain, committed ones first
    hc: list | None = None  # per layer (h, c), each (1, 1, 256)
    pairs: torch.Tensor | None = None  # (P, 768) raw 20 ms frames made so far
    loose: torch.Tensor | None = None  # (k, 768) committed 10 ms outputs from 2P + 1 on, not paired yet
    ref: tuple[float, torch.Tensor] | None = None  # (scale, floor) the committed frames were made with
    edge: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    spectral: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # the statistics branch's complete
    # 20 ms frames: mel power (T, 64), and (pitch) f0 and correlation (T',) each (see :func:`spectral_stats`)
    rebuilds: int = 0  # times the LSTM was rerun over the whole segment
    frames_run: int = 0  # 10 ms frames through the LSTM in all (rebuilds, tails and new ones)

    def reset(self, offset_samples: int = -1, keep_power: bool = False) -> None:
        """Forget the LSTM side (and, unless ``keep_power``, everything)."""
        self.committed, self.hc, self.pairs, self.loose, self.ref = 0, None, None, None, None
        if not keep_power:
            self.offset_samples, self.power, self.edge = offset_samples, None, np.zeros(0, np.float32)
            self.spectral = None

    @property
    def nbytes(self) -> int:
        tensors = [self.power, self.pairs, self.loose, *(self.spectral or ())] + [t for hc in self.hc or [] for t in hc]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None) + self.edge.nbytes


def committable(n_samples: int) -> int:
    """10 ms frames of an ``n_samples`` prefix whose STFT window lies inside it (the later ones reach past
    its end, into zero padding that more audio will replace)."""
    return 0 if n_samples < N_FFT // 2 else (n_samples - N_FFT // 2) // HOP + 1


def raw_power(encoder: GE2EEncoder, wave: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """Mel power of 10 ms frames ``[j0, j1)`` of ``wave`` (N,) at unit gain, as ``torch.stft`` with centring
    and zero padding frames the whole item: frame j covers samples ``[160 j - 200, 160 j + 200)``. (j1 - j0, 40)"""
    if j1 <= j0:
        return wave.new_zeros(0, encoder.fbank.shape[0])
    n, lo, hi = len(wave), HOP * j0 - N_FFT // 2, HOP * (j1 - 1) + N_FFT // 2
    x = torch.nn.functional.pad(wave[max(lo, 0):min(hi, n)], (max(0, -lo), max(0, hi - n)))
    spec = torch.fft.rfft(x.unfold(0, N_FFT, HOP) * encoder.window)  # (j1 - j0, 201)
    return spec.abs().pow(2) @ encoder.fbank.T


def front_end(encoder: GE2EEncoder, wave: torch.Tensor, power: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The whole-item front end from its raw ``power`` (T10, 40): (scale, floor (40,), LSTM input (T10, 40)),
    with ``scale`` the -30 dBFS gain squared times the re-levelling after denoising."""
    mean_square = float(wave.double().pow(2).mean()) if len(wave) else 0.0
    gain2 = 10 ** (TARGET_DBFS / 10) / max(mean_square, MIN_RMS ** 2)
    factor = encoder.cfg.denoise
    if factor <= 0:
        return gain2, power.new_zeros(power.shape[1]), gain2 * power
    floor = noise_floor(power[None], torch.ones(1, len(power), dtype=torch.bool, device=power.device))[0]
    clean = torch.maximum(power - factor * floor, FLOOR * power)
    relevel = float(power.sum() / clean.sum().clamp(min=1e-12 / gain2))
    return gain2 * relevel, floor, gain2 * relevel * clean


def drift(encoder: GE2EEncoder, ref: tuple[float, torch.Tensor], scale: float, floor: torch.Tensor,
          power: torch.Tensor) -> float:
    """How far the current front end is from ``ref``: the relative change of the scale, or of an average
    frame's cleaned power through the floor, whichever is larger."""
    d_scale = abs(scale / ref[0] - 1.0)
    energy = float(power.sum(1).mean()) if len(power) else 0.0
    d_floor = encoder.cfg.denoise * float((floor - ref[1]).abs().sum()) / energy if energy > 0 else 0.0
    return max(d_scale, d_floor)


def run_lstm(encoder: GE2EEncoder, inputs: list[torch.Tensor], states: list) -> tuple[list, list]:
    """The three layers over each item's ``inputs`` (k_i, 40) from its ``states`` (None: zeros): each item's
    outputs (k_i, 768) and its state after its own last frame. Items of equal k share a batch (interims come
    every ``interim_ms``, so most do); packing unequal ones would leave the fast CPU kernel (3x slower)."""
    outs = [x.new_zeros(0, encoder.dim) for x in inputs]
    new = list(states)
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        if len(x):
            groups.setdefault(len(x), []).append(i)
    zero = encoder.fbank.new_zeros(1, 1, HIDDEN)
    for idx in groups.values():
        h, layer_outs, layer_states = torch.stack([inputs[i] for i in idx]), [], []  # (B, k, 40)
        for layer, lstm in enumerate(encoder.lstm):
            h0 = torch.cat([states[i][layer][0] if states[i] else zero for i in idx], dim=1)  # (1, B, 256)
            c0 = torch.cat([states[i][layer][1] if states[i] else zero for i in idx], dim=1)
            h, (hn, cn) = lstm(h, (h0, c0))  # (B, k, 256)
            layer_outs.append(h)
            layer_states.append((hn, cn))
        cat = torch.cat(layer_outs, dim=-1)  # (B, k, 768)
        for b, i in enumerate(idx):
            outs[i] = cat[b]
            new[i] = [(hn[:, b:b + 1], cn[:, b:b + 1]) for hn, cn in layer_states]
    return outs, new


def run_cells(encoder: GE2EEncoder, inputs: list[torch.Tensor], states: list,
              commit: list[int]) -> tuple[list[torch.Tensor], list]:
    """:func:`run_lstm` for a few frames per item, a step at a time (one call of ``nn.LSTM`` costs about as much
    as 25 steps of its cell, whatever it is given): each item's outputs, and its state after ``commit[i]`` steps."""
    zero = encoder.fbank.new_zeros(1, HIDDEN)
    hc = [[(s[k][0][0], s[k][1][0]) if s else (zero, zero) for k in range(len(encoder.lstm))] for s in states]
    saved = [s if k == 0 else None for s, k in zip(states, commit)]
    outs: list[list[torch.Tensor]] = [[] for _ in inputs]
    for step in range(max((len(x) for x in inputs), default=0)):
        idx = [i for i, x in enumerate(inputs) if len(x) > step]
        h, parts = torch.stack([inputs[i][step] for i in idx]), []  # (B, 40)
        for layer, lstm in enumerate(encoder.lstm):
            hx = (torch.cat([hc[i][layer][0] for i in idx]), torch.cat([hc[i][layer][1] for i in idx]))
            h, c = torch.lstm_cell(h, hx, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
            for b, i in enumerate(idx):
                hc[i][layer] = (h[b:b + 1], c[b:b + 1])
            parts.append(h)
        cat = torch.cat(parts, dim=-1)  # (B, 768)
        for b, i in enumerate(idx):
            outs[i].append(cat[b])
            if step + 1 == commit[i]:
                saved[i] = [(h[None], c[None]) for h, c in hc[i]]  # (1, 1, 256) each, as nn.LSTM gives
    return [torch.stack(o) if o else x.new_zeros(0, encoder.dim) for o, x in zip(outs, inputs)], saved


def blocks(counts: list[int], spread: int = SPREAD_FRAMES) -> list[int]:
    """How many of each item's ``counts`` new frames go through one ``nn.LSTM`` call with others: items whose
    counts lie within ``spread`` of each other share the smallest (the rest go through :func:`run_cells`)."""
    out, start = [0] * len(counts), None
    for i in sorted(range(len(counts)), key=counts.__getitem__):
        if counts[i] == 0:
            continue
        if start is None or counts[i] > start + spread:
            start = counts[i]
        out[i] = start
    return out


def _pair(h10: torch.Tensor) -> torch.Tensor:
    """(2k or 2k + 1, 768) 10 ms outputs -> (k, 768) 20 ms frames (the mean of each pair)."""
    k = len(h10) // 2
    return h10[: 2 * k].reshape(k, 2, h10.shape[-1]).mean(1)


def encode(encoder: GE2EEncoder, waves: list[np.ndarray], offsets: list[int], states: list[EncoderState],
           tolerance: float | list[float] = DEFAULT_TOLERANCE) -> list[torch.Tensor]:
    """Standardised 20 ms frames (n_i, 768) of each encoder input ``waves[i]`` (starting ``offsets[i]``
    samples into its segment), carrying ``states[i]`` over from the segment's previous interim and leaving
    it ready for the next. ``tolerance``: one drift for every item, or one per item (a final's is tighter)."""
    tolerances = tolerance if isinstance(tolerance, list) else [tolerance] * len(waves)
    prep = []
    for wave_np, offset, state, tolerance in zip(waves, offsets, states, tolerances, strict=True):
        wave = torch.from_numpy(np.ascontiguousarray(wave_np, np.float32)).to(encoder.window.device)
        n = len(wave)
        jc, t10 = committable(n), 1 + n // HOP
        seen = 0 if state.power is None else len(state.power)
        stale = (offset != state.offset_samples or state.committed > jc or seen > t10 + 2
                 or not np.array_equal(wave_np[HOP * state.committed - len(state.edge): HOP * state.committed], state.edge))
        if stale:
            state.reset(offset)
        keep = state.power[: state.committed] if state.power is not None else wave.new_zeros(0, encoder.fbank.shape[0])
        power = torch.cat([keep, raw_power(encoder, wave, state.committed, t10)])  # (t10, 40)
        scale, floor, inputs = front_end(encoder, wave, power)
        if state.ref is not None and drift(encoder, state.ref, scale, floor, power) > tolerance:
            state.reset(keep_power=True)
            state.rebuilds += 1
        if state.ref is None:
            state.ref = (scale, floor)
        state.power = power
        prep.append((wave_np, n, jc, t10, inputs))
    counts = [p[2] - s.committed for p, s in zip(prep, states)]
    block = blocks(counts)
    fresh, hcs = run_lstm(encoder, [p[4][s.committed:s.committed + k] for p, s, k in zip(prep, states, block)],
                          [s.hc for s in states])
    rest, hcs = run_cells(encoder, [p[4][s.committed + k:] for p, s, k in zip(prep, states, block)], hcs,
                          [c - k for c, k in zip(counts, block)])  # the last few new frames, then the tail
    out = []
    for (wave_np, n, jc, t10, _), state, first, hc, more, c, k in zip(prep, states, fresh, hcs, rest, counts, block):
        new, tail = torch.cat([first, more[:c - k]]), more[c - k:]
        state.frames_run += len(new) + len(tail)
        if state.committed == 0:
            new = new[1:]  # frame 0 is never paired (20 ms frame t is 10 ms frames 2t + 1 and 2t + 2)
        loose = new if state.loose is None else torch.cat([state.loose, new])
        made = _pair(loose)
        state.pairs = made if state.pairs is None else torch.cat([state.pairs, made])
        state.loose, state.hc, state.committed = loose[2 * len(made):], hc, jc
        state.edge = np.array(wave_np[max(0, HOP * jc - _EDGE): HOP * jc], np.float32)
        frames = torch.cat([state.pairs, _pair(torch.cat([state.loose, tail]))])
        count = max(0, (n - 400) // 320 + 1)  # frames.frame_lengths for one item
        out.append((frames[:count] - encoder.shift) / encoder.scale)
    return out


def spectral_stats(spectral: SpectralStats, waves: list[np.ndarray], states: list[EncoderState],
                   speech: torch.Tensor) -> torch.Tensor:
    """The statistics branch's standardised output (B, out_dim) for the encoder inputs ``waves`` (after
    :func:`encode`, which checked each state against its wave), computing only the 20 ms frames each state
    does not hold yet: the statistics over all of them equal the whole-segment ones (the frames are local;
    the floor and the gain are taken over the kept frames each time). ``speech`` (B, T) as the heads get it.
    The pitch frames (f0, correlation and, with ``spectral.voice``, the glottal pulses' sums) are kept only
    where their 40 ms window lies inside the wave: the last ones reach into padding that more audio replaces."""
    dev = spectral.shift.device
    counts = [num_frames(len(w)) for w in waves]
    t = max(counts)
    power = torch.zeros(len(waves), t, N_SPECTRAL_MELS, device=dev)
    f0 = torch.ones(len(waves), t, device=dev)  # padding: a finite log2, masked out like the whole path's
    corr = torch.zeros(len(waves), t, device=dev)
    pulses = torch.zeros(len(waves), t, PULSE_SUMS, device=dev)
    for i, (wave_np, state, n) in enumerate(zip(waves, states, counts)):
        wave = torch.from_numpy(np.ascontiguousarray(wave_np, np.float32)).to(dev)
        kept = state.spectral or (wave.new_zeros(0, N_SPECTRAL_MELS), wave.new_zeros(0), wave.new_zeros(0),
                                  wave.new_zeros(0, PULSE_SUMS))
        tail = wave[FRAME_STRIDE_SAMPLES * len(kept[0]):]
        new = spectral.frontend.power(tail[None])[0] if n > len(kept[0]) else kept[0][:0]
        p = torch.cat([kept[0], new])[:n]
        power[i, :n] = p
        if spectral.pitch:
            done = len(kept[1])
            if n > done:
                rest = wave[FRAME_STRIDE_SAMPLES * done:][None]
                new_f0, new_corr = track(rest, n - done)
                f0[i, :n], corr[i, :n] = torch.cat([kept[1], new_f0[0]]), torch.cat([kept[2], new_corr[0]])
                if spectral.voice:
                    pulses[i, :n] = torch.cat([kept[3], pulse_sums(rest, new_f0, new_corr)[0]])
            else:  # nothing new (the segment grew by silence the trim leaves out)
                f0[i, :n], corr[i, :n], pulses[i, :n] = kept[1][:n], kept[2][:n], kept[3][:n]
        whole = min(n, max(0, (len(wave) - PITCH_WINDOW_SAMPLES) // FRAME_STRIDE_SAMPLES + 1))  # no zero padding
        state.spectral = (p, f0[i, :whole].clone(), corr[i, :whole].clone(), pulses[i, :whole].clone())
    tracked = ((f0, corr, pulses) if spectral.voice else (f0, corr)) if spectral.pitch else None
    raw = spectral.stats(power, torch.tensor(counts, device=dev), speech, tracked)
    return torch.nan_to_num((raw - spectral.shift) / spectral.scale, nan=0.0)
