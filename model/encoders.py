"""Encoders: waveform batch + lengths in, 20 ms frames out (the s3prl upstream contract).

Every encoder returns ``(hidden, frame_lengths)`` with ``hidden`` of shape ``(batch, frames, dim)`` on
the grid of :mod:`serlive.model.frames`, and mixes its hidden layers with learnable softmax weights.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from .config import EncoderConfig
from .frames import FRAME_STRIDE_SAMPLES, RECEPTIVE_FIELD_SAMPLES

log = logging.getLogger(__name__)


def frame_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames per item for sample counts ``lengths`` (B,): ``floor((N - 400) / 320) + 1``, min 0."""
    n = torch.div(lengths - RECEPTIVE_FIELD_SAMPLES, FRAME_STRIDE_SAMPLES, rounding_mode="floor") + 1
    return n.clamp(min=0)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, max_len)`` bool mask, True where the position is inside the item."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def fit_mask(mask: torch.Tensor, t: int) -> torch.Tensor:
    """Crop or right-pad (with False) a (B, T') mask to (B, t), as bool."""
    mask = mask.to(torch.bool)
    if mask.shape[1] >= t:
        return mask[:, :t]
    return torch.nn.functional.pad(mask, (0, t - mask.shape[1]), value=False)


class LayerMix(nn.Module):
    """Learnable softmax weights over stacked hidden layers (s3prl's Featurizer)."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_layers))

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.weights.float(), dim=0).to(layers[0].dtype)
        return torch.einsum("l,lbth->bth", w, torch.stack(layers))  # (B, T, H)


class HFEncoder(nn.Module):
    """A Hugging Face wav2vec2 / HuBERT / WavLM model as an encoder.

    ``from_pretrained`` when ``cfg.name`` is a hub id or folder; rebuilt from ``cfg.hf_config`` (random
    init, weights come from the checkpoint) when that is given.
    """

    downsample_rate = FRAME_STRIDE_SAMPLES

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if cfg.hf_config is not None:
            conf = dict(cfg.hf_config)
            hf_cfg = AutoConfig.for_model(conf.pop("model_type"), **conf)
            self.backbone = AutoModel.from_config(hf_cfg)
        else:
            self.backbone = AutoModel.from_pretrained(cfg.name)
        hf_cfg = self.backbone.config
        # Layer-norm front ends (WavLM Large, wav2vec2-large-lv60) take an attention mask; group-norm
        # ones (wav2vec2-base, HuBERT base) were trained on unpadded audio and must not get one.
        self.use_attention_mask = getattr(hf_cfg, "feat_extract_norm", "layer") == "layer"
        self.dim = hf_cfg.hidden_size
        self.mix = LayerMix(hf_cfg.num_hidden_layers + 1)
        self.backbone.config.layerdrop = 0.0
        # transformers' WavLM attention hands torch a bool padding mask next to a float position bias;
        # torch warns about the mix on every process's first forward. The result is correct.
        warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask", category=UserWarning)
        if cfg.freeze == "all":
            self.backbone.requires_grad_(False)
        elif cfg.freeze == "cnn":
            self.backbone.feature_extractor.requires_grad_(False)

    def config_dict(self) -> dict:
        """The backbone's config as a plain dict, enough to rebuild it offline."""
        return self.backbone.config.to_diff_dict() | {"model_type": self.backbone.config.model_type}

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``waveforms`` (B, N) float, ``lengths`` (B,) samples -> hidden (B, T, H), frame lengths (B,)."""
        mask = length_mask(lengths, waveforms.shape[1]).long() if self.use_attention_mask else None
        out = self.backbone(waveforms, attention_mask=mask, output_hidden_states=True)
        return self.mix(list(out.hidden_states)), frame_lengths(lengths)


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """The encoder ``cfg`` describes."""
    if cfg.kind == "hf":
        return HFEncoder(cfg)
    if cfg.kind == "ge2e":
        from .ge2e import GE2EEncoder

        return GE2EEncoder(cfg)
    from .builtin import BuiltinEncoder

    return BuiltinEncoder(cfg)
