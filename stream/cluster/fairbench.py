"""The ``fairness`` part of ``ser-live cluster-bench``: real-time streams' final latency through the cluster
alone and beside a flood (a gateway process reading ``--flood`` streams of a 10-minute recording, the demo
file repeated, as fast as it can), same run, one worker process: the single-process fairness benchmark's
question (is a real-time stream's final kept behind another stream's backlog?) asked of the broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np

from .options import Names

LIVE_STREAMS = 4
"""Real-time copies of the demo file (4 segments each): 16 finals a run."""


def _ser_live(args, url: str, names: Names, name: str, *rest: str, err: Path) -> subprocess.Popen:
    model = ["--model", args.model] if args.model else []
    threads = ["--threads", str(args.threads)] if args.threads else []
    return subprocess.Popen([sys.executable, "-m", "serlive.stream", *rest, "--nats", url, "--nats-prefix", names.prefix,
                             "--nats-name", name, "--device", args.device, *threads, *model],
                            stdout=subprocess.DEVNULL, stderr=open(err, "wb"))


async def _live(predictor, url: str, names: Names, tag: str) -> list[float]:
    from ..cli import demo_file
    from ..config import EngineConfig
    from ..engine import Engine
    from ..events import PredictionEvent
    from ..sinks import ListSink
    from ..sources import FileSource
    from .gateway import attach_gateway

    sources = [FileSource(demo_file(), realtime=True) for _ in range(LIVE_STREAMS)]
    live = Engine(predictor, EngineConfig(), sources, model_name="bench")
    attach_gateway(live, ({"servers": [url]}, names, f"{tag}live"))
    sink = ListSink()
    live.add_sink(sink)
    await live.run()
    return [e.latency_ms for e in sink.of(PredictionEvent) if e.final]


def _long_recording(tmp: Path, minutes: float = 10.0) -> str:
    import soundfile

    from ..cli import demo_file

    audio, rate = soundfile.read(demo_file(), dtype="float32")
    path = tmp / "long.wav"
    soundfile.write(path, np.tile(audio, int(np.ceil(minutes * 60 * rate / len(audio)))), rate)
    return str(path)


def _predicting(path: Path) -> bool:
    """The flood's finals are coming back (its model was loaded and the broker serves it)."""
    try:
        return '"final":true' in path.read_text(errors="replace")
    except OSError:
        return False


def _summary(latencies: list[float]) -> dict:
    return {"finals": len(latencies), "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p95_ms": round(float(np.percentile(latencies, 95)), 1)}


async def fairness(predictor, args, url: str, tmp: Path) -> dict:
    names = Names("fair")
    worker = _ser_live(args, url, names, "fairw", "worker", err=tmp / "fair-worker.err")
    flood = None
    try:
        while "ready" not in (tmp / "fair-worker.err").read_text(errors="replace"):
            await asyncio.sleep(0.1)
        out: dict = {"flood_streams": args.flood, "alone": _summary(await _live(predictor, url, names, "alone"))}
        long_file = _long_recording(tmp)
        flood = _ser_live(args, url, names, "fairflood", *[a for _ in range(args.flood) for a in ("--input", long_file)],
                          "--fast", "--no-tui", "--ws", "off", "--jsonl", str(tmp / "flood.jsonl"),
                          err=tmp / "fair-flood.err")
        while flood.poll() is None and not _predicting(tmp / "flood.jsonl"):
            await asyncio.sleep(0.1)
        out["beside"] = _summary(await _live(predictor, url, names, "beside"))
        out["flood_still_running"] = flood.poll() is None  # the flood lasted the whole real-time run
        out["ratio_p50_p95"] = [round(out["beside"]["p50_ms"] / out["alone"]["p50_ms"], 2),
                                round(out["beside"]["p95_ms"] / out["alone"]["p95_ms"], 2)]
        return out
    finally:
        for proc in (flood, worker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
