"""A pretrained voice encoder that runs on a laptop CPU: GE2E (Wan et al., ICASSP 2018) as trained by
Resemblyzer (Resemble AI, Apache 2.0) on thousands of speakers of LibriSpeech and VoxCeleb 1/2.

It was trained to tell voices apart, in the wild (VoxCeleb is interviews: rooms, microphones, crowds),
and its three LSTM layers carry much more than identity: a linear probe on the mean and standard
deviation of each layer's outputs reaches 76.7 % UA on RAVDESS leave-one-speaker-out (4 classes), against
59 % for the classic log-mel baseline. Here it is a frozen encoder like WavLM in the SAP paper: the three
layers' outputs, concatenated (768 per frame), put on the 20 ms grid of :mod:`.frames` and standardised
with the training frames' statistics (:meth:`GE2EEncoder.standardise_with`, kept in the checkpoint).

Front end as Resemblyzer's: 40 mel bands (Slaney scale and area normalisation, as librosa's default) of the
power spectrum, 25 ms Hann windows every 10 ms, centred with zero padding; the item scaled to -30 dBFS RMS
first (here always, so a microphone's gain changes nothing); with ``encoder.denoise``, each band's stationary
floor is then subtracted (:mod:`.denoise`), with ``encoder.dereverb`` the late reverberation is taken out of
the STFT before that (:mod:`.dereverb`), and the rest is scaled back up by what they took away (the noise or
the room had raised the item's RMS, so its speech had been scaled down with it). The LSTM is causal and the
padding is zeros, so a padded batch gives each item the frames it gets alone. Two 10 ms frames make one 20 ms frame (those
centred 2.5 ms after the grid frame's centre and 7.5 ms before it).

Weights: the model directory holds them (the encoder's tensors are part of ``model.safetensors``), so
ser-live needs nothing else. Training starts from Resemblyzer's ``pretrained.pt``
(:func:`load_pretrained`): ``encoder.name = "resemblyzer"`` finds it in the installed ``resemblyzer``
package without importing it (``pip install --no-deps resemblyzer==0.1.4``), or give a file's path.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, EncoderConfig
from .denoise import subtract_floor
from .dereverb import filter_frames, wpe
from .encoders import frame_lengths, length_mask
from .frames import SAMPLE_RATE_HZ

N_MELS, N_FFT, HOP, HIDDEN, LAYERS = 40, 400, 160, 256, 3
TARGET_DBFS = -30.0
"""Each item's RMS is brought to this level before the mel front end (Resemblyzer's normalisation)."""
MIN_RMS = 1e-5
"""RMS floor (-100 dBFS): digital silence is amplified by at most 70 dB."""


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    lin = f * 3.0 / 200.0
    return torch.where(f >= 1000.0, 15.0 + torch.log(f.clamp(min=1e-9) / 1000.0) * 27.0 / math.log(6.4), lin)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    lin = m * 200.0 / 3.0
    return torch.where(m >= 15.0, 1000.0 * torch.exp((m - 15.0) * math.log(6.4) / 27.0), lin)


def slaney_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate_hz: int = SAMPLE_RATE_HZ) -> torch.Tensor:
    """librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale, area-normalised), shape ``(n_mels, n_fft // 2 + 1)``."""
    top = sample_rate_hz / 2  # in mel (Slaney; above 1 kHz):
    top_mel = 15.0 + math.log(top / 1000.0) * 27.0 / math.log(6.4) if top >= 1000 else top * 3.0 / 200.0
    freqs = torch.linspace(0, top, n_fft // 2 + 1, dtype=torch.float64, device="cpu")
    mel_f = _mel_to_hz(torch.linspace(0.0, top_mel, n_mels + 2, dtype=torch.float64, device="cpu"))
    fdiff = mel_f.diff()
    ramps = mel_f[:, None] - freqs[None]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    return (weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]).float()


def resemblyzer_weights(name: str) -> Path:
    """The ``pretrained.pt`` that ``encoder.name`` points at: a file, or ``"resemblyzer"`` for the one in the
    installed package (found without importing it: it would import librosa and the old webrtcvad)."""
    if name != "resemblyzer":
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"encoder.name: {path} is not a file (give Resemblyzer's pretrained.pt, or \"resemblyzer\")")
        return path
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the GE2E encoder starts from Resemblyzer's weights: pip install --no-deps resemblyzer==0.1.4 "
                          "(or set encoder.name to its pretrained.pt)")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


