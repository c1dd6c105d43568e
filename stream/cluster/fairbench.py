"""The ``fairness`` part of ``ser-live cluster-bench``: real-time streams' final latency through the cluster
alone and beside a flood (a gateway process reading ``--flood`` streams of a 10-minute recording, the demo
file repeated, as fast as it can), then beside an overload (``--overload`` such streams: more than the one
worker process can serve, so each advances slower than real time), same run: the single-process fairness
benchmark's question (is a real-time stream's final kept behind another stream's backlog?) asked of the
broker. The lanes' depths in the broker are sampled meanwhile, and the overload is also run through the
single-process engine (the same streams in this process, no broker) for the reference."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np

from .options import Names

LIVE_STREAMS = 4
"""Real-time copies of the demo file (4 segments each): 16 finals a run."""

SAMPLE_S = 0.25
"""How often the lanes' depths are read from the broker during a phase."""


def _ser_live(args, url: str, names: Names, name: str, *rest: str, err: Path) -> subprocess.Popen:
    model = ["--model", args.model] if args.model else []
    threads = ["--threads", str(args.threads)] if args.threads else []
    return subprocess.Popen([sys.executable, "-m", "serlive.stream", *rest, "--nats", url, "--nats-prefix", names.prefix,
                             "--nats-name", name, "--device", args.device, *threads, *model],
                            stdout=subprocess.DEVNULL, stderr=open(err, "wb"))


async def _live(predictor, url: str, names: Names, tag: str) -> tuple[list[float], dict]:
    """The real-time streams' final latencies, and how many of their finals went to each lane."""
    from ..cli import demo_file
    from ..config import EngineConfig
    from ..engine import Engine
    from ..events import PredictionEvent
    from ..sinks import ListSink
    from ..sources import FileSource
    from .gateway import attach_gateway

    sources = [FileSource(demo_file(), realtime=True) for _ in range(LIVE_STREAMS)]
    live = Engine(predictor, EngineConfig(), sources, model_name="bench")
    remote = attach_gateway(live, ({"servers": [url]}, names, f"{tag}live"))
    sink = ListSink()
    live.add_sink(sink)
    await live.run()
    return [e.latency_ms for e in sink.of(PredictionEvent) if e.final], dict(remote.lanes)


async def _in_process(predictor, long_file: str, flood: int) -> list[float]:
    """The same real-time streams through the single-process engine, alone or beside ``flood`` streams of
    ``long_file`` read as fast as possible, in this process (the one model owner and its fair queue)."""
    from ..cli import demo_file
    from ..config import EngineConfig
    from ..engine import Engine
    from ..events import PredictionEvent
    from ..sinks import ListSink
    from ..sources import FileSource

    live = [FileSource(demo_file(), realtime=True, name=f"rt{i}") for i in range(LIVE_STREAMS)]
    fast = [FileSource(long_file, realtime=False, name=f"fast{i}") for i in range(flood)]
    engine = Engine(predictor, EngineConfig(), live + fast, model_name="bench")
    sink = ListSink()
    engine.add_sink(sink)
    task = asyncio.create_task(engine.run())
    await engine.ready.wait()
    while not task.done() and not all(_ended(sink, s.name) for s in live):
        await asyncio.sleep(0.2)
    engine.stop()
    await task
    return [e.latency_ms for e in sink.of(PredictionEvent) if e.final and e.stream.startswith("rt")]


def _ended(sink, stream: str) -> bool:
    from ..events import StreamStatus

    return any(e.stream == stream and e.state == "ended" for e in sink.of(StreamStatus))


def _long_recording(tmp: Path, minutes: float = 10.0) -> str:
    import soundfile

    from ..cli import demo_file

    audio, rate = soundfile.read(demo_file(), dtype="float32")
    path = tmp / "long.wav"
    soundfile.write(path, np.tile(audio, int(np.ceil(minutes * 60 * rate / len(audio)))), rate)
    return str(path)


