"""A spectral-statistics branch beside the encoder: what a classic SER baseline knows, inside the network.

For each item: the log-mel frames (the built-in encoder's front end, 64 bands on the 20 ms grid) less
the item's mean over its valid frames (one scalar, so a microphone's gain changes nothing); then, over
SAP's speech frames, the per-band mean and standard deviation, and the standard deviation of the
frame-to-frame deltas: 3 x 64 numbers. They are standardised with the training set's mean and standard
deviation, computed once before training (:meth:`SpectralStats.standardise_with`) and kept in the
checkpoint, as the classic baseline standardises its features; the pooled vector carries them into the
32-d projection, so SCL and the kNN datastore see them too. It works beside any encoder, WavLM included.

With ``pitch`` (``model.pitch_stats``), 8 pitch statistics follow (:mod:`.pitch`: voiced share,
periodicity, F0 level, spread, range, movement and slope over the speech frames). An item with no F0 to
describe (fewer than 3 voiced frames) gets the training mean for the F0 ones: 0 once standardised.
With ``voice`` (``model.voice_stats``, which needs the pitch statistics), the 12 voice-quality, loudness and
speech-rate statistics of :mod:`.voice` (jitter, shimmer, HNR, ...) come before the pitch ones, which stay
last (the Predictor reads the voiced share from there).
The bands cover the encoder's ``band_hz`` when it has one (a narrow-band front end), else 20 Hz to 8 kHz;
with the encoder's ``denoise``, each band's stationary floor leaves the mel power first (:mod:`.denoise`);
with its ``dereverb``, the late reverberation leaves the STFT before that (:mod:`.dereverb`).

Not a BatchNorm: its training-time statistics are those of one length-bucketed batch (and length goes
with emotion on acted speech), its running averages lag, and a model trained that way predicted one class
in eval mode on a RAVDESS fold while its embeddings (which kNN uses) stayed sound.
"""

from __future__ import annotations

import torch
from torch import nn

from .builtin import LogMel, UtteranceGain
from .denoise import subtract_floor
from .dereverb import filter_frames, wpe
from .encoders import fit_mask, frame_lengths, length_mask
from .frames import FRAME_STRIDE_SAMPLES, SAMPLE_RATE_HZ
from .pitch import FEATURES as PITCH_FEATURES, pitch_stats, track
from .voice import FEATURES as VOICE_FEATURES, pulse_sums, voice_stats
from .pooling import masked_mean, masked_std

N_MELS = 64
"""Mel bands of the statistics (the classic baseline's count)."""


class SpectralStats(nn.Module):
    """Waveforms (B, N), lengths (B,), speech mask (B, T) -> standardised statistics (B, out_dim):
    3 * 64 band statistics, then with ``voice`` the 12 of :data:`.voice.FEATURES`, then with ``pitch`` the 8 of
    :data:`.pitch.FEATURES`."""

    def __init__(self, pitch: bool = False, band_hz: tuple = (), denoise: float = 0.0, dereverb: bool = False,
                 voice: bool = False) -> None:
        super().__init__()
        if voice and not pitch:
            raise ValueError("the voice statistics use the pitch tracker's frames: they need pitch too")
        self.pitch, self.denoise, self.dereverb, self.voice = pitch, denoise, dereverb, voice
        self.out_dim = 3 * N_MELS + (len(VOICE_FEATURES) if voice else 0) + (len(PITCH_FEATURES) if pitch else 0)
        self.frontend = LogMel(N_MELS, band_hz)
        self.gain = UtteranceGain()
        self.register_buffer("shift", torch.zeros(self.out_dim))
        self.register_buffer("scale", torch.ones(self.out_dim))

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num((self.raw(waveforms, lengths, speech) - self.shift) / self.scale, nan=0.0)

    @torch.no_grad()
    def standardise_with(self, stats: torch.Tensor) -> None:
        """Set the standardisation from raw statistics ``(N, out_dim)`` of the training utterances (NaN,
        an item's missing F0 statistics, left out)."""
        mean = stats.nanmean(0)
        std = ((stats - mean).pow(2).nanmean(0) * (len(stats) / max(len(stats) - 1, 1))).sqrt()
        self.shift.copy_(torch.nan_to_num(mean, nan=0.0))
        self.scale.copy_(torch.nan_to_num(std, nan=1.0).clamp(min=1e-3))

    def raw(self, waveforms: torch.Tensor, lengths: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        """The statistics before standardisation, (B, out_dim)."""
        n = frame_lengths(lengths)
        def dereverb(spec):  # (B, T, F) here, (B, F, T) for WPE
            hop = filter_frames(FRAME_STRIDE_SAMPLES / SAMPLE_RATE_HZ)
            return wpe(spec.transpose(1, 2), length_mask(n, spec.shape[1]), *hop).transpose(1, 2)

        power = self.frontend.power(waveforms, dereverb if self.dereverb else None)  # (B, T, 64)
        tracked = track(waveforms, power.shape[1]) if self.pitch else None
        if self.voice:
            tracked = (*tracked, pulse_sums(waveforms, *tracked))
        return self.stats(power, n, speech, tracked)

    def stats(self, power: torch.Tensor, n: torch.Tensor, speech: torch.Tensor,
              tracked: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """:meth:`raw` from the frames' mel power (B, T, 64), frame counts (B,), the speech mask and, with
        ``pitch``, :func:`.pitch.track`'s (f0, correlation) (B, T) each, with ``voice`` then
        :func:`.voice.pulse_sums` (B, T, 4) (incremental interims keep the frames)."""
        valid = length_mask(n, power.shape[1])
        clean = subtract_floor(power, valid, self.denoise)
        mel = self.gain(torch.log(clean + 1e-6), valid)
        keep = fit_mask(speech, mel.shape[1]) & valid
        keep = torch.where(keep.sum(1, keepdim=True) >= 3, keep, valid)  # too little speech: every frame
        mean = masked_mean(mel, keep)
        delta = mel[:, 1:] - mel[:, :-1]  # (B, T - 1, 64)
        both = keep[:, 1:] & keep[:, :-1]
        parts = [mean, masked_std(mel, keep, mean), masked_std(delta, both)]
        if self.voice:
            parts.append(voice_stats(clean, valid, keep, tracked[1], tracked[2]))
        if self.pitch:
            parts.append(pitch_stats(None, keep, tracked[:2]))
        return torch.cat(parts, dim=-1).float()

