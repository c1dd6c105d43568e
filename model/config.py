"""The model's configuration: everything needed to rebuild it, saved as ``config.json``."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LABELS = ("angry", "happy", "neutral", "sad")
"""The four-class set of both papers (IEMOCAP, with excited merged into happy)."""

POOLINGS = ("gap", "sap", "sr")
FREEZE_MODES = ("none", "cnn", "all")
ENCODER_KINDS = ("hf", "builtin", "ge2e")
INPUT_NORMS = ("frame", "global", "utterance")
OOD_STATISTICS = ("spectral_z", "knn_distance")

DURATION_RANGE_S = (0.5, 600.0)
"""``max_duration_s`` bounds: a shorter cut leaves too little speech to judge (and too few samples for the
encoders' first frames); a longer one is no utterance but a recording, beyond what attention can hold."""

MAX_LABEL_CHARS = 40
"""Labels are shown in terminals and pages: short printable names only."""


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """Which encoder makes the 20 ms frames.

    ``kind="hf"``: a Hugging Face wav2vec2 / HuBERT / WavLM, from ``name`` (hub id or local folder) or,
    when ``hf_config`` is given, rebuilt from that config dict with no download (how checkpoints load).
    ``kind="builtin"``: the small log-mel encoder of :mod:`serlive.model.builtin`, sized by ``dim``,
    ``conv_layers``, ``transformer_layers`` and ``heads``; ``frame_energy`` hands the built-in encoder each
    frame's mean log-mel level, which its per-frame LayerNorm otherwise removes; ``spec_augment`` masks
    random mel bands and time spans of its input while training (SpecAugment; no effect in eval mode);
    ``input_norm`` is how the built-in encoder scales its log-mel input: ``"frame"`` (LayerNorm over each
    frame's mel bins: level and spectral contrast removed) or ``"global"`` (one fixed shift and scale for
    every bin: a frame's level and shape kept, as in the classic baseline's statistics) or ``"utterance"``
    (the item's mean log-mel subtracted: gain-invariant, the frames' relative level and shape kept);
    ``band_hz`` (low, high) narrows the built-in log-mel filters (and the spectral statistics' bands) to
    that band, e.g. ``[300, 3400]``: a narrow-band front end that a telephone line barely changes; empty:
    20 Hz to 8 kHz. ``kind="ge2e"``: the pretrained GE2E voice encoder of :mod:`serlive.model.ge2e` (its three
    LSTM layers, 768 per frame); ``name`` is where training takes its weights from (``"resemblyzer"``, the
    installed package, or a ``pretrained.pt``); a model directory carries them. ``freeze`` other than
    ``"none"`` keeps them fixed. ``denoise`` (0 = off) subtracts that many times each mel band's stationary
    floor from the GE2E front end's and the spectral statistics' mel power (:mod:`serlive.model.denoise`);
    ``dereverb`` takes the late reverberation out of both front ends' STFT first (WPE, :mod:`serlive.model.dereverb`).
    """

    kind: str = "builtin"
    name: str = ""
    hf_config: dict | None = None
    freeze: str = "cnn"
    dim: int = 128
    n_mels: int = 64
    conv_layers: int = 2
    transformer_layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    frame_energy: bool = False
    spec_augment: bool = False
    input_norm: str = "frame"
    band_hz: tuple = ()
    denoise: float = 0.0
    dereverb: bool = False

    def __post_init__(self) -> None:
        choice("encoder.kind", self.kind, ENCODER_KINDS)
        choice("encoder.freeze", self.freeze, FREEZE_MODES)
        choice("encoder.input_norm", self.input_norm, INPUT_NORMS)
        if self.hf_config is not None and not isinstance(self.hf_config, dict):
            raise ConfigError(f"encoder.hf_config must be a table or null, not {type(self.hf_config).__name__}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("encoder.dropout must lie in [0, 1)")
        if self.kind == "hf" and not self.name and self.hf_config is None:
            raise ConfigError("encoder.name must be a hub id or a local folder when encoder.kind is 'hf'")
        if self.band_hz:
            band = self.band_hz
            if (len(band) != 2 or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f)
                                          for f in band) or not 0 <= band[0] < band[1] <= 8000):
                raise ConfigError(f"encoder.band_hz must be [low, high] in Hz with 0 <= low < high <= 8000, not {band!r}")
            if self.kind != "builtin":
                raise ConfigError("encoder.band_hz narrows the built-in encoder's log-mel filters: it needs encoder.kind = 'builtin'")
        if not (isinstance(self.denoise, (int, float)) and not isinstance(self.denoise, bool)
                and math.isfinite(self.denoise) and 0 <= self.denoise <= 4):
            raise ConfigError(f"encoder.denoise must be a number from 0 (off) to 4, not {self.denoise!r}")
        if not isinstance(self.dereverb, bool):
            raise ConfigError(f"encoder.dereverb must be true or false, not {self.dereverb!r}")
        if self.dereverb and self.kind != "ge2e":
            raise ConfigError("encoder.dereverb works on the GE2E front end's STFT: it needs encoder.kind = 'ge2e'")
        for name in ("dim", "n_mels", "heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"encoder.{name} must be positive")
        if self.kind == "builtin" and self.dim % self.heads:
            raise ConfigError("encoder.dim must be divisible by encoder.heads")


@dataclass(frozen=True, slots=True)
class VadConfig:
    """WebRTC VAD settings used to build the SAP speech mask."""

    mode: int = 3
    frame_ms: int = 30

    def __post_init__(self) -> None:
        choice("vad.mode", self.mode, (0, 1, 2, 3))
        choice("vad.frame_ms", self.frame_ms, (10, 20, 30))


@dataclass(frozen=True, slots=True)
class KnnConfig:
    """kNN interpolation at inference: ``p = alpha * p_knn + (1 - alpha) * p_model``."""

    k: int = 8
    alpha: float = 0.0
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError("knn.k must be at least 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("knn.alpha must lie in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError("knn.temperature must be positive")


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """How a model reports confidence. The defaults (T = 1, no OOD reference) change nothing, so model
    directories written before calibration existed behave as they did.

    ``ood_reference``: the atypicality at percentiles 0, 5, ..., 100 of unseen in-domain speakers (21 values;
    empty: no OOD score). ``ood_mix``: the largest share of uniform mixed into the probabilities far out of
    distribution. ``shift_beta``: the temperature grows as ``T * exp(shift_beta * (a - shift_from))`` with an
    utterance's atypicality ``a`` past ``shift_from`` (degraded speech gets flatter probabilities; 0: one T).
    ``speech_limit``: the 99th percentile of the atypicality of the speech, clean and degraded, the
    calibration was checked on; past it an utterance is ``uncertain`` and tempered by ``ood_mix`` (0: the older rule, uncertain past
    ``ood_threshold`` of the OOD score). ``min_voiced``: the pitch tracker's voiced share under which an
    utterance is ``uncertain`` and tempered the same way (noise alone is never voiced). ``short_frames`` and
    ``short_gamma``: the temperature also grows as ``(short_frames / n) ** short_gamma`` for an input with
    n < ``short_frames`` speech frames (an interim over the first half second, a one-word answer: the model is
    right 40 % of the time there, at the confidence of a whole utterance; 0: off). ``adapt_prior``: pseudo-utterances of the reference mean in a speaker's running mean (the
    per-speaker adaptation's shrinkage); ``embedding_mean``: that reference, the training speakers' mean
    embedding (empty: the model cannot adapt). ``voice_from`` and ``voice_beta``: an adapting stream whose
    speaker's running mean lies ``d`` from that reference gets its temperature times ``exp(voice_beta * (d -
    voice_from))`` past ``voice_from`` (a voice, language or microphone unlike the training speakers': the
    model is less often right there; 0: off). ``adapt_near``: a stream whose speaker mean lies within that
    distance of the reference is not shifted, and the shift grows to whole at twice it (a voice like the
    training speakers' needs no centring, and its running mean is mostly its emotions; 0: always whole)."""

    temperature: float = 1.0
    ood_statistic: str = "spectral_z"
    ood_reference: tuple[float, ...] = ()
    ood_threshold: float = 0.99
    ood_mix: float = 0.5
    min_confidence: float = 0.0
    shift_beta: float = 0.0
    shift_from: float = 0.0
    speech_limit: float = 0.0
    min_voiced: float = 0.0
    short_frames: float = 0.0
    short_gamma: float = 0.0
    adapt_prior: float = 4.0
    embedding_mean: tuple[float, ...] = ()
    voice_from: float = 0.0
    voice_beta: float = 0.0
    adapt_near: float = 0.0

    def __post_init__(self) -> None:
        choice("calibration.ood_statistic", self.ood_statistic, OOD_STATISTICS)
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ConfigError("calibration.temperature must be a positive number")
        if self.ood_reference and (len(self.ood_reference) < 2 or any(
                not math.isfinite(x) for x in self.ood_reference) or list(self.ood_reference) != sorted(self.ood_reference)):
            raise ConfigError("calibration.ood_reference must be finite, sorted percentiles (or empty)")
        for name in ("shift_beta", "shift_from", "speech_limit", "short_frames", "short_gamma", "voice_from", "voice_beta",
                     "adapt_near"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"calibration.{name} must be a number at least 0")
        for name in ("ood_threshold", "ood_mix", "min_confidence", "min_voiced"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"calibration.{name} must lie in [0, 1]")
        if not math.isfinite(self.adapt_prior) or self.adapt_prior < 0:
            raise ConfigError("calibration.adapt_prior must be at least 0")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything that rebuilds a SER model: encoder, pooling, heads, labels, VAD and input limits.

    ``speech_pad_s`` (None: off) cuts every input to its VAD speech span plus that much context on each
    side, in training and in the Predictor alike, so a model trained on whole files sees what ser-live's
    segmenter gives it live (a segment with pre-roll and hang-over), not a file's leading silence.
    ``sap_dim`` (0: off) lets SAP attend over the frames projected to that many dimensions (a learned linear
    map), which makes its self-attention affordable on wide frames (GE2E's 768) on a CPU; GAP is unchanged.
    ``spectral_stats`` adds the statistics branch (:mod:`serlive.model.spectral`), ``pitch_stats`` its pitch
    statistics, ``voice_stats`` its jitter, shimmer, HNR, loudness-contour and speech-rate statistics
    (:mod:`serlive.model.voice`; off by default, so models saved before it load unchanged)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pooling: str = "sr"
    labels: tuple[str, ...] = DEFAULT_LABELS
    embed_dim: int = 32
    sap_heads: int = 4
    sap_dim: int = 0
    dimensional: bool = True
    vad: VadConfig = field(default_factory=VadConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    max_duration_s: float = 19.0
    speech_pad_s: float | None = None
    gap_std: bool = False
    spectral_stats: bool = False
    pitch_stats: bool = False
    voice_stats: bool = False
    description: str = ""
    license: str = ""

    def __post_init__(self) -> None:
        choice("pooling", self.pooling, POOLINGS)
        check_labels(self.labels)
        if self.embed_dim <= 0 or self.sap_heads <= 0 or self.sap_dim < 0:
            raise ConfigError("embed_dim and sap_heads must be positive, sap_dim 0 (off) or positive")
        low, high = DURATION_RANGE_S
        if not low <= self.max_duration_s <= high:
            raise ConfigError(f"max_duration_s must lie in [{low:g}, {high:g}] seconds, not {self.max_duration_s!r}")
        pad = self.speech_pad_s
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, (int, float)) or not 0 <= pad < high):
            raise ConfigError(f"speech_pad_s must be None (off) or a number of seconds of at least 0, not {pad!r}")
        if self.pitch_stats and not self.spectral_stats:
            raise ConfigError("pitch_stats adds to the spectral-statistics branch: set spectral_stats = true too")
        if self.voice_stats and not self.pitch_stats:
            raise ConfigError("voice_stats uses the pitch tracker's frames: set pitch_stats = true (and spectral_stats) too")
        if self.calibration.embedding_mean and len(self.calibration.embedding_mean) != self.embed_dim:
            raise ConfigError(f"calibration.embedding_mean must have embed_dim ({self.embed_dim}) values")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Build from a plain dict (as in config.json or a TOML table); unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"model must be a table, not {type(data).__name__}")
        data = dict(data)
        sub = {"encoder": EncoderConfig, "vad": VadConfig, "knn": KnnConfig, "calibration": CalibrationConfig}
        for key, klass in sub.items():
            if key in data:
                data[key] = build_dataclass(klass, data[key], key)
        return build_dataclass(cls, data, "model")

    @classmethod
    def from_toml(cls, path: str | Path) -> "ModelConfig":
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
        return cls.from_dict(table.get("model", table))


def build_dataclass(klass, data: dict, where: str):
    """``klass(**data)`` from a TOML/JSON table with clear errors: unknown keys, a non-table, a value whose
    type does not match the field's default (lists become tuples; ints are accepted for floats)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)}")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    for name, value in data.items():
        default = fields[name].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be true or false, not {value!r}")
        if isinstance(default, (str, tuple)) and not isinstance(value, type(default)):
            raise ConfigError(f"{where}.{name} must be {'a string' if isinstance(default, str) else 'a list'}, "
                              f"not {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{where}.{name} must be a finite number, not {value!r}")
            if isinstance(default, int) and value != int(value):
                raise ConfigError(f"{where}.{name} must be an integer, not {value!r}")
            data[name] = type(default)(value)
    try:
        return klass(**data)
    except TypeError as exc:
        raise ConfigError(f"bad value in [{where}]: {exc}") from exc


def check_labels(labels: tuple) -> None:
    """At least two distinct, short, printable class names."""
    bad = next((x for x in labels if not isinstance(x, str) or not x.strip() or not x.isprintable()
                or len(x) > MAX_LABEL_CHARS), None)
    if bad is not None:
        raise ConfigError(f"labels must be names of 1 to {MAX_LABEL_CHARS} printable characters, not {bad!r}")
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError("labels must be at least two distinct names")


def choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}")
