"""Manifests for corpora in their official layouts: IEMOCAP and KEMDy19 (``ser-train prepare``).

IEMOCAP (release layout)::

    Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    Session1/dialog/EmoEvaluation/Ses01F_impro01.txt

Each EmoEvaluation ``*.txt`` (not its sub-folders) holds one line per utterance,
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`` with
[valence, activation, dominance] on 1-5. The speaker is the session plus the gender letter of the
utterance id's last group (``F000`` -> F: ``Ses01_F``), so ten speakers. Raw labels are kept; the
``iemocap`` label map merges exc into happy and drops everything but neu/hap/exc/sad/ang.

KEMDy19 (ETRI release layout)::

    annotation/Session01_F_res.csv, annotation/Session01_M_res.csv, ...
    wav/Session01/Sess01_script01/Sess01_script01_M001.wav (+ .txt transcripts)

The annotation CSVs have two header rows: the first names column groups (``Numb, Wav, , ECG, , EDA, ,
TEMP, , Segment ID, Total Evaluation, , , Eval01, ...``), the second their parts (``start, end, ...,
Emotion, Valence, Arousal``). The three columns from ``Total Evaluation`` on are the majority emotion
and the mean valence / arousal (1-5). Assumptions: both per-session files (F and M) list the same
segments, so rows are de-duplicated by Segment ID; an emotion with ';' (a tie, e.g. ``neutral;happy``)
is ambiguous and dropped; the speaker is the session plus the gender letter of the segment id's last
group (``M001`` -> ``Sess01_M``), forty speakers; a segment whose wav file is missing is skipped.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

from .data import DataError

log = logging.getLogger(__name__)

IEMOCAP_LINE = re.compile(
    r"^\[(?P<start>[\d.]+) - (?P<end>[\d.]+)\]\t(?P<utt>\S+)\t(?P<emo>\S+)\t\[(?P<dims>[^\]]*)\]"
)
"""One utterance line of an IEMOCAP EmoEvaluation file."""

FIELDS = ("path", "speaker", "session", "emotion", "valence", "arousal", "gender")


def iemocap_rows(root: Path) -> list[dict]:
    root = Path(root)
    rows = []
    for txt in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        session = txt.parents[2].name  # Session1
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            m = IEMOCAP_LINE.match(line)
            if not m:
                continue
            utt = m["utt"]
            dialog = utt.rsplit("_", 1)[0]
            wav = root / session / "sentences" / "wav" / dialog / f"{utt}.wav"
            if not wav.is_file():
                log.warning("IEMOCAP: %s listed in %s has no wav file; skipped", utt, txt.name)
                continue
            valence, activation, _ = (float(x) for x in m["dims"].split(","))
            gender = utt.rsplit("_", 1)[1][0]
            rows.append({"path": wav, "speaker": f"{utt[:5]}_{gender}", "session": utt[:5], "emotion": m["emo"],
                         "valence": valence, "arousal": activation, "gender": gender})
    return rows


def kemdy19_rows(root: Path) -> list[dict]:
    root = Path(root)
    rows, seen = [], set()
    for ann in sorted((root / "annotation").glob("Session*_*.csv")):
        for seg, emo, val, aro in _kemdy19_annotations(ann):
            if seg in seen:
                continue
            seen.add(seg)
            if ";" in emo:
                continue
            sess, dialog_kind, last = seg.split("_")  # Sess01, script01, M001
            wav = root / "wav" / f"Session{sess[4:]}" / f"{sess}_{dialog_kind}" / f"{seg}.wav"
            if not wav.is_file():
                log.warning("KEMDy19: %s listed in %s has no wav file; skipped", seg, ann.name)
                continue
            rows.append({"path": wav, "speaker": f"{sess}_{last[0]}", "session": sess, "emotion": emo.strip(),
                         "valence": val, "arousal": aro, "gender": last[0]})
    return rows


def _kemdy19_annotations(path: Path):
    """(segment id, emotion, valence, arousal) of each row of one annotation CSV."""
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    header = next(reader, [])
    try:
        seg_col, emo_col = header.index("Segment ID"), header.index("Total Evaluation")
    except ValueError as exc:
        raise DataError(f"{path} has no 'Segment ID' / 'Total Evaluation' columns") from exc
    for row in reader:
        if len(row) <= emo_col + 2 or not row[seg_col].strip() or row[emo_col].strip() == "Emotion":
            continue
        yield row[seg_col].strip(), row[emo_col].strip(), _num(row[emo_col + 1]), _num(row[emo_col + 2])


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "cp949"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


def _num(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return ""


READERS = {"iemocap": iemocap_rows, "kemdy19": kemdy19_rows}


def write_manifest(corpus: str, root: str | Path, out: str | Path) -> int:
    """Write the manifest of ``corpus`` at ``root`` to ``out`` (paths relative to its folder)."""
    root, out = Path(root).resolve(), Path(out)
    if not root.is_dir():
        raise DataError(f"corpus folder {root} does not exist")
    rows = READERS[corpus](root)
    if not rows:
        raise DataError(f"no labelled {corpus} utterances found under {root}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(r | {"path": os.path.relpath(r["path"], out.parent.resolve())})
    log.info("%s: %d utterances written to %s", corpus, len(rows), out)
    return len(rows)
