"""Exits of real ``ser-live`` processes under load: SIGTERM while six real WebSocket clients send audio as
fast as the engine lets them, with no grace period (``--drain-s 0``) or a short one, must end with the documented exit
code every time (1: segments were left unpredicted and counted; 0: nothing was owed), never a crash of a
native thread still inside a forward pass when the interpreter goes (SIGSEGV / SIGABRT, "terminate called
without an active exception")."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

DATA = Path(__file__).parent / "data" / "ravdess"
CLIENTS = 6
RUNS = 5
TIMEOUT_S = 90.0


def speech_pcm(seconds: float = 60.0) -> bytes:
    """RAVDESS clips back to back (utterances with pauses), looped to ``seconds``, as s16le 16 kHz."""
    clips = [sf.read(p, dtype="int16")[0] for p in sorted(DATA.glob("*.flac"))[:8]]
    audio = np.concatenate(clips)
    return np.resize(audio, int(seconds * 16_000)).astype("<i2").tobytes()


def start_engine(jsonl: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """The bundled model behind a WebSocket server on a free port that takes audio; returns the port."""
    argv = [sys.executable, "-m", "serlive.stream", "--no-tui", "--input", "none", "--accept-audio",
            "--ws", "127.0.0.1:0", "--threads", "1", "--jsonl", str(jsonl), *args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while not (match := re.search(r"WebSocket server on ws://127\.0\.0\.1:(\d+)", line := proc.stderr.readline())):
        assert line, proc.communicate()
    return proc, int(match.group(1))


def events(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.endswith("}")]


async def flood(port: int, name: str, pcm: bytes) -> None:
    """One client: its own stream, 0.5 s a message, as fast as back-pressure allows, until the server
    closes the connection."""
    try:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            await ws.send(json.dumps({"type": "start_stream", "stream": name}))
            for i in range(0, len(pcm), 16_000):
                await ws.send(pcm[i:i + 16_000])
            await ws.send(json.dumps({"type": "end_stream"}))
            async for _ in ws:
                pass
    except (ConnectionClosed, OSError):
        pass  # the engine went away under it: expected at SIGTERM


async def backlog_then_sigterm(proc: subprocess.Popen, port: int, jsonl: Path) -> None:
    pcm = speech_pcm()
    clients = [asyncio.create_task(flood(port, f"c{i}", pcm)) for i in range(CLIENTS)]
    deadline = time.monotonic() + TIMEOUT_S
    while not any(e["type"] == "prediction" and e["final"] for e in events(jsonl)):  # the model is busy
        assert proc.poll() is None and time.monotonic() < deadline
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*clients), TIMEOUT_S)


@pytest.mark.parametrize("drain_s, run", [("0", i) for i in range(RUNS)] + [("0.5", i) for i in range(2)])
def test_sigterm_under_a_backlog_exits_with_the_documented_code(tmp_path, drain_s, run):
    jsonl = tmp_path / "out.jsonl"
    proc, port = start_engine(jsonl, "--drain-s", drain_s)
    asyncio.run(backlog_then_sigterm(proc, port, jsonl))
    _, err = proc.communicate(timeout=TIMEOUT_S)
    evs = events(jsonl)
    lost = [e for e in evs if e["type"] == "error" and e["code"] == "drain_timeout"]
    assert "terminate called" not in err and "Traceback" not in err and "Fatal Python error" not in err, err
    assert proc.returncode == (1 if lost else 0), (proc.returncode, err)
    if lost:
        assert re.search(rf"ser-live: \d+ segments? not predicted: the {drain_s} s grace period for stopping ran out\n",
                         err)
    ended = {e["stream"] for e in evs if e["type"] == "stream" and e["state"] == "ended"}
    assert ended == {f"c{i}" for i in range(CLIENTS)}
    assert evs[-1]["type"] == "stats"
