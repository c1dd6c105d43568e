"""The training configuration: one frozen dataclass per stage, composed into :class:`TrainConfig`.

Loaded from TOML (tables ``[data]``, ``[protocol]``, ``[loss]``, ``[augment]``, ``[optim]``, ``[knn]``,
``[run]`` and ``[model]``), overridden by ``--set key.sub=value`` strings, validated with messages that
name the field, and written back as ``train_config.json`` into every run directory.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serlive.model import ConfigError, ModelConfig
from serlive.model.config import build_dataclass, choice

PROTOCOLS = ("loso", "loso_session", "fixed", "all")
AUGMENTS = ("none", "noise", "volume", "reverb", "pitch", "mixed")
CLASSIFIER_FAMILIES = ("level", "white", "pink", "babble", "bursty", "reverb", "telephone", "clipping", "opus", "mp3")
SCL_REDUCTIONS = ("mean", "sum")
SELECT_ON = ("loss", "ua", "last")


@dataclass(frozen=True, slots=True)
class DataConfig:
    """A manifest CSV and how to read it. ``label_map`` maps raw labels to model labels; raw labels not
    in it are dropped (an empty map keeps the model's own labels only). Paths are relative to the
    manifest's folder; a relative ``manifest`` is relative to the config file."""

    manifest: str = ""
    path_column: str = "path"
    label_column: str = "emotion"
    speaker_column: str = "speaker"
    session_column: str = ""
    valence_column: str = ""
    arousal_column: str = ""
    label_map: dict = field(default_factory=dict)
    cache_dir: str = ""
    preload: bool = True


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """``loso``: speakers (shuffled by ``seed``) split into ``folds`` groups; fold i tests group i,
    validates on group i+1 and trains on the rest. ``loso_session``: the same over sessions.
    ``fixed``: one fold from the manifest's ``split`` column (train/val/test) or the speaker lists.
    ``all``: every speaker trains (a final model; validation and test are the training data)."""

    kind: str = "loso"
    folds: int = 0
    seed: int = 0
    max_folds: int = 0
    train_speakers: tuple = ()
    val_speakers: tuple = ()
    test_speakers: tuple = ()

    def __post_init__(self) -> None:
        choice("protocol.kind", self.kind, PROTOCOLS)
        if self.folds < 0 or self.folds == 1 or self.folds == 2:
            raise ConfigError("protocol.folds must be 0 (one per speaker/session) or at least 3")


@dataclass(frozen=True, slots=True)
class LossConfig:
    """``L = (1 - scl_lambda) * (ce * wCE + valence * MAE_v + arousal * MAE_a) + scl_lambda * SCL``.

    With ce=1 and no dimensions this is eq. 2 of the SCL paper; with ce/valence/arousal = 0.5/0.25/0.25
    and scl_lambda=0 it is eq. 7 of the SAP paper. ``scl_reduction="sum"`` sums eq. 1 over the 2N
    instances exactly as written; ``"mean"`` divides by 2N so the weight does not scale with batch size.
    ``consistency`` (with ``run.draws``) adds that weight times the mean cosine distance from each perturbed
    draw's embedding to the same utterance's clean one (the clean side without gradient): :mod:`.losses`."""

    ce: float = 1.0
    valence: float = 0.0
    arousal: float = 0.0
    scl_lambda: float = 0.1
    scl_temperature: float = 0.07
    scl_reduction: str = "mean"
    class_weights: bool = True
    consistency: float = 0.0

    def __post_init__(self) -> None:
        choice("loss.scl_reduction", self.scl_reduction, SCL_REDUCTIONS)
        if not 0.0 <= self.scl_lambda < 1.0:
            raise ConfigError("loss.scl_lambda must lie in [0, 1)")
        if self.scl_temperature <= 0:
            raise ConfigError("loss.scl_temperature must be positive")
        if min(self.ce, self.valence, self.arousal, self.consistency) < 0:
            raise ConfigError("loss.ce, loss.valence, loss.arousal and loss.consistency must not be negative")


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """The augmented view each utterance gets for SCL (only used when ``loss.scl_lambda > 0``), and with
    ``classifier`` the perturbations of the rows the classifier learns from (``augment.TrainAugment``):
    each training utterance is perturbed with probability ``classifier_p`` by up to ``classifier_chain`` of
    ``classifier_families``, then with ``classifier_codec_p`` coded (Opus/MP3 at the listed bitrates); its rooms
    are ``classifier_rooms`` simulated shoeboxes per RT60 of ``classifier_rt60_s``."""

    kind: str = "mixed"
    noise_snr_db: tuple = (10.0, 30.0)
    volume_db: tuple = (-6.0, 6.0)
    reverb_rt60_s: tuple = (0.2, 0.6)
    pitch_semitones: tuple = (-2.0, 2.0)
    classifier: bool = False
    classifier_p: float = 0.8
    classifier_chain: int = 2
    classifier_families: tuple = CLASSIFIER_FAMILIES
    classifier_snr_db: tuple = (3.0, 30.0)
    classifier_level_db: tuple = (-25.0, 10.0)
    classifier_rt60_s: tuple = (0.25, 0.4, 0.5, 0.7, 0.85)
    classifier_rooms: int = 2
    classifier_clip_percent: tuple = (1.0, 20.0)
    classifier_codec_p: float = 0.15
    classifier_opus_kbps: tuple = (8.0, 10.0, 20.0, 24.0)
    classifier_mp3_kbps: tuple = (24.0, 40.0, 48.0, 64.0)

    def __post_init__(self) -> None:
        choice("augment.kind", self.kind, AUGMENTS)
        for name in self.classifier_families:
            choice("augment.classifier_families item", name, CLASSIFIER_FAMILIES)
        if not (0.0 <= self.classifier_p <= 1.0 and 0.0 <= self.classifier_codec_p <= 1.0):
            raise ConfigError("augment.classifier_p and augment.classifier_codec_p must lie in [0, 1]")
        if self.classifier_chain < 1:
            raise ConfigError("augment.classifier_chain must be at least 1")
        if isinstance(self.classifier_rooms, bool) or not isinstance(self.classifier_rooms, int) or self.classifier_rooms < 1:
            raise ConfigError(f"augment.classifier_rooms must be a whole number of rooms per RT60, at least 1, not {self.classifier_rooms!r}")


@dataclass(frozen=True, slots=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, per optimiser step. The kept weights and early
    stopping (``patience`` epochs without improvement) follow ``select``: the validation loss, or the
    validation UA (ties broken by the loss) — the number reported, and less noisy on small corpora where
    the loss swings with a few confident mistakes; or ``"last"``: no selection and no early stopping, the
    weights after ``epochs`` (for a final model trained for the epoch count cross-validation found, when
    its validation set is too small to pick an epoch). ``ema`` > 0 keeps an exponential moving average of
    the weights (decay per optimiser step); validation, selection and the saved model then use it."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    epochs: int = 30
    batch_size: int = 32
    accumulate: int = 1
    patience: int = 5
    grad_clip: float = 5.0
    bucket_batches: int = 20
    select: str = "loss"
    ema: float = 0.0

    def __post_init__(self) -> None:
        choice("optim.select", self.select, SELECT_ON)
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ConfigError("optim.lr, optim.epochs, optim.batch_size and optim.accumulate must be positive")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("optim.warmup_ratio must lie in [0, 1)")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError("optim.ema must lie in [0, 1) (0: off)")
        if min(self.weight_decay, self.grad_clip) < 0 or self.patience < 1 or self.bucket_batches < 1:
            raise ConfigError("optim.weight_decay and optim.grad_clip must not be negative, optim.patience and "
                              "optim.bucket_batches must be at least 1")


@dataclass(frozen=True, slots=True)
class KnnSearchConfig:
    """The grid searched on validation UA: k in 1..k_max, alpha in (0, 1) on ``alpha_steps`` points."""

    tune: bool = True
    k_max: int = 32
    alpha_steps: int = 19
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.k_max < 1 or self.alpha_steps < 1 or self.temperature <= 0:
            raise ConfigError("knn.k_max, knn.alpha_steps and knn.temperature must be positive")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Where and how: ``device`` is resolved at the CLI edge ("auto" picks CUDA when present). Under
    torchrun, every process trains each fold together (DDP), or with ``spread_folds`` each process
    (one per GPU) trains its own folds: fold i on rank i mod WORLD_SIZE. ``draws`` > 0 (a frozen GE2E
    encoder with ``augment.classifier``): each utterance is perturbed that many times once, encoded once, and
    every epoch picks among those draws (:mod:`.draws`), instead of encoding fresh perturbations per batch.
    ``babble_groups``: the draws' babble is the own speaker (0) or others (N >= 1 groups of folds: :mod:`.draws`)."""

    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    bf16: bool = True
    grad_checkpointing: bool = False
    freeze_encoder: bool = False
    spread_folds: bool = False
    eval_batch_size: int = 32
    plots: bool = True
    draws: int = 0
    babble_groups: int = 0

    def __post_init__(self) -> None:
        if self.draws < 0 or self.babble_groups < 0:
            raise ConfigError("run.draws (0: perturb per batch) and run.babble_groups (0: own-speaker babble) must be "
                              "0 or more")
        if self.num_threads < 0 or self.eval_batch_size < 1:
            raise ConfigError("run.num_threads must be 0 (torch's default) or more, run.eval_batch_size at least 1")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    knn: KnnSearchConfig = field(default_factory=KnnSearchConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if self.protocol.kind == "all" and self.optim.select != "last":
            raise ConfigError('protocol.kind "all" trains on every speaker, so nothing is left to select an epoch '
                              'on: set optim.select = "last"')
        if self.loss.consistency > 0 and self.run.draws == 0:
            raise ConfigError("loss.consistency compares each perturbed draw with its clean utterance: set run.draws")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from serlive.model.checkpoint import write_json

        write_json(Path(path), self.to_dict())


SECTIONS = {
    "data": DataConfig, "protocol": ProtocolConfig, "loss": LossConfig, "augment": AugmentConfig,
    "optim": OptimConfig, "knn": KnnSearchConfig, "run": RunConfig,
}


def from_dict(table: dict) -> TrainConfig:
    """Build a :class:`TrainConfig` from nested tables; unknown sections or keys are a ConfigError."""
    unknown = sorted(set(table) - set(SECTIONS) - {"model"})
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)}")
    parts = {name: build_dataclass(klass, table.get(name, {}), name) for name, klass in SECTIONS.items()}
    parts["model"] = ModelConfig.from_dict(table.get("model", {}))
    return TrainConfig(**parts)


def load(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML file (or nothing), apply ``key.sub=value`` overrides, resolve the manifest path."""
    table: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            table = tomllib.loads(path.read_bytes().decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8 by definition
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    for item in overrides:
        apply_override(table, item)
    cfg = from_dict(table)
    manifest = cfg.data.manifest
    if manifest and path is not None and not Path(manifest).is_absolute() and not Path(manifest).exists():
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, manifest=str(path.parent / manifest)))
    return cfg


def load_json(path: Path) -> TrainConfig:
    """A run directory's ``train_config.json``, or :class:`ConfigError` naming the file."""
    return from_dict(read_json(path, "a training configuration"))


def read_json(path: Path, what: str) -> dict:
    """A JSON object written by ser-train (``what`` it should be, for the message), or :class:`ConfigError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, ValueError, RecursionError) as exc:  # json's and UTF-8's errors are ValueErrors
        raise ConfigError(f"{path} cannot be read as {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} cannot be read as {what}: it is not a JSON object")
    return data


def apply_override(table: dict, item: str) -> None:
    """``a.b.c=value``: value parsed as TOML (numbers, booleans, strings, arrays), else kept as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set needs key=value, not {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *heads, last = key.strip().split(".")
    node = table
    for head in heads:
        node = node.setdefault(head, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {head} is not a table")
    node[last] = value
