"""Simulated rooms for reverberation: a small bank of room impulse responses per RT60, cached on disk.

The responses come from ``pyroomacoustics`` (MIT): a shoebox room, the image-source method, wall absorption
from Sabine's formula for the target RT60. Two things are added here:

* Sabine's formula over-estimates how much absorption a shoebox needs for a long RT60 (measured T30 of the
  image-source response: 1.23 s for a 1.0 s target in a 6 x 4.5 x 3 m room), so each room is simulated once
  more with the target scaled by target / measured; that lands within a few percent (``calibrate=True``).
* Simulation is slow (about 10 s for a 1.0 s room with the correction, 0.2 s for 0.3 s), so a bank is
  simulated once and kept in ``$XDG_CACHE_HOME/ser-live/rirs/<key>.npz``; the key hashes the room list,
  so another list (the training bank) is another file. Rooms are drawn from a seeded Generator, so a bank
  is the same on every machine.

Each response is cut to start at its direct path (the sound reaches the microphone at t = 0, so speech
masks stay aligned) and scaled to unit energy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serlive.model import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Room:
    """A shoebox: size (m), source and microphone positions (m), target RT60 (s)."""

    rt60_s: float
    size_m: tuple
    source_m: tuple
    mic_m: tuple


def draw_rooms(rt60s_s: tuple, per_rt60: int, seed: int) -> list[Room]:
    """``per_rt60`` rooms for each RT60: sizes from 3 x 3 x 2.4 m (a small office) to 8 x 6 x 3.5 m,
    source and microphone at least 0.5 m from the walls and 0.7 m apart."""
    rng = np.random.default_rng(seed)
    rooms = []
    for rt60 in rt60s_s:
        for _ in range(per_rt60):
            size = rng.uniform((3.0, 3.0, 2.4), (8.0, 6.0, 3.5))
            while True:
                src, mic = (rng.uniform((0.5, 0.5, 1.0), size - (0.5, 0.5, 0.8)) for _ in range(2))
                if np.linalg.norm(src - mic) >= 0.7:
                    break
            rooms.append(Room(float(rt60), *(tuple(np.round(v, 3).tolist()) for v in (size, src, mic))))
    return rooms


def simulate(room: Room, calibrate: bool = True) -> np.ndarray:
    """The impulse response of ``room`` (direct path at sample 0, unit energy), float32."""
    rir = _simulate(room, room.rt60_s)
    if calibrate:
        measured = measure_rt60_s(rir)
        if measured > 0:
            rir = _simulate(room, room.rt60_s * room.rt60_s / measured)
    start = max(int(np.argmax(np.abs(rir))) - 8, 0)
    rir = rir[start:]
    return (rir / np.sqrt(np.sum(rir ** 2))).astype(np.float32)


def _simulate(room: Room, target_s: float) -> np.ndarray:
    import pyroomacoustics as pra

    absorption, max_order = pra.inverse_sabine(target_s, list(room.size_m))
    shoebox = pra.ShoeBox(list(room.size_m), fs=SAMPLE_RATE_HZ, materials=pra.Material(absorption),
                          max_order=max_order)
    shoebox.add_source(list(room.source_m))
    shoebox.add_microphone(list(room.mic_m))
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], np.float64)


def measure_rt60_s(rir: np.ndarray, decay_db: float = 30.0) -> float:
    """RT60 from Schroeder's backward integration: the time the energy decay curve takes from -5 dB to
    -(5 + ``decay_db``) dB, scaled to 60 dB (T30 by default)."""
    energy = np.cumsum(np.asarray(rir, np.float64)[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(energy / energy[0] + 1e-30)
    start = int(np.argmax(edc_db <= -5.0))
    stop = int(np.argmax(edc_db <= -5.0 - decay_db))
    if stop <= start:
        return 0.0
    return (stop - start) / SAMPLE_RATE_HZ * 60.0 / decay_db


class RirBank:
    """Impulse responses of ``rooms``, grouped by RT60; simulated once and cached (see the module)."""

    def __init__(self, rooms: list[Room], cache_dir: str | Path | None = None) -> None:
        self.rooms = rooms
        self.cache_path = cache_file(rooms, Path(cache_dir) if cache_dir else default_cache_dir())
        self.rirs = _load_or_simulate(rooms, self.cache_path)
        self.rt60s_s = sorted({r.rt60_s for r in rooms})

    def draw(self, rng: np.random.Generator, rt60_s: float | None = None) -> np.ndarray:
        """A response of the given RT60 (the nearest in the bank), or of any room when None."""
        if rt60_s is None:
            return self.rirs[int(rng.integers(len(self.rirs)))]
        nearest = min(self.rt60s_s, key=lambda r: abs(r - rt60_s))
        pick = [i for i, r in enumerate(self.rooms) if r.rt60_s == nearest]
        return self.rirs[pick[int(rng.integers(len(pick)))]]


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ser-live" / "rirs"


def cache_file(rooms: list[Room], cache_dir: Path) -> Path:
    key = hashlib.sha1(json.dumps([asdict(r) for r in rooms] + [SAMPLE_RATE_HZ, "v1"]).encode()).hexdigest()[:16]
    return cache_dir / f"{key}.npz"


def _load_or_simulate(rooms: list[Room], path: Path) -> list[np.ndarray]:
    if path.is_file():
        with np.load(path) as npz:
            return [npz[f"r{i}"] for i in range(len(rooms))]
    log.info("simulating %d room impulse responses (once; cached in %s)", len(rooms), path)
    rirs = [simulate(r) for r in rooms]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **{f"r{i}": r for i, r in enumerate(rirs)})
    os.replace(tmp, path)
    return rirs


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``rir`` (direct path at 0), cut to ``len(x)`` and scaled back to the input's
    RMS: the room changes, the level does not (the level family does that)."""
    from scipy.signal import fftconvolve

    y = fftconvolve(x, rir)[: len(x)]
    gain = np.sqrt((np.mean(x.astype(np.float64) ** 2) + 1e-20) / (np.mean(y ** 2) + 1e-20))
    return (y * gain).astype(np.float32)
