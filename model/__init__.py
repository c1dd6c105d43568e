"""serlive.model: encoders, the speech mask, GAP/SAP/SR pooling, heads, the kNN datastore, the model
directory format and the Predictor. Nothing here imports stream, train or tui."""

import os

ONEDNN_CACHE_CAPACITY = 16
"""Kernels oneDNN keeps built (its default is 1024). torch's CPU LSTM builds one per input shape and keeps it
with its buffers: 0.6 MB for one 3-layer batch-1 shape, 2 MB at batch 32 x 3 s; segments come in every length,
so with the default a server grew by 59 MB after 100 lengths and a 60 s flooding client by 53-66 MB (still
growing). At 16: 11 MB after 100 lengths, the flood 30 MB, flat after 20 s (stream/BENCHMARKS.md); at 0 every
call rebuilds its kernel, 3 ms more per interim. Set before the first LSTM runs; the environment variable
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` overrides it."""
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))

from .audio import AudioError, to_mono_16k
from .checkpoint import CheckpointError, bundled_model_dir, load_model_dir, read_config, save_model_dir
from .config import ConfigError, DEFAULT_LABELS, EncoderConfig, KnnConfig, ModelConfig, VadConfig
from .frames import SAMPLE_RATE_HZ, num_frames, speech_mask, trim_to_speech
from .knn import KnnDatastore
from .predictor import Prediction, Predictor
from .ser import SERModel, SEROutput

__all__ = [
    "AudioError", "CheckpointError", "ConfigError", "DEFAULT_LABELS", "EncoderConfig", "KnnConfig",
    "KnnDatastore", "ModelConfig", "Prediction", "Predictor", "SAMPLE_RATE_HZ", "SERModel", "SEROutput",
    "VadConfig", "bundled_model_dir", "load_model_dir", "num_frames", "read_config", "save_model_dir", "speech_mask", "to_mono_16k",
    "trim_to_speech",
]
