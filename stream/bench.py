"""``ser-live bench``: real-time factor and end-of-speech -> final latency of the streaming engine.

For each encoder (the built-in one, random init or ``--model``; and a random-init WavLM Large), it runs
a naive baseline (one stream, the model called synchronously on each closed segment, no batching), then
the engine on one stream without interim predictions, then the engine with 1, 8, 32, 128 ...
concurrent streams, each fed a synthetic speech-like file in real
time with a random start offset, and prints one markdown table. Latency "e2e" is from the arrival of
the last speech sample to the final prediction (it includes the ``--end-silence-ms`` wait that closes a
segment); "close->final" is the model's share (queueing, batching and the forward pass). RTF is model
compute seconds per second of stream audio (interims included); "load" is compute seconds per wall
second, so a load near 1 (one model thread) means the engine can no longer keep up. "interims shown" counts
the interim predictions that reached the sinks per second of each stream's audio (at most 2 with interims every
500 ms and speech all the time): under load the engine spaces them out before finals slow down.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .chunks import SAMPLE_RATE_HZ, AudioChunk
from .config import EngineConfig, InferenceConfig, SegmenterConfig
from .state import LatencyWindow

log = logging.getLogger(__name__)

BLOCK_SAMPLES = 320
"""Sources deliver 20 ms blocks, like a microphone."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ser-live bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", metavar="DIR", help="built-in row from this model directory (default: random init)")
    ap.add_argument("--encoder", default="both", choices=["builtin", "wavlm-large", "both"])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--streams", default="1,8,32,128", help="concurrent stream counts, built-in encoder")
    ap.add_argument("--wavlm-streams", default="1,8,32,128", help="concurrent stream counts, WavLM Large")
    ap.add_argument("--seconds", type=float, default=12.0, help="audio per stream")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--interim-ms", type=int, default=500)
    ap.add_argument("--model-process", default="off", choices=["off", "on", "both"],
                    help="the engine's model owner in a child process (both: a row of each, same run)")
    ap.add_argument("--threads", type=int, help="CPU threads in all (default: every core; the model owner's two "
                                                   "lanes get half each)")
    ap.add_argument("--fairness-s", type=float, default=30.0,
                    help="fairness row: a real-time stream of this length alone, then beside a flooding "
                         "WebSocket sender (0: skip)")
    ap.add_argument("--agreement", nargs="+", metavar="AUDIO",
                    help="instead of the benchmark: incremental interims against whole-segment ones on these "
                         "files or folders (needs --model)")
    ap.add_argument("--cost-streams", type=int, default=0, metavar="N",
                    help="--agreement: first replay N bench streams' requests through both paths (CPU seconds)")
    ap.add_argument("--tolerance", default="0,0.1,0.25,inf",
                    help="--agreement: front-end drifts at which an interim reruns its segment (comma-separated)")
    ap.add_argument("--final-tolerance", default="0.05,0.1,0.25",
                    help="--agreement: the same for a final finishing its segment's state (comma-separated)")
    ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return ap


def speechlike(seconds: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """Voiced islands of 1.2-3 s between 0.6-1.2 s pauses (a harmonic buzz with pitch wobble, which
    WebRTC VAD hears as speech) and the number of islands."""
    rng = np.random.default_rng(seed)
    parts, n_islands, total = [], 0, int(seconds * SAMPLE_RATE_HZ)
    while sum(map(len, parts)) < total:
        parts.append(0.001 * rng.standard_normal(int(rng.uniform(0.6, 1.2) * SAMPLE_RATE_HZ)))
        n = int(rng.uniform(1.2, 3.0) * SAMPLE_RATE_HZ)
        if sum(map(len, parts)) + n + SAMPLE_RATE_HZ > total:
            parts.append(0.001 * rng.standard_normal(total - sum(map(len, parts))))
            break
        t = np.arange(n) / SAMPLE_RATE_HZ
        f0 = rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
        x = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 2.5 * t)))
        parts.append(0.25 * x / np.abs(x).max())
        n_islands += 1
    return np.concatenate(parts).astype(np.float32), n_islands


