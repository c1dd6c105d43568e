"""``ser-train probe`` with the bundled model: unseen-condition speech gets a graded answer, and inputs with
no voice in them (noise alone, silence, a tone chord, synthetic speech) are flagged and never confident."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serlive.train import cli, probe

FILES = sorted(str(p) for p in (Path(__file__).parent / "data" / "ravdess").glob("*.flac"))[::3]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # the room is simulated, not read from ~
    out = {r["input"]: r for r in probe.run(None, FILES)}
    mp.undo()
    return out


def test_nothing_without_a_voice_comes_out_confident(rows):
    for name in ("white and pink noise", "silence", "two-tone chord (220 + 330 Hz)"):
        assert rows[name]["uncertain"] == 1.0 and rows[name]["max_top"] < 0.7, rows[name]
    espeak = rows["espeak-ng speech (en, de, fr)"]
    if shutil.which("espeak-ng"):
        assert espeak["n"] == 3 and espeak["max_top"] < 0.8 and espeak["uncertain"] >= 2 / 3, espeak
    else:
        assert espeak["n"] == 0 and "not installed" in espeak["note"]


def test_speech_is_mostly_trusted_and_noise_lowers_the_confidence_without_silencing_it(rows):
    clean = rows["speech as recorded"]
    assert clean["n"] == len(FILES) and clean["uncertain"] <= 0.2
    for name in probe.CONDITIONS:
        row = rows[f"the same, {name}"]
        assert row["n"] == len(FILES) and row["mean_top"] <= clean["mean_top"] + 0.02, row
        assert row["uncertain"] < 1.0, row  # graded: not a flag on every degraded utterance


def test_cli_prints_the_table_and_refuses_a_single_file(capsys):
    assert cli.main(["probe", FILES[0]]) == 2
    assert capsys.readouterr().err.count("\n") == 1
