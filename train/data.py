"""Manifest CSV -> labelled utterances; audio loading (soundfile + soxr to 16 kHz) and truncation.

A manifest has one row per utterance with at least a path (relative to the manifest's folder), a
speaker and a raw label; optional session, valence and arousal columns. Raw labels go through a label
map onto the model's classes; unmapped labels are dropped (RAVDESS's fearful, disgust, surprised).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serlive.model import AudioError, ConfigError, SAMPLE_RATE_HZ, to_mono_16k

log = logging.getLogger(__name__)

LABEL_MAPS = {
    "ravdess": {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    "iemocap": {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry",
                "neutral": "neutral", "happy": "happy", "excited": "happy", "angry": "angry"},
    "kemdy19": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
}
"""Named label maps (raw label -> one of angry/happy/neutral/sad); anything else is dropped."""


class DataError(ValueError):
    """A manifest or audio file that cannot be used; the message is one sentence."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """One labelled utterance. ``valence``/``arousal`` are NaN where the corpus has none."""

    path: Path
    speaker: str
    session: str
    label: int
    raw_label: str
    valence: float = math.nan
    arousal: float = math.nan
    split: str = ""


def parse_label_map(spec) -> dict[str, str]:
    """A dict, a preset name (``ravdess``, ``iemocap``, ``kemdy19``) or ``"raw=class,raw=class"``."""
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    if spec in LABEL_MAPS:
        return dict(LABEL_MAPS[spec])
    pairs = [p.split("=", 1) for p in str(spec).split(",") if p.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ConfigError(f"label map must be one of {', '.join(LABEL_MAPS)} or raw=class pairs, not {spec!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def resolve_label_map(spec, labels: tuple[str, ...]) -> dict[str, int]:
    """Raw label -> class index; an empty spec maps each model label onto itself."""
    mapping = parse_label_map(spec) if spec else {name: name for name in labels}
    bad = sorted({v for v in mapping.values() if v not in labels})
    if bad:
        raise ConfigError(f"label map targets {', '.join(bad)} are not model labels ({', '.join(labels)})")
    return {raw: labels.index(target) for raw, target in mapping.items()}


def read_manifest(path: str | Path, labels: tuple[str, ...], label_map=None, columns: dict | None = None) -> list[Utterance]:
    """Labelled utterances of a manifest CSV. ``columns`` overrides the names of path/label/speaker/
    session/valence/arousal/split columns (keys of :func:`default_columns`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    cols = default_columns() | {k: v for k, v in (columns or {}).items() if v}
    mapping = resolve_label_map(label_map, labels)
    header, rows = read_csv(path)
    for role in ("path", "label", "speaker"):
        if cols[role] not in header:
            raise DataError(f"manifest {path} has no {cols[role]!r} column (columns: {', '.join(header)})")
    for role in ("session", "valence", "arousal"):
        if (columns or {}).get(role) and cols[role] not in header:
            raise DataError(f"manifest {path} has no {cols[role]!r} column (columns: {', '.join(header)})")
    required = [cols[role] for role in ("path", "label", "speaker")]
    out, dropped = [], 0
    for n, row in enumerate(rows, start=1):
        if any(row.get(c) is None for c in required):
            raise DataError(f"manifest {path} row {n} has fewer fields than its header (an unclosed quote?)")
        raw = row[cols["label"]].strip()
        if raw not in mapping:
            dropped += 1
            continue
        out.append(_utterance(row, cols, path.parent, mapping[raw], raw))
    log.info("manifest %s: %d utterances kept, %d dropped by the label map", path, len(out), dropped)
    if not out:
        raise DataError(f"manifest {path} has no utterance whose label is in the label map")
    return out


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of a UTF-8 CSV file, or :class:`DataError` with one sentence. What spreadsheets
    save is read too: a byte order mark (``utf-8-sig``; it would otherwise stick to the first column's
    name), CRLF line ends (the csv module's ``newline=""``) and spaces around column names."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames:
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            return list(reader.fieldnames or []), list(reader)
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(f"manifest {path} is not a readable CSV file: {exc}") from exc


def default_columns() -> dict[str, str]:
    return {"path": "path", "label": "emotion", "speaker": "speaker", "session": "session",
            "valence": "valence", "arousal": "arousal", "split": "split"}


def columns_of(cfg) -> dict[str, str]:
    """The column names of a :class:`~serlive.train.config.DataConfig`."""
    return {"path": cfg.path_column, "label": cfg.label_column, "speaker": cfg.speaker_column,
            "session": cfg.session_column, "valence": cfg.valence_column, "arousal": cfg.arousal_column}


def _utterance(row: dict, cols: dict, root: Path, label: int, raw: str) -> Utterance:
    speaker = row[cols["speaker"]].strip()
    return Utterance(
        path=(root / row[cols["path"]].strip()).resolve(), speaker=speaker,
        session=(row.get(cols["session"]) or speaker).strip(), label=label, raw_label=raw,
        valence=_float(row.get(cols["valence"])), arousal=_float(row.get(cols["arousal"])),
        split=(row.get(cols["split"]) or "").strip().lower(),
    )


def _float(value) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def load_audio(path: Path, max_samples: int) -> np.ndarray:
    """16 kHz mono float32 waveform of a file, truncated to ``max_samples``; :class:`DataError` naming the
    file when it cannot be read or used (empty, NaN samples, too short): one file among thousands."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, OSError, sf.LibsndfileError) as exc:
        raise DataError(f"cannot read audio file {path}: {exc}") from exc
    try:
        return to_mono_16k(audio, int(rate))[:max_samples]
    except AudioError as exc:
        raise DataError(f"audio file {path} cannot be used: {exc}") from exc


def max_samples_of(max_duration_s: float) -> int:
    return int(max_duration_s * SAMPLE_RATE_HZ)
