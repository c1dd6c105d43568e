"""Load for the benchmark's fairness row and the soak script: WebSocket clients that send remote audio
(as fast as the server takes it, or in real time) or only read, and the process's own resource figures."""

from __future__ import annotations

import asyncio
import json
import os
import resource

import numpy as np

from .chunks import SAMPLE_RATE_HZ
from .events import PredictionEvent

MESSAGE_BYTES = 3200
"""Senders send 100 ms of s16le audio per message."""


def to_pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def send_audio(url: str, pcm: bytes, stop: asyncio.Event, realtime: bool = False,
                     end_stream: bool = True) -> int:
    """Send ``pcm`` over and over until ``stop`` (as fast as the server reads it, or in real time); then
    ``end_stream`` or just close. Returns the bytes sent."""
    from websockets.asyncio.client import connect

    sent, loop = 0, asyncio.get_running_loop()
    t0 = loop.time()
    async with connect(url, max_queue=None) as ws:
        drain = asyncio.create_task(_discard(ws))
        while not stop.is_set():
            for i in range(0, len(pcm), MESSAGE_BYTES):
                await ws.send(pcm[i:i + MESSAGE_BYTES])
                sent += MESSAGE_BYTES
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + sent / (2 * SAMPLE_RATE_HZ) - loop.time()))
                if stop.is_set():
                    break
        if end_stream:
            await ws.send(json.dumps({"type": "end_stream"}))
        drain.cancel()
    return sent


async def read_events(url: str, seconds: float) -> int:
    """Connect, read events for ``seconds``, leave; returns how many arrived."""
    from websockets.asyncio.client import connect

    n = 0

    async def count(ws) -> None:
        nonlocal n
        async for _ in ws:
            n += 1

    async with connect(url) as ws:
        try:
            await asyncio.wait_for(count(ws), seconds)
        except asyncio.TimeoutError:
            pass
    return n


async def _discard(ws) -> None:
    async for _ in ws:  # a sender also gets every event; reading them keeps its socket flowing
        pass


class FinalLatencies:
    """A sink keeping the final-prediction latencies (ms) of one stream."""

    def __init__(self, stream: str) -> None:
        self.stream, self.values = stream, []

    def put(self, event) -> None:
        if isinstance(event, PredictionEvent) and event.final and event.stream == self.stream:
            self.values.append(event.latency_ms)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.values, q)) if self.values else None


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def main(argv: list[str] | None = None) -> int:
    """``python -m serlive.stream.loadgen URL PCM_FILE``: a flooding client in a process of its own (as a
    real one would be, on another machine): sends the s16le file over and over, as fast as the server
    reads it, until SIGTERM or SIGINT; then ``end_stream``, and prints the bytes sent."""
    import signal
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m serlive.stream.loadgen URL PCM_FILE", file=sys.stderr)
        return 2
    with open(args[1], "rb") as fh:
        pcm = fh.read()

    async def run() -> int:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        return await send_audio(args[0], pcm, stop)

    print(asyncio.run(run()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
