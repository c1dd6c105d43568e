"""Training checkpoints (``fold_<i>/checkpoint.pt``), written after every epoch and read by ``--resume``.

A run directory may come from someone else, so a checkpoint is read with ``torch.load(weights_only=True)``:
tensors, numbers, strings, lists and dicts only; a file that holds any other Python object is refused
without running it. The previous epoch's checkpoint is kept beside the current one as
``checkpoint.prev.pt`` (a hard link, so keeping it copies nothing) until the fold finishes, so a damaged
``checkpoint.pt`` costs one epoch, not the fold.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch

from serlive.model import CheckpointError
from serlive.model.checkpoint import _first_line, atomic_write

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"
"""The checkpoint of the epoch before the current one; removed when the fold finishes."""

KEYS = ("model", "optimizer", "scheduler", "state", "best_state", "ema")
"""What a ser-train checkpoint holds (see :meth:`serlive.train.trainer.Trainer._save`)."""


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically to ``path``, keeping the checkpoint it replaces as :data:`PREVIOUS_FILE`."""
    path = Path(path)
    if path.is_file():
        _keep_previous(path, path.with_name(PREVIOUS_FILE))
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _keep_previous(path: Path, previous: Path) -> None:
    link = previous.with_name(f".{previous.name}.link")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)  # the atomic write then replaces only the current name
        os.replace(link, previous)
    except OSError as exc:  # a file system without hard links: keep no previous checkpoint
        log.debug("cannot keep %s as %s: %s", path, previous.name, exc)


def discard_previous(path: Path) -> None:
    """Remove the previous epoch's checkpoint (the fold is finished; it is no longer needed)."""
    Path(path).with_name(PREVIOUS_FILE).unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    """The payload of a ser-train checkpoint, or :class:`CheckpointError` with one sentence that names the
    file and says whether the previous epoch's checkpoint can be used instead."""
    path = Path(path)
    try:
        return _read(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {fallback_advice(path)}") from exc


def _read(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a ser-train checkpoint (it holds Python objects other than tensors "
                              f"and plain values, so it was not loaded)") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path} is damaged (truncated or corrupt: {_first_line(exc)})") from exc
    if not isinstance(payload, dict) or not set(KEYS) <= set(payload) or not isinstance(payload["state"], dict):
        raise CheckpointError(f"{path} is not a ser-train checkpoint (it lacks the model, optimiser and epoch state)")
    return payload


def fallback_advice(path: Path) -> str:
    """What to do about a checkpoint that cannot be used: the previous one when it reads, else start over."""
    previous = path.with_name(PREVIOUS_FILE)
    if previous.is_file():
        try:
            epoch = _read(previous)["state"].get("epoch")
        except CheckpointError:
            return f"the previous epoch's {previous.name} is damaged too: delete both to retrain this fold from the start"
        return (f"the previous epoch's checkpoint is intact (epoch {epoch}): move {previous} onto {path} and rerun "
                f"with --resume to continue from it, or delete {path.name} to retrain this fold from the start")
    return f"no earlier epoch's checkpoint is kept: delete {path} to retrain this fold from the start"