class GE2EEncoder(nn.Module):
    """Waveforms (B, N) + lengths (B,) -> standardised frames (B, T, 768) on the 20 ms grid, frame lengths."""

    downsample_rate = 2 * HOP

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.ModuleList(nn.LSTM(N_MELS if i == 0 else HIDDEN, HIDDEN, batch_first=True) for i in range(LAYERS))
        self.dim = HIDDEN * LAYERS
        self.register_buffer("fbank", slaney_filterbank(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        self.register_buffer("shift", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))
        if cfg.freeze != "none":
            self.lstm.requires_grad_(False)

    def load_pretrained(self) -> None:
        """Copy Resemblyzer's LSTM weights in (``encoder.name``); its final linear layer is not used."""
        path = resemblyzer_weights(self.cfg.name or "resemblyzer")
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("model_state", state)
        # one 3-layer nn.LSTM there ("lstm.weight_ih_l1"), three 1-layer ones here ("1.weight_ih_l0")
        lstm = {f"{k[-1]}.{k[5:-1]}0": v for k, v in state.items() if k.startswith("lstm.")}
        try:
            self.lstm.load_state_dict(lstm)
        except RuntimeError as exc:
            raise ConfigError(f"{path} does not hold a 3-layer, 256-unit GE2E LSTM over 40 mel bands") from exc

    def mel(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, 1 + N // 160, 40) mel power, each item at -30 dBFS RMS over its valid samples."""
        x = waveforms.float()
        valid = length_mask(lengths, x.shape[1])
        x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
        rms = (x.pow(2).sum(1) / lengths.clamp(min=1).to(x.dtype)).sqrt().clamp(min=MIN_RMS)
        x = x * (10 ** (TARGET_DBFS / 20) / rms)[:, None]
        spec = torch.stft(x, N_FFT, HOP, window=self.window, center=True, pad_mode="constant", return_complex=True)
        mel = (self.fbank @ spec.abs().pow(2)).transpose(1, 2)  # (B, T10, 40)
        if not (self.cfg.denoise or self.cfg.dereverb):
            return mel
        valid = length_mask(1 + lengths // HOP, mel.shape[1])
        clean = mel
        if self.cfg.dereverb:
            spec = wpe(spec, valid, *filter_frames(HOP / SAMPLE_RATE_HZ))
            clean = (self.fbank @ spec.abs().pow(2)).transpose(1, 2)
        clean = subtract_floor(clean, valid, self.cfg.denoise)
        # back to the level the speech alone would have had at -30 dBFS
        return clean * (mel.sum((1, 2)) / clean.sum((1, 2)).clamp(min=1e-12))[:, None, None]

    def layers(self, mel: torch.Tensor) -> torch.Tensor:
        """The three LSTM layers' outputs, concatenated: (B, T10, 768)."""
        outs, h = [], mel
        for lstm in self.lstm:
            h, _ = lstm(h)
            outs.append(h)
        return torch.cat(outs, dim=-1)

    def raw(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames before standardisation (B, T, 768) and frame lengths (B,)."""
        n = frame_lengths(lengths)
        t = int(n.max()) if n.numel() else 0
        h = self.layers(self.mel(waveforms, lengths))  # (B, T10, 768), T10 = 1 + N // 160 >= 2t + 1
        h = torch.nn.functional.pad(h, (0, 0, 0, max(0, 2 * t + 1 - h.shape[1])))
        pairs = h[:, 1:2 * t + 1].reshape(h.shape[0], t, 2, self.dim)
        return pairs.mean(2), n

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, n = self.raw(waveforms, lengths)
        return (frames - self.shift) / self.scale, n

    @torch.no_grad()
    def standardise_with(self, frames: torch.Tensor) -> None:
        """Set the per-dimension standardisation from raw training frames ``(M, 768)``."""
        self.shift.copy_(frames.mean(0))
        self.scale.copy_(frames.std(0).clamp(min=1e-3))
