"""``ser-train`` and the files people really hand it: a manifest saved by a spreadsheet (UTF-8 with a byte
order mark, CRLF line ends) is read like any other, and one bad audio file (empty, NaN samples) stops
``fit`` and ``probe`` with one sentence that names that file (real ``ser-train`` processes)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serlive.train import config
from serlive.train.data import read_manifest

from .test_train_fit import MANIFEST, TINY
from .test_train_inputs import ser_train
from .test_train_resume import error_line

DATA = MANIFEST.parent


def spreadsheet_copy(tmp_path: Path, encoding: str = "utf-8-sig", rows=None) -> Path:
    """The test manifest as a spreadsheet saves it: a BOM, CRLF line ends, absolute paths."""
    with open(MANIFEST, newline="", encoding="utf-8") as fh:
        original = list(csv.DictReader(fh))
    path = tmp_path / "from_excel.csv"
    with open(path, "w", newline="", encoding=encoding) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(original[0]), lineterminator="\r\n")
        writer.writeheader()
        for row in rows if rows is not None else original:
            writer.writerow(row | {"path": str(DATA / row["path"])})
    return path


def test_a_spreadsheet_manifest_with_bom_and_crlf_reads_like_the_original(tmp_path):
    path = spreadsheet_copy(tmp_path)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfpath,") and b"\r\n" in raw
    labels = config.load(None, TINY).model.labels
    got = read_manifest(path, labels, "ravdess")
    want = read_manifest(MANIFEST, labels, "ravdess")
    assert [(u.path, u.speaker, u.label, u.session) for u in got] == \
           [(u.path, u.speaker, u.label, u.session) for u in want]
    assert all(not u.speaker.endswith("\r") and u.path.is_file() for u in got)


def bad_wavs(tmp_path: Path) -> dict[str, Path]:
    empty, nan = tmp_path / "empty.wav", tmp_path / "has nan.wav"
    sf.write(empty, np.zeros(0, np.float32), 16_000, subtype="FLOAT")
    audio, rate = sf.read(DATA / "03-01-05-01-01-01-01.flac", dtype="float32")
    audio[rate: rate + 10] = np.nan
    sf.write(nan, audio, rate, subtype="FLOAT")
    return {"audio is empty": empty, "audio contains NaN or infinite samples": nan}


@pytest.mark.parametrize("problem", ["audio is empty", "audio contains NaN or infinite samples"])
def test_fit_names_the_bad_file(tmp_path, problem):
    bad = bad_wavs(tmp_path)[problem]
    with open(MANIFEST, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows[3] = rows[3] | {"path": str(bad)}
    manifest = spreadsheet_copy(tmp_path, rows=rows)
    proc = ser_train(tmp_path, tmp_path / "run", "--set", f"data.manifest='{manifest}'")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    line = error_line(err)
    assert str(bad) in line and problem in line, line


def test_probe_names_the_bad_file(tmp_path):
    for problem, bad in bad_wavs(tmp_path).items():
        good = DATA / "03-01-01-01-01-01-01.flac"
        proc = subprocess.run([sys.executable, "-m", "serlive.train.cli", "probe", str(good), str(bad)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stdout == ""
        line = error_line(proc.stderr)
        assert str(bad) in line and problem in line, line
