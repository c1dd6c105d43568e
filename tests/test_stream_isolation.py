"""One bad input fails only itself: NaN/inf audio beside a clean stream, damaged and chatty files, stdin
misuse. Real files and real ``ser-live`` processes, with a tiny random model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from serlive.model import ModelConfig, Predictor, SERModel, save_model_dir
from serlive.stream.cli import demo_file
from serlive.stream.config import EngineConfig, InferenceConfig
from serlive.stream.events import Error, SegmentEnd
from serlive.stream.sources import ArraySource
from tests.test_stream_engine import finals, run_engine
from tests.test_stream_segmenter import islands

SR = 16_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("model"), SERModel(ModelConfig()).eval())


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Predictor(SERModel(ModelConfig()).eval())


def ser_live(model_dir, *args: str, **kw) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "serlive.stream", "--no-tui", "--model", str(model_dir), "--ws", "off",
            "--threads", "1", "--fast", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def jsonl_finals(text: str) -> list[dict]:
    return [e for e in map(json.loads, text.splitlines()) if e["type"] == "prediction" and e["final"]]


def poisoned(audio: np.ndarray, truth: list[tuple[int, int]]) -> np.ndarray:
    """NaN, +inf and -inf in the first speech island; the rest untouched."""
    bad = audio.copy()
    bad[truth[0][0] + 800: truth[0][0] + 900] = np.nan
    bad[truth[0][0] + 4000] = np.inf
    bad[truth[0][0] + 4001] = -np.inf
    return bad


def test_nan_segments_fail_alone_in_a_shared_batch(predictor):
    audio, truth = islands([0.3, 0.8, 0.5, 0.6, 0.4, 0.7, 0.4])
    config = EngineConfig(inference=InferenceConfig(max_batch=8, max_wait_ms=50))
    _, alone, _ = run_engine(predictor, [ArraySource("clean", audio)], config)
    engine, sink, code = run_engine(predictor, [ArraySource("bad", poisoned(audio, truth)),
                                                ArraySource("clean", audio)], config)
    assert code == 0
    ref = [(e.segment, e.start_sample, e.end_sample, e.label) for e in finals(alone)]
    assert [(e.segment, e.start_sample, e.end_sample, e.label) for e in finals(sink, "clean")] == ref
    # The bad stream: one bad_audio for the poisoned segment, its clean segments still predicted.
    (error,) = sink.of(Error)
    assert (error.code, error.stream) == ("bad_audio", "bad")
    assert "segment 0 of bad" in error.message and "NaN or infinite" in error.message
    kept = [e.segment for e in sink.of(SegmentEnd) if e.stream == "bad" and not e.dropped]
    assert [e.segment for e in finals(sink, "bad")] == kept[1:] and len(kept) >= 2
    assert all(np.isfinite(e.db) for e in sink.events if e.type == "level")


def test_nan_wav_beside_a_clean_file_keeps_every_clean_final(model_dir, tmp_path):
    audio, sr = sf.read(demo_file(), dtype="float32")
    bad = audio.copy()
    bad[sr: sr + 100] = np.nan  # inside the first utterance
    bad[5 * sr: 5 * sr + 50] = np.inf  # inside the second
    path = tmp_path / "nan.wav"
    sf.write(path, bad, sr, subtype="FLOAT")
    clean = ser_live(model_dir, "--input", "demo", "--jsonl", "-")
    both = ser_live(model_dir, "--input", str(path), "--input", "demo", "--jsonl", "-")
    assert both.returncode == 0, both.stderr
    ref = [(e["segment"], e["start_s"], e["end_s"], e["label"]) for e in jsonl_finals(clean.stdout)]
    got = jsonl_finals(both.stdout)
    assert [(e["segment"], e["start_s"], e["end_s"], e["label"]) for e in got if e["stream"] == "demo.flac"] == ref
    assert [e["segment"] for e in got if e["stream"] == "nan.wav"] == [2, 3]
    errors = [e for e in map(json.loads, both.stdout.splitlines()) if e["type"] == "error"]
    assert [(e["code"], e["stream"]) for e in errors] == [("bad_audio", "nan.wav")] * 2
    assert "Traceback" not in both.stderr
    assert both.stderr.splitlines() == [
        f"ser-live: segment {i} of nan.wav was not predicted: audio contains NaN or infinite samples" for i in (0, 1)]


def test_truncated_flac_keeps_what_was_decoded_and_exits_1(model_dir, tmp_path):
    raw = demo_file().read_bytes()
    path = tmp_path / "cut.flac"
    path.write_bytes(raw[: len(raw) // 2])
    whole = jsonl_finals(ser_live(model_dir, "--input", "demo", "--jsonl", "-").stdout)
    proc = ser_live(model_dir, "--input", str(path), "--jsonl", "-")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("ser-live: input file cut.flac is damaged: decoding stopped after ")
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    got = jsonl_finals(proc.stdout)
    stopped_s = float(line.split("after ")[1].split(" s")[0])
    kept = [e for e in whole if e["end_s"] < stopped_s - 0.5]  # utterances wholly before the damage
    assert len(kept) >= 1 and [(e["segment"], e["label"]) for e in got[:len(kept)]] == \
           [(e["segment"], e["label"]) for e in kept]
    assert events[-2]["type"] == "stream" and events[-2]["state"] == "ended" and "damaged" in events[-2]["detail"]


def test_mp3_input_keeps_decoder_chatter_off_stderr(model_dir, tmp_path):
    audio, sr = sf.read(demo_file(), dtype="float32")
    path = tmp_path / "demo.mp3"
    sf.write(path, audio, sr, format="MP3")
    proc = ser_live(model_dir, "--input", str(path), "--jsonl", "-")
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(jsonl_finals(proc.stdout)) == 4


def test_stdin_closed_is_one_sentence(model_dir):
    proc = ser_live(model_dir, "--input", "-", stdin=None, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 2
    assert proc.stderr == "ser-live: error: --input - reads audio from stdin, but stdin is closed\n"


def test_stdin_twice_is_refused(model_dir):
    proc = ser_live(model_dir, "--input", "-", "--input", "-", stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr == "ser-live: error: --input - (stdin) can be given only once: one stdin cannot feed two streams\n"
