"""IEMOCAP and KEMDy19 loaders on small fake trees with the official layouts and file formats."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serlive.train import cli
from serlive.train.config import ProtocolConfig
from serlive.train.corpora import write_manifest
from serlive.train.data import read_manifest
from serlive.train.protocols import make_folds

LABELS = ("angry", "happy", "neutral", "sad")


def tiny_wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="PCM_16")


def fake_iemocap(root: Path) -> None:
    """Two sessions, one dialog each, in the release's folder layout and EmoEvaluation format."""
    lines = {
        "Ses01F_impro01": [("F000", "neu", "2.5000, 2.5000, 2.5000"), ("M000", "exc", "4.0000, 3.5000, 3.0000"),
                           ("F001", "fru", "2.0000, 3.5000, 3.5000"), ("M001", "ang", "1.5000, 4.0000, 4.0000")],
        "Ses02M_script01_1": [("F000", "sad", "1.5000, 2.0000, 2.5000"), ("M000", "hap", "4.5000, 3.0000, 3.0000"),
                              ("F001", "xxx", "3.0000, 3.0000, 3.0000")],
    }
    for dialog, utts in lines.items():
        session = f"Session{int(dialog[3:5])}"
        body = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i, (spk, emo, dims) in enumerate(utts):
            name = f"{dialog}_{spk}"
            body += [f"[{6.29 + i:.4f} - {8.23 + i:.4f}]\t{name}\t{emo}\t[{dims}]",
                     f"C-E1:\t{emo.title()};\t()", "A-E3:\tval 3; act 3; dom  3;\t()", ""]
            tiny_wav(root / session / "sentences" / "wav" / dialog / f"{name}.wav")
        ev = root / session / "dialog" / "EmoEvaluation"
        ev.mkdir(parents=True, exist_ok=True)
        (ev / f"{dialog}.txt").write_text("\n".join(body) + "\n")
        (ev / "Categorical").mkdir(exist_ok=True)
        (ev / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")


def test_iemocap_manifest_speakers_labels_and_dimensions(tmp_path):
    fake_iemocap(tmp_path / "IEMOCAP_full_release")
    out = tmp_path / "iemocap.csv"
    assert write_manifest("iemocap", tmp_path / "IEMOCAP_full_release", out) == 7
    rows = list(csv.DictReader(open(out)))
    assert {r["speaker"] for r in rows} == {"Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"}
    utts = read_manifest(out, LABELS, "iemocap", {"valence": "valence", "arousal": "arousal", "session": "session"})
    by_name = {u.path.stem: u for u in utts}
    assert set(by_name) == {"Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_M001",
                            "Ses02M_script01_1_F000", "Ses02M_script01_1_M000"}  # fru, xxx dropped
    assert LABELS[by_name["Ses01F_impro01_M000"].label] == "happy"  # exc merged into hap
    assert LABELS[by_name["Ses01F_impro01_M001"].label] == "angry"
    assert by_name["Ses01F_impro01_M000"].valence == 4.0 and by_name["Ses01F_impro01_M000"].arousal == 3.5
    assert by_name["Ses02M_script01_1_F000"].session == "Ses02" and by_name["Ses02M_script01_1_F000"].path.is_file()


def kemdy19_csv(path: Path, rows: list[tuple]) -> None:
    """A per-session annotation CSV as released: two header rows, then one row per segment."""
    head1 = ["Numb", "Wav", "", "ECG", "", "EDA", "", "TEMP", "", "Segment ID", "Total Evaluation", "", "",
             "Eval01", "", ""]
    head2 = ["", "start", "end", "start", "end", "start", "end", "start", "end", "", "Emotion", "Valence", "Arousal",
             "Emotion", "Valence", "Arousal"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head1)
        w.writerow(head2)
        for i, (seg, emo, val, aro) in enumerate(rows, 1):
            w.writerow([i, 1.0 * i, 2.0 * i, "", "", 1.0 * i, 2.0 * i, 1.0 * i, 2.0 * i, seg, emo, val, aro, emo, val, aro])


def fake_kemdy19(root: Path) -> None:
    sessions = {
        "01": [("Sess01_script01_M001", "neutral", 3.0, 3.2), ("Sess01_script01_F001", "angry", 1.4, 4.2),
               ("Sess01_impro01_F001", "neutral;happy", 3.5, 3.0), ("Sess01_impro01_M001", "surprise", 3.6, 4.0)],
        "02": [("Sess02_script01_F001", "happy", 4.4, 3.8), ("Sess02_script01_M001", "sad", 1.6, 2.0)],
    }
    for s, rows in sessions.items():
        for g in ("F", "M"):  # both per-participant files list the session's segments
            kemdy19_csv(root / "annotation" / f"Session{s}_{g}_res.csv", rows)
        for seg, *_ in rows:
            sess, kind, _last = seg.split("_")
            tiny_wav(root / "wav" / f"Session{s}" / f"{sess}_{kind}" / f"{seg}.wav")
            (root / "wav" / f"Session{s}" / f"{sess}_{kind}" / f"{seg}.txt").write_text("c/ 어 그래.\n", encoding="utf-8")


def test_kemdy19_manifest_dedups_drops_ties_and_sets_speakers(tmp_path):
    fake_kemdy19(tmp_path / "KEMDy19")
    out = tmp_path / "kemdy.csv"
    assert cli.main(["prepare", "kemdy19", str(tmp_path / "KEMDy19"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 5  # 6 segments, listed twice each, one tie dropped
    assert {r["speaker"] for r in rows} == {"Sess01_M", "Sess01_F", "Sess02_F", "Sess02_M"}
    utts = read_manifest(out, LABELS, "kemdy19", {"valence": "valence", "arousal": "arousal"})
    assert sorted(u.path.stem for u in utts) == ["Sess01_script01_F001", "Sess01_script01_M001",
                                                 "Sess02_script01_F001", "Sess02_script01_M001"]  # surprise dropped
    f001 = next(u for u in utts if u.path.stem == "Sess01_script01_F001")
    assert LABELS[f001.label] == "angry" and f001.valence == pytest.approx(1.4) and f001.arousal == pytest.approx(4.2)
    folds = make_folds(utts, ProtocolConfig(kind="loso"))
    assert len(folds) == 4


def test_prepare_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["prepare", "iemocap", str(tmp_path / "nope"), "--out", str(tmp_path / "m.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
