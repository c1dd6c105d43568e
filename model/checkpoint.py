"""The model directory: ``config.json`` + ``model.safetensors`` [+ ``knn.safetensors``] [+ ``metrics.json``].

``config.json`` holds everything that rebuilds the model with no download (for a Hugging Face encoder,
its full config dict), the library versions it was written with, and a format version. Every file is
written atomically (temp file + rename), so a killed writer never leaves a half file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig
from .knn import KnnDatastore
from .ser import SERModel

FORMAT = "ser-live-model"
FORMAT_VERSION = 2
"""Bumped when a directory written by this code could not be read by older code (2: the ``calibration``
table; version-1 directories load with its defaults)."""

CONFIG_FILE, WEIGHTS_FILE, KNN_FILE, METRICS_FILE = "config.json", "model.safetensors", "knn.safetensors", "metrics.json"


BUNDLED_MODEL = "ravdess-builtin"
"""The model directory shipped inside this package (see pretrained/ravdess-builtin/README.md)."""


def bundled_model_dir() -> Path:
    """Where the bundled default model is installed."""
    return Path(__file__).parent / "pretrained" / BUNDLED_MODEL


class CheckpointError(ValueError):
    """A model directory that is missing, truncated or incompatible; the message is one sentence."""


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("ser-live", "torch", "transformers", "numpy", "faiss-cpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; model directories are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def resolved_config(model: SERModel) -> ModelConfig:
    """The model's config with a Hugging Face encoder pinned to its full config dict (rebuilds offline)."""
    cfg = model.config
    if cfg.encoder.kind == "hf" and cfg.encoder.hf_config is None:
        cfg = cfg.replace(encoder=dataclasses.replace(cfg.encoder, hf_config=model.encoder.config_dict()))
    return cfg


def save_model_dir(
    directory: str | Path,
    model: SERModel,
    datastore: KnnDatastore | None = None,
    metrics: dict | None = None,
    config: ModelConfig | None = None,
) -> Path:
    """Write a model directory; ``config`` overrides the model's own (e.g. with tuned kNN k and alpha)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config or resolved_config(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    if datastore is not None:
        atomic_write(directory / KNN_FILE, lambda tmp: datastore.save(tmp))
    elif (directory / KNN_FILE).exists():
        (directory / KNN_FILE).unlink()
    if metrics is not None:
        write_json(directory / METRICS_FILE, metrics)
    # config.json last: a directory with a config is a complete one.
    write_json(directory / CONFIG_FILE, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": cfg.to_dict(), "versions": library_versions(),
    })
    return directory


def read_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a model directory, or :class:`CheckpointError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a ser-live model directory (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON (truncated?): {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ser-live model config")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer ser-live (format {data['format_version']}, this one reads {FORMAT_VERSION})"
        )
    try:
        return ModelConfig.from_dict(data["model"])
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"{path} has an incompatible model config: {exc}") from exc


def load_model_dir(directory: str | Path) -> tuple[SERModel, ModelConfig, KnnDatastore | None, dict | None]:
    """Rebuild the model (in eval mode, on the CPU) with its datastore and metrics from ``directory``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    try:
        model = SERModel(cfg)
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{weights} cannot be read (truncated or not matching its config): {_first_line(exc)}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match its config ({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    datastore = None
    if (directory / KNN_FILE).is_file():
        try:
            datastore = KnnDatastore.load(directory / KNN_FILE)
        except Exception as exc:  # noqa: BLE001 - any failure is a bad file
            raise CheckpointError(f"{directory / KNN_FILE} cannot be read: {_first_line(exc)}") from exc
        if datastore.dim != cfg.embed_dim or datastore.num_classes != len(cfg.labels):
            raise CheckpointError(f"{directory / KNN_FILE} does not match the model's embedding or label set")
    metrics = None
    if (directory / METRICS_FILE).is_file():
        try:
            metrics = json.loads((directory / METRICS_FILE).read_text())
        except json.JSONDecodeError:
            metrics = None
    return model.eval(), cfg, datastore, metrics


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
