"""A small encoder that needs no pretrained weights: log-mel, a few convolutions, a few transformer
layers, on the same 20 ms grid as WavLM. It trains from scratch on a CPU and powers the bundled model.

Padding never leaks into valid frames: frames past an item's end are zeroed before every convolution
(exactly what zero padding of the unpadded item gives) and masked out of attention, so a padded batch
gives each item the frames it would get alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import EncoderConfig
from .encoders import LayerMix, frame_lengths, length_mask
from .frames import FRAME_STRIDE_SAMPLES, RECEPTIVE_FIELD_SAMPLES, SAMPLE_RATE_HZ

N_FFT = 512
"""FFT size; the 400-sample window is zero-padded to it."""

SPEC_AUGMENT = {"freq_masks": 2, "freq_width": 8, "time_masks": 2, "time_width": 10}
"""SpecAugment while training: 2 bands of up to 8 mel bins and 2 spans of up to 10 frames (200 ms) zeroed."""

ENERGY_OFFSET, ENERGY_SCALE = 5.0, 5.0
"""Bring a frame's mean log-mel (about -14 in digital silence, 0..5 in speech) near unit range."""


FULL_BAND_HZ = (20.0, SAMPLE_RATE_HZ / 2)


def mel_filterbank(n_mels: int, n_fft: int = N_FFT, sample_rate_hz: int = SAMPLE_RATE_HZ,
                   band_hz: tuple = ()) -> torch.Tensor:
    """Triangular HTK-mel filters spread over ``band_hz`` (low, high; default 20 Hz to Nyquist), shape
    ``(n_fft // 2 + 1, n_mels)``."""
    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    low, high = band_hz or FULL_BAND_HZ
    mel_points = torch.linspace(hz_to_mel(low), hz_to_mel(high), n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate_hz / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    up = (bins[:, None] - lower[None]) / (centre - lower)[None]
    down = (upper[None] - bins[:, None]) / (upper - centre)[None]
    return torch.clamp(torch.minimum(up, down), min=0.0)


class LogMel(nn.Module):
    """Waveform (B, N) -> log-mel (B, T, n_mels) with T = floor((N - 400) / 320) + 1, no centring; the
    filters cover ``band_hz`` (low, high), by default 20 Hz to 8 kHz."""

    def __init__(self, n_mels: int, band_hz: tuple = ()) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(RECEPTIVE_FIELD_SAMPLES), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_mels, band_hz=tuple(band_hz)), persistent=False)

    def power(self, waveforms: torch.Tensor, process=None) -> torch.Tensor:
        """The mel power before the log, (B, T, n_mels); ``process`` maps the complex STFT (B, T, 257) first."""
        frames = waveforms.float().unfold(1, RECEPTIVE_FIELD_SAMPLES, FRAME_STRIDE_SAMPLES)  # (B, T, 400)
        spec = torch.fft.rfft(frames * self.window, n=N_FFT)  # (B, T, 257)
        if process is not None:
            spec = process(spec)
        return spec.abs().pow(2) @ self.fbank

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return torch.log(self.power(waveforms) + 1e-6)  # (B, T, n_mels)


class GlobalScale(nn.Module):
    """One fixed shift and scale for every mel bin and frame, so level and spectral shape survive."""

    def forward(self, mel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return (mel + ENERGY_OFFSET) / ENERGY_SCALE


class UtteranceGain(nn.Module):
    """Subtract each item's mean log-mel over its valid frames and bins (one scalar per item), then scale.

    A gain g adds 2 log g to every log-mel value, so this input is exactly gain-invariant (a live
    microphone's level says nothing about emotion), while the spectral shape and the loudness of one
    frame against the others (the dynamics that per-frame LayerNorm flattens) survive."""

    def forward(self, mel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``mel`` (B, T, F), ``valid`` (B, T) bool -> (B, T, F)."""
        weight = valid[..., None].to(mel.dtype)
        count = (weight.sum((1, 2)) * mel.shape[-1]).clamp(min=1)
        mean = (mel * weight).sum((1, 2)) / count  # (B,)
        return (mel - mean[:, None, None]) / ENERGY_SCALE


class FrameNorm(nn.LayerNorm):
    """LayerNorm over each frame's mel bins: level and spectral contrast removed."""

    def forward(self, mel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return super().forward(mel)


INPUT_NORMS = {"frame": FrameNorm, "global": lambda n_mels: GlobalScale(), "utterance": lambda n_mels: UtteranceGain()}
"""How the log-mel input is scaled, by ``EncoderConfig.input_norm``."""


def spec_augment(feats: torch.Tensor, freq_masks: int, freq_width: int, time_masks: int,
                 time_width: int) -> torch.Tensor:
    """Zero random mel bands and time spans of ``feats`` (B, T, F), drawn per item (Park et al., 2019)."""
    b, t, f = feats.shape
    keep = torch.ones(b, t, f, dtype=torch.bool, device=feats.device)
    for axis, n_masks, width, size in ((2, freq_masks, freq_width, f), (1, time_masks, time_width, t)):
        pos = torch.arange(size, device=feats.device)
        for _ in range(n_masks):
            w = torch.randint(0, width + 1, (b, 1), device=feats.device)
            start = (torch.rand(b, 1, device=feats.device) * (size - w).clamp(min=0)).long()
            band = (pos >= start) & (pos < start + w)  # (B, size)
            keep &= ~(band[:, None, :] if axis == 2 else band[:, :, None])
    return feats * keep


class ConvBlock(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=5, padding=2)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x * valid[..., None]
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, H)
        return x + self.drop(torch.nn.functional.gelu(self.norm(y)))


class BuiltinEncoder(nn.Module):
    """Log-mel -> per-frame LayerNorm -> linear -> conv blocks -> transformer layers; softmax layer mix."""

    downsample_rate = FRAME_STRIDE_SAMPLES

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dim = cfg.dim
        self.frontend = LogMel(cfg.n_mels, cfg.band_hz)
        self.in_norm = INPUT_NORMS[cfg.input_norm](cfg.n_mels)
        self.frame_energy, self.spec_augment = cfg.frame_energy, cfg.spec_augment
        self.in_proj = nn.Linear(cfg.n_mels + int(cfg.frame_energy), cfg.dim)
        self.convs = nn.ModuleList(ConvBlock(cfg.dim, cfg.dropout) for _ in range(cfg.conv_layers))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(cfg.transformer_layers)
        )
        self.mix = LayerMix(1 + cfg.conv_layers + cfg.transformer_layers)
        if cfg.freeze == "all":
            self.requires_grad_(False)
            self.mix.requires_grad_(True)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``waveforms`` (B, N), ``lengths`` (B,) samples -> hidden (B, T, H), frame lengths (B,)."""
        n_frames = frame_lengths(lengths)
        mel = self.frontend(waveforms)  # (B, T, n_mels)
        valid_mask = length_mask(n_frames, mel.shape[1])
        feats = self.in_norm(mel, valid_mask)
        if self.spec_augment and self.training:
            feats = spec_augment(feats, **SPEC_AUGMENT)
        if self.frame_energy:
            feats = torch.cat([feats, (mel.mean(-1, keepdim=True) + ENERGY_OFFSET) / ENERGY_SCALE], dim=-1)
        x = self.in_proj(feats)  # (B, T, H)
        valid = valid_mask.to(x.dtype)
        hidden = [x * valid[..., None]]
        for block in self.convs:
            x = block(x, valid)
            hidden.append(x * valid[..., None])
        pad = valid == 0
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
            hidden.append(x * valid[..., None])
        return self.mix(hidden), n_frames
