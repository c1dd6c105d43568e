"""serlive.model: encoders, the speech mask, GAP/SAP/SR pooling, heads, the kNN datastore, the model
directory format and the Predictor. Nothing here imports stream, train or tui."""

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