def _finals_in(path: Path) -> int:
    """The flood's finals so far (its JSON lines)."""
    try:
        return path.read_text(errors="replace").count('"final":true')
    except OSError:
        return 0


def _summary(latencies: list[float]) -> dict:
    return {"finals": len(latencies), "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p95_ms": round(float(np.percentile(latencies, 95)), 1), "max_ms": round(max(latencies), 1)}


def _ratio(beside: dict, alone: dict) -> list[float]:
    return [round(beside["p50_ms"] / alone["p50_ms"], 2), round(beside["p95_ms"] / alone["p95_ms"], 2)]


async def _depths(js, names: Names, peak: dict) -> None:
    """Keep the most finals each lane held waiting in the broker (not yet taken by a worker) in ``peak``."""
    while True:
        for lane in ("live", "bulk"):
            try:
                info = await js.consumer_info(names.requests, f"workers_{lane}")
                peak[lane] = max(peak.get(lane, 0), info.num_pending)
            except Exception:  # noqa: BLE001 - the consumer is being created; read again
                pass
        await asyncio.sleep(SAMPLE_S)


async def _beside(predictor, args, url: str, names: Names, tmp: Path, phase: str, streams: int, long_file: str,
                  alone: dict) -> dict:
    """The real-time streams beside a gateway process reading ``streams`` copies of ``long_file`` fast."""
    from .broker import connect

    jsonl = tmp / f"{phase}.jsonl"
    flood = _ser_live(args, url, names, f"fair{phase}", *[a for _ in range(streams) for a in ("--input", long_file)],
                      "--fast", "--no-tui", "--ws", "off", "--jsonl", str(jsonl), err=tmp / f"fair-{phase}.err")
    nc = await connect({"servers": [url]}, "ser-live bench probe")
    peak: dict = {}
    sampler = None
    try:
        while flood.poll() is None and not _finals_in(jsonl):
            await asyncio.sleep(0.1)
        before = _finals_in(jsonl)
        sampler = asyncio.create_task(_depths(nc.jetstream(), names, peak))
        latencies, lanes = await _live(predictor, url, names, phase)
        out = {"streams": streams, "beside": _summary(latencies), "flood_finals_meanwhile": _finals_in(jsonl) - before,
               "realtime_finals_by_lane": lanes, "peak_waiting_by_lane": peak,
               "flood_still_running": flood.poll() is None}  # the flood lasted the whole real-time run
        out["ratio_p50_p95"] = _ratio(out["beside"], alone)
        return out
    finally:
        if sampler is not None:
            sampler.cancel()
        if flood.poll() is None:
            flood.terminate()
            flood.wait(30)
        try:  # what the flood left queued is nobody's now: the next phase starts from an empty queue
            await nc.jetstream().purge_stream(names.requests)
        finally:
            await nc.close()


async def fairness(predictor, args, url: str, tmp: Path) -> dict:
    names = Names("fair")
    worker = _ser_live(args, url, names, "fairw", "worker", err=tmp / "fair-worker.err")
    try:
        while "ready" not in (tmp / "fair-worker.err").read_text(errors="replace"):
            if worker.poll() is not None:
                raise RuntimeError((tmp / "fair-worker.err").read_text(errors="replace")[-2000:])
            await asyncio.sleep(0.1)
        latencies, lanes = await _live(predictor, url, names, "alone")
        out: dict = {"alone": _summary(latencies) | {"realtime_finals_by_lane": lanes}}
        long_file = _long_recording(tmp)
        for phase, streams in (("flood", args.flood), ("overload", args.overload)):
            if streams:
                out[phase] = await _beside(predictor, args, url, names, tmp, phase, streams, long_file, out["alone"])
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)
    if args.overload:  # the reference: the same streams through the single-process engine, same run
        alone = _summary(await _in_process(predictor, long_file, 0))
        beside = _summary(await _in_process(predictor, long_file, args.overload))
        out["in_process"] = {"alone": alone, "beside_overload": beside, "ratio_p50_p95": _ratio(beside, alone)}
    return out
