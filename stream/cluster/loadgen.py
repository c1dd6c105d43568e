"""The load generator of ``ser-live cluster-bench``: what ``streams`` concurrent streams would publish
(per stream every 0.5 s: a 0.5 s float32 audio chunk to the audio stream and an interim request; every 3 s
a final request to the work queue) for ``seconds``, paced per 0.5 s tick, on a deployment prefix of its
own whose audio stream is capped (the store is a temporary directory). The broker's own counters (its
monitoring endpoint) give the message and byte rates it took in, and its CPU share."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from .bench import varz
from .options import Names
from .wire import WireRequest, chunk_bytes

TICK_S = 0.5
FINAL_EVERY_TICKS = 6
LOAD_AUDIO_MAX_BYTES = 512 << 20


async def load(url: str, monitor: int, streams: int, seconds: float) -> dict:
    import nats
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    names = Names(f"load{streams}")
    nc = await nats.connect(url, pending_size=256 << 20)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=names.audio, subjects=[f"{names.prefix}.audio.>"], storage=StorageType.FILE,
                                     max_bytes=LOAD_AUDIO_MAX_BYTES, discard=DiscardPolicy.OLD))
    await js.add_stream(StreamConfig(name=names.requests, subjects=[f"{names.prefix}.req.final.>"],
                                     retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                                     max_bytes=LOAD_AUDIO_MAX_BYTES, discard=DiscardPolicy.OLD))
    chunk = chunk_bytes(np.zeros(int(TICK_S * 16_000), np.float32))
    request = WireRequest("load:1:1:i8000", "load", "stream", 1, 0, 8000, False, (1, 2, 3, 4, 5, 6), 48_000,
                          names.interim_result_subject("load"), time.time()).encode()
    audio_subject, interim_subject = names.audio_subject("load"), names.interim_subject
    final_subject = names.final_subject("load")
    ticks = max(1, int(seconds / TICK_S))
    before, t0 = varz(monitor), time.perf_counter()
    late_ticks = 0
    for tick in range(ticks):
        for s in range(streams):
            await nc.publish(audio_subject, chunk)
            await nc.publish(interim_subject, request)
            if (tick + s) % FINAL_EVERY_TICKS == 0:
                await nc.publish(final_subject, request)
        await nc.flush(timeout=60)
        lag = t0 + (tick + 1) * TICK_S - time.perf_counter()
        if lag > 0:
            await asyncio.sleep(lag)
        else:
            late_ticks += 1
    wall = time.perf_counter() - t0
    after = varz(monitor)
    for stream in (names.audio, names.requests):
        await js.delete_stream(stream)
    await nc.close()
    per_tick_msgs = streams * (2 + 1 / FINAL_EVERY_TICKS)
    per_tick_bytes = streams * (len(chunk) + len(request) * (1 + 1 / FINAL_EVERY_TICKS))
    return {"streams": streams, "seconds": round(wall, 2),
            "target_msgs_per_s": round(per_tick_msgs / TICK_S), "broker_msgs_in_per_s":
            round((after["in_msgs"] - before["in_msgs"]) / wall),
            "target_mb_per_s": round(per_tick_bytes / TICK_S / 1e6, 1),
            "broker_mb_in_per_s": round((after["in_bytes"] - before["in_bytes"]) / wall / 1e6, 1),
            "kept_up": late_ticks == 0, "late_ticks": f"{late_ticks}/{ticks}", "broker_cpu_pct": after.get("cpu")}
