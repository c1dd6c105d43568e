"""``python -m serlive.stream.soak``: hold the engine under churn and report its resources over time.

For ``--minutes``, one local real-time stream plays the demo file on a loop while WebSocket clients come
and go: readers that connect, read for a few seconds and leave, and senders that open a remote stream,
send audio (one in three as fast as the server takes it, the rest in real time) for a few seconds and
then end it or just close the socket. Every ``--sample-s`` it prints RSS, open file descriptors, asyncio
tasks, threads, streams and clients as a markdown table row; healthy is flat after warm-up. The Python
objects (tracked by the garbage collector) and allocated blocks (pymalloc) tell a leak of Python objects
from RSS that the C allocator keeps after a burst (numpy buffers, torch, sockets) without giving it back.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import sys
import threading
import time

import numpy as np

from .loadgen import open_fds, read_events, rss_mb, send_audio, to_pcm

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m serlive.stream.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", metavar="DIR", help="model directory (default: the bundled model)")
    ap.add_argument("--clients", type=int, default=8, help="clients connected at once, at most")
    ap.add_argument("--sample-s", type=float, default=30.0, help="seconds between two report rows")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    return ap


async def _churn(url: str, pcm: bytes, rng: random.Random, until: float, counts: dict) -> None:
    """One client slot: a reader or a sender after another, until ``until``."""
    loop = asyncio.get_running_loop()
    while (left := until - loop.time()) > 0:
        try:
            if rng.random() < 0.4:
                await read_events(url, min(rng.uniform(1, 6), left))
                counts["readers"] += 1
                continue
            stop = asyncio.Event()
            loop.call_later(min(rng.uniform(2, 10), left), stop.set)
            fast = rng.random() < 1 / 3
            await send_audio(f"{url}?stream=soak{counts['senders']}", pcm, stop, realtime=not fast,
                             end_stream=rng.random() < 0.5)
            counts["senders"] += 1
        except Exception as exc:  # noqa: BLE001 - a refused or dropped client is part of the churn
            counts["errors"] += 1
            log.debug("client failed: %s", exc)


def _row(t0: float, engine, counts: dict) -> str:
    gc.collect()
    return (f"| {(time.monotonic() - t0) / 60:5.1f} | {rss_mb():6.0f} | {len(gc.get_objects()) / 1000:6.1f} | "
            f"{sys.getallocatedblocks() / 1000:6.1f} | {open_fds():4d} | "
            f"{len(asyncio.all_tasks()):5d} | {threading.active_count():3d} | {len(engine._streams):3d} | "
            f"{engine.ws.client_count:3d} | {counts['readers']} | {counts['senders']} | {counts['errors']} |")


async def soak(args: argparse.Namespace) -> None:
    import soundfile

    from serlive.model import Predictor, bundled_model_dir

    from .cli import demo_file
    from .config import EngineConfig, WsConfig
    from .engine import Engine
    from .sources import ArraySource

    predictor = Predictor.from_dir(args.model or bundled_model_dir())
    audio, sr = soundfile.read(demo_file(), dtype="float32")
    loops = int(args.minutes * 60 / (len(audio) / sr)) + 2
    local = ArraySource("local", np.tile(audio, loops), sr, realtime=True)
    engine = Engine(predictor, EngineConfig(ws=WsConfig(host="127.0.0.1", port=0, max_clients=args.clients + 4, accept_audio=True)),
                    [local])
    task = asyncio.create_task(engine.run())
    await engine.ready.wait()
    loop, rng = asyncio.get_running_loop(), random.Random(args.seed)
    url, pcm = f"ws://127.0.0.1:{engine.ws.port}/", to_pcm(audio)
    counts = {"readers": 0, "senders": 0, "errors": 0}
    until, t0 = loop.time() + args.minutes * 60, time.monotonic()
    print(f"soak: {args.minutes:g} min, up to {args.clients} clients at once, model {predictor.config.description}")
    print("| min | RSS MB | Python objects (k) | Python blocks (k) | fds | tasks | threads | streams | clients "
          "| readers done | senders done | client errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(_row(t0, engine, counts), flush=True)
    slots = [asyncio.create_task(_churn(url, pcm, random.Random(rng.random()), until, counts))
             for _ in range(args.clients)]
    while loop.time() < until:
        await asyncio.sleep(min(args.sample_s, max(0.0, until - loop.time())))
        print(_row(t0, engine, counts), flush=True)
    await asyncio.gather(*slots)
    while len(engine._streams) > 1:  # the last remote streams end
        await asyncio.sleep(0.1)
    print(_row(t0, engine, counts), flush=True)
    engine.stop()
    await task


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="soak: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    try:
        asyncio.run(soak(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
