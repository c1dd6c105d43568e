"""The model directory: ``config.json`` + ``model.safetensors`` [+ ``knn.safetensors``] [+ ``metrics.json``].

``config.json`` holds everything that rebuilds the model with no download (for a Hugging Face encoder,
its full config dict), the library versions it was written with, and a format version. Every file is
written atomically (temp file + rename), so a killed writer never leaves a half file behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, ModelConfig
from .knn import KnnDatastore
from .ser import SERModel

log = logging.getLogger(__name__)

FORMAT = "ser-live-model"
FORMAT_VERSION = 4
"""Bumped when a directory written by this code could not be read by older code (2: the ``calibration``
table, 3: its shift-aware temperature, speech limit and voicing keys, 4: the short-input temperature; older
directories load with the defaults of what they lack)."""

CONFIG_FILE, WEIGHTS_FILE, KNN_FILE, METRICS_FILE = "config.json", "model.safetensors", "knn.safetensors", "metrics.json"

MAX_JSON_BYTES = 16 * 2**20
"""config.json and metrics.json are a few kilobytes; a larger file is not read (a model directory is untrusted)."""


BUNDLED_MODEL = "ravdess-ge2e"
"""The model directory shipped inside this package (see pretrained/ravdess-ge2e/README.md)."""


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
        what = ("is not a directory" if directory.exists() else
                "is a broken or looping symbolic link" if directory.is_symlink() else "does not exist")
        raise CheckpointError(f"model directory {directory} {what}")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a ser-live model directory (no {CONFIG_FILE})")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ser-live model config")
    version = data.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} has format_version {version!r}; it must be an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer ser-live (format {data['format_version']}, this one reads {FORMAT_VERSION})"
        )
    try:
        return ModelConfig.from_dict(data["model"])
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"{path} has an incompatible model config: {exc}") from exc


def read_json(path: Path):
    """A small JSON file of a model directory, or :class:`CheckpointError` with one sentence."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES // 2**20} MiB; it is not read")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON (truncated, or not UTF-8?): {getattr(exc, 'msg', None) or exc}") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{path} is nested too deeply to be a ser-live model file") from exc
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from exc


def load_model_dir(directory: str | Path) -> tuple[SERModel, ModelConfig, KnnDatastore | None, dict | None]:
    """Rebuild the model (in eval mode, on the CPU) with its datastore and metrics from ``directory``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    check_shapes(weights, cfg)  # before anything is allocated: a config.json may ask for any size
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
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{weights} holds NaN or infinite weights ({bad}); the model cannot predict")
    datastore = load_datastore(directory / KNN_FILE, cfg) if (directory / KNN_FILE).is_file() else None
    return model.eval(), cfg, datastore, read_metrics(directory / METRICS_FILE)


def check_shapes(weights: Path, cfg: ModelConfig) -> None:
    """Compare the tensor names and shapes in the safetensors header with the model ``cfg`` builds on the
    meta device (no memory), so a config that asks for a huge model fails before it is built."""
    from safetensors import SafetensorError, safe_open

    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in SERModel(cfg).state_dict().items()}
        with safe_open(str(weights), framework="pt") as fh:
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} cannot be read (truncated?): {_first_line(exc)}") from exc
    except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise CheckpointError(f"{weights.parent / CONFIG_FILE} describes a model this ser-live cannot build: "
                              f"{_first_line(exc, 160)}") from exc
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match its config ({len(missing)} missing, {len(unexpected)} "
                              f"unexpected tensors, e.g. {(missing or unexpected)[0]})")
    wrong = next((k for k in expected if expected[k] != found[k]), None)
    if wrong is not None:
        raise CheckpointError(f"{weights} does not match its config: {wrong} is {list(found[wrong])}, "
                              f"the config needs {list(expected[wrong])}")


def load_datastore(path: Path, cfg: ModelConfig) -> KnnDatastore:
    """The kNN datastore of a model directory, checked against the model's embedding, labels and kNN k."""
    try:
        datastore = KnnDatastore.load(path)
    except Exception as exc:  # noqa: BLE001 - any failure is a bad file
        raise CheckpointError(f"{path} cannot be read: {_first_line(exc)}") from exc
    if datastore.dim != cfg.embed_dim or datastore.num_classes != len(cfg.labels):
        raise CheckpointError(f"{path} does not match the model's embedding or label set")
    if not np.isfinite(datastore.keys).all():
        raise CheckpointError(f"{path} holds NaN or infinite keys")
    if cfg.knn.k > len(datastore):
        raise CheckpointError(f"knn.k is {cfg.knn.k} but {path} holds only {len(datastore)} keys")
    return datastore


def read_metrics(path: Path) -> dict | None:
    """metrics.json, which is optional: one that cannot be read is a warning, not a reason to refuse the model."""
    if not path.is_file():
        return None
    try:
        metrics = read_json(path)
    except CheckpointError as exc:
        log.warning("%s; the model's metrics are not shown", exc)
        return None
    if not isinstance(metrics, dict):
        log.warning("%s is not a JSON object; the model's metrics are not shown", path)
        return None
    return metrics


def _first_line(exc: BaseException, max_chars: int = 400) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"
