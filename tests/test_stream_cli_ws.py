"""The WebSocket flags in a real ``ser-live`` process, used by real clients: closed by default, opened by
--accept-audio and --ws-allow-origin, and the JSON lines of the run."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys

import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.test_stream_cli_args import CLIP
from tests.test_stream_ws import VALIDATOR


def start(*argv: str) -> tuple[subprocess.Popen, int]:
    """Start ``ser-live`` on a free port and wait for the line that names it."""
    proc = subprocess.Popen([sys.executable, "-m", "serlive.stream", "--no-tui", "--threads", "1", "--input", "none",
                             "--ws", "127.0.0.1:0", "--jsonl", "-", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # blocks until the line comes (or the process ends)
        found = re.search(r"WebSocket server on ws://127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    raise AssertionError(f"ser-live ended without serving: {proc.wait()}")


async def until(ws, predicate, got: list) -> dict:
    while True:
        got.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        VALIDATOR.validate(got[-1])
        if predicate(got[-1]):
            return got[-1]


def test_a_real_process_takes_audio_only_when_told_and_checks_origins():
    audio, rate = sf.read(CLIP, dtype="float32")
    proc, port = start("--accept-audio", "--ws-allow-origin", "https://dash.example.org")
    address = f"ws://127.0.0.1:{port}/?stream=phone"
    got: list = []

    async def main():
        try:
            async with connect(address, origin="https://other.example"):
                pass
        except InvalidStatus as exc:
            refused = exc.response.status_code
        async with connect(address, origin="https://dash.example.org") as ws:
            await until(ws, lambda m: m["type"] == "hello", got)
            await ws.send(json.dumps({"type": "start_stream", "format": {"sample_rate_hz": rate,
                                                                         "encoding": "f32le"}}))
            await ws.send(audio.astype("<f4").tobytes())
            await ws.send(json.dumps({"type": "end_stream"}))
            await until(ws, lambda m: m["type"] == "stream" and m["state"] == "ended", got)
        return refused

    try:
        refused = asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert refused == 403
    assert got[0]["accepts_audio"] is True
    assert [m["stream"] for m in got if m["type"] == "accepted"] == ["phone"]
    assert len([m for m in got if m["type"] == "prediction" and m["final"]]) == 1
    lines = [json.loads(line) for line in out.splitlines()]
    for line in lines:
        VALIDATOR.validate(line)
    assert lines[0]["type"] == "hello" and lines[0]["accepts_audio"] is False
    assert [(m["state"], m["reason"]) for m in lines if m["type"] == "stream"] == [("started", None),
                                                                                   ("ended", "client_ended")]
    assert proc.returncode == 0 and "Traceback" not in err


def test_a_real_process_refuses_audio_by_default():
    proc, port = start()
    got: list = []

    async def main():
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await until(ws, lambda m: m["type"] == "hello", got)
            await ws.send(b"\x00\x00" * 8000)
            await ws.send(b"\x00\x00" * 8000)
            await ws.send(json.dumps({"type": "end_stream"}))
            await until(ws, lambda m: m.get("code") == "no_stream", got)

    try:
        asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert got[0]["accepts_audio"] is False
    assert [m["code"] for m in got if m["type"] == "error"] == ["remote_audio_disabled", "no_stream"]
    assert not [line for line in out.splitlines() if json.loads(line)["type"] == "stream"]
