"""The benchmark's fairness run: a real-time stream's final latencies, alone or beside a WebSocket client
flooding remote audio from a process of its own, with the server's RSS over the flood."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import EngineConfig, WsConfig
from .chunks import SAMPLE_RATE_HZ
from .events import Level, PredictionEvent
from .loadgen import FinalLatencies, rss_mb, to_pcm


class _Count:
    """Finals of one stream, and how much of its audio the engine has taken (from its level events)."""

    def __init__(self, stream: str) -> None:
        self.stream, self.finals, self.taken_samples = stream, 0, 0

    def put(self, event) -> None:
        if getattr(event, "stream", None) != self.stream:
            return
        if isinstance(event, PredictionEvent) and event.final:
            self.finals += 1
        elif isinstance(event, Level):
            self.taken_samples = max(self.taken_samples, event.sample)


async def fairness_run(predictor, config: EngineConfig, audio: np.ndarray, flood: bool) -> dict:
    from .engine import Engine
    from .sources import ArraySource

    config = replace(config, ws=WsConfig(host="127.0.0.1", port=0, accept_audio=True))
    engine = Engine(predictor, config, [ArraySource("rt", audio, realtime=True)])
    rt, flood_finals = FinalLatencies("rt"), _Count("flood")
    engine.add_sink(rt)
    engine.add_sink(flood_finals)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(engine.run())
    await engine.ready.wait()
    rss_before = rss_peak = rss_mb()
    t0 = loop.time()
    sender = None
    with tempfile.TemporaryDirectory() as tmp:
        if flood:  # the flooding client runs in a process of its own, as a real one would
            pcm_file = Path(tmp) / "flood.s16le"
            pcm_file.write_bytes(to_pcm(np.concatenate([audio, audio[::-1]])))
            sender = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "serlive.stream.loadgen", f"ws://127.0.0.1:{engine.ws.port}/?stream=flood",
                str(pcm_file), stdout=asyncio.subprocess.PIPE)
        while not task.done() and not engine_stream_ended(engine, "rt"):
            await asyncio.sleep(0.25)
            rss_peak = max(rss_peak, rss_mb())
        if sender is not None:
            if sender.returncode is None:
                sender.send_signal(signal.SIGTERM)
            await sender.communicate()
    wall_s = loop.time() - t0
    engine.stop()
    await task
    return {"finals": len(rt.values), "p50": rt.percentile(50), "p95": rt.percentile(95), "wall_s": wall_s,
            "flood_s": flood_finals.taken_samples / SAMPLE_RATE_HZ, "flood_finals": flood_finals.finals, "rss_before": rss_before,
            "rss_peak": rss_peak}


def engine_stream_ended(engine, name: str) -> bool:
    stream = engine._streams.get(name)
    return stream is None or stream.ended
