"""Shared fixtures: tiny models built offline, deterministic seeds, the gpu marker."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_WAVLM = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
    num_buckets=32, max_bucket_distance=100, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
)
"""A WavLM with the real architecture (7-layer CNN front end, gated relative attention), shrunk."""


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_wavlm_dir(tmp_path_factory):
    """A tiny random WavLM written with save_pretrained, as a hub folder would be."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-wavlm")
    WavLMModel(WavLMConfig(**TINY_WAVLM)).save_pretrained(path)
    return path
