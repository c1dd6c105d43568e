"""The command line: clear one-sentence errors with exit code 2, and the headless file run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from serlive.model import ModelConfig, SERModel, save_model_dir
from serlive.stream import cli
from tests.test_stream_segmenter import islands

LAYOUT = [0.4, 0.9, 0.6, 1.1, 0.5, 0.5, 0.4]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("model"), SERModel(ModelConfig()).eval())


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory):
    """Stereo 44.1 kHz FLAC of three speech islands, and their true bounds in seconds."""
    import soxr

    audio, truth = islands(LAYOUT, seed=21)
    path = tmp_path_factory.mktemp("audio") / "speech.flac"
    resampled = soxr.resample(audio, 16_000, 44_100)
    sf.write(path, np.stack([resampled, 0.5 * resampled], 1), 44_100)
    return path, [(a / 16_000, b / 16_000) for a, b in truth]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.run(cli.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def headless(model_dir, *extra: str) -> list[str]:
    return ["--no-tui", "--model", str(model_dir), "--ws", "off", "--threads", "1", *extra]


def test_file_run_emits_one_final_per_island_and_exits_0(model_dir, speech_file):
    path, truth = speech_file
    proc = subprocess.run([sys.executable, "-m", "serlive.stream", *headless(model_dir, "--input", str(path),
                          "--fast", "--jsonl", "-")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    finals = [e for e in events if e["type"] == "prediction" and e["final"]]
    assert len(finals) == len(truth)
    for e, (start, end) in zip(finals, truth):
        assert abs(e["start_s"] - start) <= 0.1 and abs(e["end_s"] - end) <= 0.1
    assert events[-1]["type"] == "stats"
    assert [e["state"] for e in events if e["type"] == "stream"] == ["started", "ended"]


def test_stdin_input(model_dir, speech_file):
    path, truth = speech_file
    audio, sr = sf.read(path, dtype="float32")
    import soxr

    pcm = (soxr.resample(audio.mean(1), sr, 16_000) * 32767).astype("<i2").tobytes()
    proc = subprocess.run([sys.executable, "-m", "serlive.stream", *headless(model_dir, "--input", "-",
                          "--jsonl", "-")], input=pcm, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    finals = [e for e in map(json.loads, proc.stdout.splitlines()) if e["type"] == "prediction" and e["final"]]
    assert [e["stream"] for e in finals] == ["stdin"] * len(truth)


def test_text_output_when_headless_without_jsonl(model_dir, speech_file, capsys):
    code, out, _ = run_cli(headless(model_dir, "--input", str(speech_file[0]), "--fast"), capsys)
    assert code == 0
    assert out.count(" s  ") == 3 and "speech.flac: ended" in out


@pytest.mark.parametrize("argv, sentence", [
    (["--input", "/nonexistent/x.wav"], "input file /nonexistent/x.wav does not exist"),
    (["--device", "tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["--ws", "8765"], "--ws must be HOST:PORT or off"),
])
def test_bad_arguments_are_one_sentence_and_exit_2(argv, sentence, model_dir, capsys):
    code, out, err = run_cli(headless(model_dir, "--input", "none", *argv), capsys)
    assert code == 2 and err.startswith(f"ser-live: error: {sentence}")
    assert "Traceback" not in err and err.count("\n") == 1


def test_bad_and_empty_files(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF this is not audio")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16_000)
    code, _, err = run_cli(headless(model_dir, "--input", str(bad)), capsys)
    assert code == 2 and "is not audio that ser-live can read" in err and err.count("\n") == 1
    code, _, err = run_cli(headless(model_dir, "--input", str(empty)), capsys)
    assert code == 2 and "holds no audio" in err and err.count("\n") == 1


def test_bad_model_dir_and_missing_bundled_model(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["--no-tui", "--input", "none", "--model", str(tmp_path)], capsys)
    assert code == 2 and "is not a ser-live model directory" in err
    monkeypatch.setattr(cli, "bundled_model_dir", lambda: tmp_path / "absent")
    code, _, err = run_cli(["--no-tui", "--input", "none"], capsys)
    assert code == 2 and err.strip() == "ser-live: error: no --model given and the bundled model is not installed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_exit_2(model_dir):
    proc = subprocess.run([sys.executable, "-m", "serlive.stream", *headless(model_dir, "--input", "none",
                          "--device", "cuda")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("ser-live: error: --device cuda asks for CUDA, but torch sees no CUDA device "
                                   "on this machine (use --device cpu)")


def test_parse_args_and_wants_tui():
    args = cli.parse_args([])
    assert args.input == ["mic"] and args.ws == "127.0.0.1:8765" and args.command == "run"
    assert cli.wants_tui(cli.parse_args(["--connect", "ws://127.0.0.1:8765"]))
    assert not cli.wants_tui(cli.parse_args(["--no-tui"]))
    assert cli.parse_args(["bench", "--streams", "1,8"]).command == "bench"
    assert not cli.wants_tui(cli.parse_args(["bench"]))


@pytest.mark.gpu
def test_cuda_run_matches_cpu(model_dir, speech_file, capsys):
    path, truth = speech_file
    outs = {}
    for device in ("cpu", "cuda"):
        jsonl = path.parent / f"{device}.jsonl"
        code, _, _ = run_cli(headless(model_dir, "--input", str(path), "--fast", "--device", device,
                                      "--jsonl", str(jsonl)), capsys)
        assert code == 0
        outs[device] = [e for e in map(json.loads, jsonl.read_text().splitlines())
                        if e["type"] == "prediction" and e["final"]]
    assert len(outs["cuda"]) == len(truth)
    assert [e["label"] for e in outs["cuda"]] == [e["label"] for e in outs["cpu"]]


DEMO_SPEECH_S = [(0.60, 3.17), (4.87, 6.71), (8.41, 9.84), (11.54, 13.24)]
"""Speech spans of stream/demo/demo.flac, from its README."""


def _finals(out: str) -> list[dict]:
    return [e for e in map(json.loads, out.splitlines()) if e["type"] == "prediction" and e["final"]]


def test_demo_input_finds_the_four_utterances(model_dir, capsys):
    code, out, err = run_cli(headless(model_dir, "--input", "demo", "--fast", "--jsonl", "-"), capsys)
    assert code == 0, err
    finals = _finals(out)
    assert len(finals) == len(DEMO_SPEECH_S)
    for e, (start, end) in zip(finals, DEMO_SPEECH_S):
        assert abs(e["start_s"] - start) <= 0.15 and abs(e["end_s"] - end) <= 0.2


def test_default_input_falls_back_to_the_demo_without_a_microphone(model_dir, capsys, caplog, monkeypatch):
    from serlive.stream import mic
    from serlive.stream.sources import SourceError

    def no_mic(*_a, **_k):
        raise SourceError("no audio input device is available; use --input FILE or --input - instead")

    monkeypatch.setattr(mic, "MicSource", no_mic)
    code, out, err = run_cli(headless(model_dir, "--fast", "--jsonl", "-"), capsys)
    assert code == 0 and len(_finals(out)) == len(DEMO_SPEECH_S)
    assert "playing the bundled demo file instead" in caplog.text
    # Asked for explicitly, a missing microphone stays an error.
    code, _, err = run_cli(headless(model_dir, "--input", "mic", "--fast"), capsys)
    assert code == 2 and "no audio input device" in err
