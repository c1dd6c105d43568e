"""Signals sent to real ``ser-live`` processes: SIGINT, SIGTERM and SIGHUP drain (every closed segment's
final, ``ended`` for every stream, JSONL flushed) within ``--drain-s``; what the grace period could not
cover is counted; a second signal exits at once; Ctrl-C on a blocked stdin or during start-up is one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from serlive.model import ModelConfig, SERModel, save_model_dir

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("model"), SERModel(ModelConfig()).eval())


def start_argv(model_dir, jsonl: Path, *args: str, model: bool = True) -> list[str]:
    return [sys.executable, "-m", "serlive.stream", "--no-tui", "--ws", "off", "--threads", "1",
            "--jsonl", str(jsonl), *(["--model", str(model_dir)] if model else []), *args]


def start(model_dir, jsonl: Path, *args: str, model: bool = True) -> subprocess.Popen:
    argv = start_argv(model_dir, jsonl, *args, model=model)
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(jsonl: Path) -> list[dict]:
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.endswith("}")]


def wait_for(jsonl: Path, proc: subprocess.Popen, test) -> list[dict]:
    """Poll the JSONL the process writes until ``test(events)`` holds (the process must still run)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        got = events(jsonl)
        if test(got):
            return got
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the engine")


def has_final(evs: list[dict]) -> bool:
    return any(e["type"] == "prediction" and e["final"] for e in evs)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, err


def owed_finals_all_present(evs: list[dict]) -> bool:
    kept = {(e["stream"], e["segment"]) for e in evs if e["type"] == "segment_end" and not e["dropped"]}
    done = {(e["stream"], e["segment"]) for e in evs if e["type"] == "prediction" and e["final"]}
    return kept == done


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGHUP, 0)])
def test_a_signal_drains_every_final_and_ends_every_stream(model_dir, tmp_path, sig, code):
    jsonl = tmp_path / "out.jsonl"
    proc = start(model_dir, jsonl, "--input", "demo", "--input", "demo")
    before = wait_for(jsonl, proc, has_final)
    proc.send_signal(sig)
    rc, err = finish(proc)
    assert rc == code and err == ""
    evs = events(jsonl)
    assert evs[:len(before)] == before  # what was written before is intact
    ended = [e for e in evs if e["type"] == "stream" and e["state"] == "ended"]
    assert sorted(e["stream"] for e in ended) == ["demo.flac", "demo.flac#2"]
    assert all(e["reason"] == "shutdown" for e in ended)
    assert owed_finals_all_present(evs)
    for e in ended:  # each stream's finals come before its end
        last_final = max(i for i, x in enumerate(evs) if x["type"] == "prediction" and x["stream"] == e["stream"])
        assert evs.index(e) > last_final
    assert evs[-1]["type"] == "stats"


def in_speech_with_interim(evs: list[dict]) -> bool:
    closed = {e["segment"] for e in evs if e["type"] == "segment_end"}
    return any(e["type"] == "prediction" and not e["final"] and e["segment"] not in closed for e in evs)


def test_drain_timeout_counts_what_was_not_predicted(model_dir, tmp_path):
    jsonl = tmp_path / "out.jsonl"
    proc = start(model_dir, jsonl, "--input", "demo", "--drain-s", "0")
    wait_for(jsonl, proc, in_speech_with_interim)  # a kept segment is open: closing it owes a final
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 1
    assert err == "ser-live: 1 segment not predicted: the 0 s grace period for stopping ran out\n"
    evs = events(jsonl)
    (error,) = [e for e in evs if e["type"] == "error"]
    assert error["code"] == "drain_timeout" and error["message"].startswith("1 segment not predicted")
    kept = [e for e in evs if e["type"] == "segment_end" and not e["dropped"]]
    finals = [e for e in evs if e["type"] == "prediction" and e["final"]]
    assert len(kept) == len(finals) + 1  # the one counted, none silently lost
    assert [e["reason"] for e in evs if e["type"] == "stream" and e["state"] == "ended"] == ["shutdown"]


def test_a_second_signal_exits_at_once_with_one_line(tmp_path):
    import numpy as np
    import soundfile as sf

    from serlive.stream.cli import demo_file

    audio, sr = sf.read(demo_file(), dtype="float32")
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(audio, 4), sr)  # a minute: six fast streams keep the real model busy
    jsonl = tmp_path / "out.jsonl"
    proc = start(None, jsonl, *["--input", str(long)] * 6, "--fast", "--drain-s", "60", "--log-level", "info",
                 model=False)
    before = wait_for(jsonl, proc, has_final)
    proc.send_signal(signal.SIGINT)
    while "SIGINT: stopping" not in (line := proc.stderr.readline()):  # the drain has begun
        assert line, proc.communicate()
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130 and err == "ser-live: SIGINT again: exiting now, without the drain finishing\n"
    assert events(jsonl)[:len(before)] == before


def test_ctrl_c_while_stdin_blocks(model_dir, tmp_path):
    jsonl = tmp_path / "out.jsonl"
    proc = start(model_dir, jsonl, "--input", "-")  # stdin stays open and silent
    wait_for(jsonl, proc, lambda evs: any(e["type"] == "stream" for e in evs))
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(TIMEOUT_S)
    err = proc.stderr.read()
    proc.stdin.close()
    assert rc == 130 and err == ""
    assert [(e["state"], e["reason"]) for e in events(jsonl) if e["type"] == "stream"] == \
           [("started", None), ("ended", "shutdown")]


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    jsonl = tmp_path / "out.jsonl"
    proc = start(None, jsonl, "--input", "demo", "--log-level", "info", model=False)  # the bundled model
    line = proc.stderr.readline()
    assert line.startswith("ser-live: loading the model from")
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130 and "Traceback" not in err
    # Either the load was interrupted (one line), or it had just finished and the run drained (no line).
    assert err in ("ser-live: interrupted while starting\n", "") or err.startswith("ser-live: model warm-up")


def test_a_signal_ignored_at_start_stays_ignored_under_nohup(model_dir, tmp_path):
    """``nohup ser-live --input demo``: closing the terminal (SIGHUP) must not stop it; it hears the whole
    file (every utterance's final) and ends by itself. SIGTERM still drains."""
    jsonl = tmp_path / "out.jsonl"
    proc = subprocess.Popen(["nohup", *start_argv(model_dir, jsonl, "--input", "demo")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = wait_for(jsonl, proc, has_final)
    proc.send_signal(signal.SIGHUP)
    after = wait_for(jsonl, proc, lambda evs: len(evs) > len(first) + 1 and  # a later segment opens and closes
                     any(e["type"] == "segment_end" for e in evs[len(first):]))
    assert not any(e["type"] == "stream" and e["state"] == "ended" for e in after)
    rc, err = finish(proc)
    assert rc == 0 and err == ""
    evs = events(jsonl)
    assert [(e["state"], e["reason"]) for e in evs if e["type"] == "stream"] == [("started", None),
                                                                                 ("ended", "end_of_input")]
    assert owed_finals_all_present(evs)
    assert len([e for e in evs if e["type"] == "prediction" and e["final"]]) >= 3  # the demo's utterances


def test_sigterm_still_drains_when_sighup_is_ignored(model_dir, tmp_path):
    jsonl = tmp_path / "out.jsonl"
    proc = subprocess.Popen(["nohup", *start_argv(model_dir, jsonl, "--input", "demo")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(jsonl, proc, has_final)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 0 and err == ""
    assert [e["reason"] for e in events(jsonl) if e["type"] == "stream" and e["state"] == "ended"] == ["shutdown"]
