"""The ``fairness`` part of ``ser-live cluster-bench``: real-time streams' final latency through the cluster
alone and beside a flood (a gateway process reading ``--flood`` streams of a 10-minute recording, the demo
file repeated, as fast as it can), then beside an overload (``--overload`` such streams: more than the one
worker process can serve, so each advances slower than real time), same run: the single-process fairness
benchmark's question (is a real-time stream's final kept behind another stream's backlog?) asked of the
broker. The lanes' depths in the broker are sampled meanwhile. The overload is also run with the real-time
streams in its own gateway (this process), and through the single-process engine (the same streams in this
process, no broker) for the reference."""

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


async def _realtime(predictor, long_file: str, fast: int, cluster=None) -> dict:
    """The real-time streams' final latencies, the wall time they took (their audio lasts the demo file's
    length: more means the process fell behind them) and, through a gateway, how many of their finals went to
    each lane; beside ``fast`` streams of ``long_file`` read as fast as possible in the same engine.
    ``cluster``: (url, names, gateway name) to run as a gateway; None: the single-process engine."""
    from ..cli import demo_file
    from ..config import EngineConfig
    from ..engine import Engine
    from ..events import PredictionEvent
    from ..sinks import ListSink
    from ..sources import FileSource
    from .gateway import attach_gateway

    live = [FileSource(demo_file(), realtime=True, name=f"rt{i}") for i in range(LIVE_STREAMS)]
    engine = Engine(predictor, EngineConfig(), live + [FileSource(long_file, realtime=False, name=f"fast{i}")
                                                       for i in range(fast)], model_name="bench")
    remote = None if cluster is None else attach_gateway(engine, ({"servers": [cluster[0]]}, *cluster[1:]))
    sink = ListSink()
    engine.add_sink(sink)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(engine.run())
    await engine.ready.wait()
    t0 = loop.time()
    while not task.done() and not all(_ended(sink, s.name) for s in live):
        await asyncio.sleep(0.2)
    wall_s = loop.time() - t0
    out = {"realtime_wall_s": round(wall_s, 1)}
    if remote is not None:  # (before the drain: its own streams' finals, the fast ones' included)
        out["finals_by_lane"] = dict(remote.lanes)
    engine.stop()
    await task
    return _summary([e.latency_ms for e in sink.of(PredictionEvent) if e.final and e.stream.startswith("rt")]) | out


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
        beside = await _realtime(predictor, long_file, 0, (url, names, phase))
        return {"streams": streams, "beside": beside, "ratio_p50_p95": _ratio(beside, alone),
                "flood_finals_meanwhile": _finals_in(jsonl) - before, "peak_waiting_by_lane": peak,
                "flood_still_running": flood.poll() is None}  # the flood lasted the whole real-time run
    finally:
        if sampler is not None:
            sampler.cancel()
        if flood.poll() is None:
            flood.terminate()
            flood.wait(30)
        await _purge(nc, names)


async def _purge(nc, names: Names) -> None:
    """What a flood left queued is nobody's now: the next phase starts from an empty queue."""
    try:
        await nc.jetstream().purge_stream(names.requests)
    finally:
        await nc.close()


async def fairness(predictor, args, url: str, tmp: Path) -> dict:
    from .broker import connect

    names = Names("fair")
    worker = _ser_live(args, url, names, "fairw", "worker", err=tmp / "fair-worker.err")
    long_file = _long_recording(tmp)
    try:
        while "ready" not in (tmp / "fair-worker.err").read_text(errors="replace"):
            if worker.poll() is not None:
                raise RuntimeError((tmp / "fair-worker.err").read_text(errors="replace")[-2000:])
            await asyncio.sleep(0.1)
        out: dict = {"alone": await _realtime(predictor, long_file, 0, (url, names, "alone"))}
        for phase, streams in (("flood", args.flood), ("overload", args.overload)):
            if streams:
                out[phase] = await _beside(predictor, args, url, names, tmp, phase, streams, long_file, out["alone"])
        if args.overload:  # the real-time streams in the overload's own gateway (this process)
            same = await _realtime(predictor, long_file, args.overload, (url, names, "same"))
            await _purge(await connect({"servers": [url]}, "ser-live bench probe"), names)
            out["same_gateway"] = {"beside": same, "ratio_p50_p95": _ratio(same, out["alone"])}
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)
    if args.overload:  # the reference: the same streams through the single-process engine, same run
        alone = await _realtime(predictor, long_file, 0)
        beside = await _realtime(predictor, long_file, args.overload)
        out["in_process"] = {"alone": alone, "beside_overload": beside, "ratio_p50_p95": _ratio(beside, alone)}
    return out
