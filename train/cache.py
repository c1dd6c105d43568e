"""Speech masks cached on disk, so a second run over the same files does not run the VAD again.

One ``.npz`` per file, named by a hash of (absolute path, mtime, size, VAD mode, VAD frame, truncation):
editing a file, changing the VAD settings or the truncation gives a new key, never a stale mask.
The mask itself always comes from :func:`serlive.model.frames.speech_mask`, the function streaming uses.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from serlive.model import VadConfig, num_frames, speech_mask
from serlive.model.checkpoint import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Part of every key; bump when the mask's meaning changes."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ser-live" / "vad"


class MaskCache:
    """``get(path, waveform)`` returns the speech mask of ``waveform`` (the truncated file), from disk
    when present. ``hits``/``misses`` count lookups since construction."""

    def __init__(self, directory: str | Path | None, vad: VadConfig, max_samples: int) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.vad, self.max_samples = vad, max_samples
        self.hits = self.misses = 0

    def key(self, path: Path) -> str:
        st = Path(path).stat()
        text = f"{CACHE_VERSION}|{Path(path).resolve()}|{st.st_mtime_ns}|{st.st_size}|" \
               f"{self.vad.mode}|{self.vad.frame_ms}|{self.max_samples}"
        return hashlib.sha1(text.encode()).hexdigest()

    def get(self, path: Path, waveform: np.ndarray) -> np.ndarray:
        file = self.directory / f"{self.key(path)}.npz"
        if file.is_file():
            try:
                with np.load(file, allow_pickle=False) as data:
                    mask = data["mask"]
                if len(mask) == num_frames(len(waveform)):
                    self.hits += 1
                    return mask.astype(bool)
                log.warning("cached mask %s has the wrong length; recomputing", file)
            except (OSError, ValueError, KeyError):
                log.warning("unreadable cached mask %s; recomputing", file)
        self.misses += 1
        mask = speech_mask(waveform, self.vad.mode, self.vad.frame_ms)
        atomic_write(file, lambda tmp: _save(tmp, mask))
        return mask


def _save(tmp: str, mask: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, mask=mask)