def naive_baseline(predictor, audio: np.ndarray, config: SegmenterConfig) -> dict:
    """One stream paced in real time; each closed segment goes straight to the model, synchronously."""
    from .segmenter import Segmenter
    from .vad import VadStage

    vad, seg = VadStage(config.vad_mode, config.frame_ms), Segmenter(config)
    e2e, after_close, compute = LatencyWindow(), LatencyWindow(), 0.0
    t0 = time.perf_counter()
    for i in range(0, len(audio), BLOCK_SAMPLES):
        chunk = AudioChunk(i, audio[i:i + BLOCK_SAMPLES])
        delay = t0 + chunk.end_sample / SAMPLE_RATE_HZ - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        closed = [s for f in vad.push(chunk) for s in seg.push(f) if hasattr(s, "audio") and not s.dropped]
        for segment in closed:
            t1 = time.perf_counter()
            wave = predictor.prepare(segment.audio)
            predictor.predict_prepared([wave], [predictor.mask(wave)])
            t2 = time.perf_counter()
            compute += t2 - t1
            e2e.add((t2 - (t0 + segment.end_sample / SAMPLE_RATE_HZ)) * 1000)
            after_close.add((t2 - max(t1, t0 + chunk.end_sample / SAMPLE_RATE_HZ)) * 1000)
    return {"finals": len(e2e), "compute_s": compute, "wall_s": time.perf_counter() - t0,
            "e2e": e2e, "close": after_close, "batch": 1.0, "skipped": 0, "interims": 0}


async def _engine_run(predictor, audio: np.ndarray, streams: int, config: EngineConfig) -> dict:
    from .engine import Engine
    from .sources import ArraySource

    rng = np.random.default_rng(streams)
    sources = []
    for i in range(streams):
        offset = np.zeros(int(rng.uniform(0, 1.5) * SAMPLE_RATE_HZ), np.float32)
        sources.append(ArraySource(f"s{i}", np.concatenate([offset, audio]), realtime=True))
    engine = Engine(predictor, config, sources)
    t0 = time.perf_counter()
    await engine.run()
    worker = engine.worker
    return {"finals": len(engine.latency), "compute_s": worker.compute_s, "audio_s": worker.audio_s,
            "wall_s": time.perf_counter() - t0, "e2e": engine.latency, "close": engine.close_latency,
            "batch": worker.items / max(worker.batches, 1), "skipped": engine.skipped_interims,
            "interims": engine.interims_served}


def _row(name: str, mode: str, streams: int, islands: int, r: dict, audio_s: float) -> str:
    rtf = r["compute_s"] / (streams * audio_s)
    pct = lambda w, q: "-" if w.percentile(q) is None else f"{w.percentile(q):.0f}"  # noqa: E731
    return (f"| {name} | {mode} | {streams} | {r['finals']}/{islands * streams} | {rtf:.3f} | "
            f"{r['compute_s'] / r['wall_s']:.2f} | {r['batch']:.1f} | {pct(r['e2e'], 50)} | {pct(r['e2e'], 95)} | "
            f"{pct(r['close'], 50)} | {pct(r['close'], 95)} | {r['skipped']} | "
            f"{r['interims'] / (streams * audio_s):.2f} |")


