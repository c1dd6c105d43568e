"""The model owner in a process of its own (``--model-process``): the same answers as the in-process owner on
real speech (interims carrying their segment's encoder state, sent as the audio the child has not had), the
errors with their types, a child that dies failing what waits in one sentence, terminal signals left to the
parent, and a real ``ser-live --model-process`` run that gives the in-process finals and leaves no child behind."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from serlive.stream.agreement import requests_of
from serlive.stream.config import EngineConfig, InferenceConfig
from serlive.stream.procworker import ModelProcessError, ProcessWorker
from serlive.stream.worker import BadAudio, InferenceWorker, Superseded

from .test_stream_incremental import predictor, speech  # noqa: F401 - the bundled model (a fixture), RAVDESS files

FILES = ["03-01-05-01-01-01-01.flac", "03-01-04-01-01-02-02.flac"]


def answers(worker, requests) -> list[np.ndarray]:
    """Each request's probabilities, submitted one at a time (so no interim is superseded)."""
    async def main():
        await worker.start(warm_up=False)
        out = []
        for r in requests:
            pred = await worker.submit(r.audio, urgent=r.final, stream=r.stream, segment=r.segment,
                                       end_sample=r.end_sample)
            out.append(np.array(pred.probs))
        await worker.stop(5)
        return out

    return asyncio.run(main())


def test_the_model_process_answers_as_the_in_process_owner_does(predictor):
    config = EngineConfig(inference=InferenceConfig(interim_ms=500))
    requests = [dataclasses.replace(r, stream=name) for name in FILES
                for r in requests_of(speech(name), predictor.labels, config)]
    assert sum(not r.final for r in requests) >= 6 and sum(r.final for r in requests) == 2
    local = answers(InferenceWorker(predictor, max_batch=4, max_wait_ms=0), requests)
    child = ProcessWorker(predictor, max_batch=4, max_wait_ms=0, threads=1)
    remote = answers(child, requests)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(local, remote))
    # an interim that extends its segment's previous interim sends only its new audio; a final is sent whole
    new, last = 0, {}
    for r in requests:
        new += len(r.audio) - (0 if r.final else last.get((r.stream, r.segment), 0))
        last[(r.stream, r.segment)] = 0 if r.final else len(r.audio)
    assert child.samples_sent == new < 0.6 * sum(len(r.audio) for r in requests)


def test_errors_keep_their_types_and_a_newer_interim_supersedes_a_waiting_one(predictor):
    audio = speech(FILES[0])[8000:40000]

    async def main():
        worker = ProcessWorker(predictor, max_batch=8, max_wait_ms=400, lanes=1, threads=1)
        await worker.start(warm_up=False)
        bad = audio.copy()
        bad[100] = np.nan
        with pytest.raises(BadAudio, match="NaN"):
            await worker.submit(bad, stream="bad")
        first = worker.submit(audio[:16000], urgent=False, stream="s")  # waits for the batch to fill...
        second = worker.submit(audio[:24000], urgent=False, stream="s")  # ...and this one replaces it
        with pytest.raises(Superseded):
            await first
        assert (await second).frames > 0
        await worker.stop(5)

    asyncio.run(main())


def test_a_child_that_dies_fails_what_waits_and_ignores_the_terminals_signals(predictor, caplog):
    audio = speech(FILES[0])[8000:40000]

    async def main():
        worker = ProcessWorker(predictor, max_batch=4, max_wait_ms=0, threads=1)
        await worker.start(warm_up=False)
        pid = worker._process.pid
        os.kill(pid, signal.SIGINT)  # a Ctrl-C reaches the whole process group: the parent decides
        assert (await worker.submit(audio, stream="s")).frames > 0
        os.kill(pid, signal.SIGKILL)
        waiting = worker.submit(audio, stream="s")
        with pytest.raises(ModelProcessError, match="model process"):
            await asyncio.wait_for(waiting, 30)
        with pytest.raises(ModelProcessError, match="model process"):
            await worker.submit(audio, stream="s")
        assert worker.queue_depth == 0
        await worker.stop(1)  # nothing left to stop: returns at once, no traceback

    asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "the model process ended unexpectedly (exit code -9)"]


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def finals(jsonl: Path) -> list[tuple]:
    """(stream, segment, label, confidence) of each final in the JSONL so far (its complete lines)."""
    events = [json.loads(line) for line in jsonl.read_text().splitlines() if line.endswith("}")] if jsonl.exists() else []
    return [(e["stream"], e["segment"], e["label"], round(e["confidence"], 4)) for e in events
            if e["type"] == "prediction" and e["final"]]


def test_ser_live_with_a_model_process_gives_the_same_finals_and_leaves_no_child(tmp_path):
    talk = tmp_path / "talk.wav"
    gap = np.zeros(8000, np.float32)
    soundfile.write(talk, np.concatenate([gap, speech(FILES[0]), gap, speech(FILES[1]), gap]), 16_000)
    argv = [sys.executable, "-m", "serlive.stream", "--no-tui", "--ws", "off", "--threads", "2", "--input", str(talk)]
    runs = {}
    for flag in ("", "--model-process"):
        jsonl = tmp_path / f"out{flag}.jsonl"
        done = subprocess.run(argv + ["--fast", "--jsonl", str(jsonl)] + ([flag] if flag else []),
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        runs[flag] = finals(jsonl)
    assert len(runs[""]) == 2 and runs["--model-process"] == runs[""]

    # Ctrl-C while it listens in real time: the parent drains, the child goes with it
    jsonl = tmp_path / "live.jsonl"
    proc = subprocess.Popen(argv + ["--jsonl", str(jsonl), "--model-process"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, kids = time.monotonic() + 120, set()
    while time.monotonic() < deadline and not finals(jsonl):
        kids |= children(proc.pid)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    kids |= children(proc.pid)
    assert kids, "the model process was not found"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker leaves just after its parent
    while any(Path(f"/proc/{k}").exists() for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{k}").exists() for k in kids)
    assert finals(jsonl)[:1] == runs[""][:1]