def _predictors(args, device, dtype):
    import torch

    from serlive.model import EncoderConfig, ModelConfig, Predictor, SERModel
    from serlive.model.bench import WAVLM_LARGE

    if args.encoder in ("builtin", "both"):
        if args.model:
            yield f"{Path(args.model).name} (--model)", Predictor.from_dir(args.model, device, dtype), args.streams
        else:
            torch.manual_seed(0)
            yield "built-in (random init)", Predictor(SERModel(ModelConfig()), None, device, dtype), args.streams
    if args.encoder in ("wavlm-large", "both"):
        torch.manual_seed(0)
        cfg = ModelConfig(encoder=EncoderConfig(kind="hf", hf_config=WAVLM_LARGE))
        yield "WavLM Large (random init)", Predictor(SERModel(cfg), None, device, dtype), args.wavlm_streams


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from .cli import resolve_device, resolve_dtype
    from .worker import set_cpu_threads

    if args.agreement:
        from .agreement import run_agreement

        return run_agreement(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if device.type == "cpu":
        set_cpu_threads(args.threads)  # --threads in all, shared by the model owner's two lanes
    elif args.threads:
        torch.set_num_threads(args.threads)
    audio, islands = speechlike(args.seconds)
    seg_config = SegmenterConfig()
    config = EngineConfig(inference=InferenceConfig(args.max_batch, args.max_wait_ms, args.interim_ms))
    print(f"device={device} dtype={dtype if device.type == 'cuda' else 'float32'} torch threads="
          f"{torch.get_num_threads()} audio={args.seconds:g} s/stream ({islands} speech islands) "
          f"max_batch={args.max_batch} max_wait={args.max_wait_ms:g} ms interim={args.interim_ms} ms "
          f"end_silence={seg_config.end_silence_ms} ms")
    print("| model | mode | streams | finals | RTF | load | mean batch | e2e p50 ms | e2e p95 ms "
          "| close->final p50 ms | close->final p95 ms | skipped interims | interims shown per stream-s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, predictor, stream_counts in _predictors(args, device, dtype):
        predictor.predict_batch([audio[:SAMPLE_RATE_HZ]])  # warm-up
        base = naive_baseline(predictor, audio, seg_config)
        print(_row(name, "naive (sync, no batching)", 1, islands, base, args.seconds), flush=True)
        if args.interim_ms:  # the same engine without interims: what they cost the finals
            r = asyncio.run(_engine_run(predictor, audio, 1, replace(config, inference=replace(
                config.inference, interim_ms=0))))
            print(_row(name, "engine, no interims", 1, islands, r, args.seconds), flush=True)
        owners = {"off": (False,), "on": (True,), "both": (False, True)}[args.model_process]
        for n in (int(s) for s in stream_counts.split(",") if s.strip()):
            for in_process in owners:
                cfg = replace(config, inference=replace(config.inference, model_process=in_process))
                r = asyncio.run(_engine_run(predictor, audio, n, cfg))
                print(_row(name, "engine, model process" if in_process else "engine", n, islands, r, args.seconds),
                      flush=True)
        if args.fairness_s and "WavLM" not in name:
            fairness_table(name, predictor, config, args.fairness_s)
    return 0


def fairness_table(name: str, predictor, config: EngineConfig, seconds: float) -> None:
    """One real-time stream alone, then the same beside a client flooding remote audio, in one run."""
    from .fairness import fairness_run

    audio, _ = speechlike(seconds, seed=1)
    alone = asyncio.run(fairness_run(predictor, config, audio, flood=False))
    flood = asyncio.run(fairness_run(predictor, config, audio, flood=True))
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    ratio = lambda a, b: "-" if not a or b is None else f"{b / a:.2f}"  # noqa: E731
    print(f"\nfairness: a {seconds:g} s real-time stream, alone then beside one WebSocket client sending "
          "remote audio as fast as the server takes it")
    print("| model | finals alone | e2e p50 / p95 ms alone | finals beside flood | e2e p50 / p95 ms beside flood "
          "| ratio p50 / p95 | flood audio taken s (x real time) | flood finals | RSS before MB | RSS growth MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    a50, a95, b50, b95 = alone["p50"], alone["p95"], flood["p50"], flood["p95"]
    print(f"| {name} | {alone['finals']} | {f(a50)} / {f(a95)} | {flood['finals']} | {f(b50)} / {f(b95)} | "
          f"{ratio(a50, b50)} / {ratio(a95, b95)} | {flood['flood_s']:.0f} ({flood['flood_s'] / flood['wall_s']:.1f}x) | "
          f"{flood['flood_finals']} | {flood['rss_before']:.0f} | {flood['rss_peak'] - flood['rss_before']:+.0f} |",
          flush=True)
