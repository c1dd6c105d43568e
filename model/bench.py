"""Encoder cost: parameters and CPU (or GPU) time per second of audio, one forward of a 5 s clip.

    python -m serlive.model.bench [--device cpu|cuda] [--seconds 5] [--repeats 3]
    python -m serlive.model.bench --models DIR [DIR ...] [--audio FILE]

Compares the built-in encoder with the GE2E voice encoder and a random-init WavLM Large (the real architecture, no download) in
the same run, and prints a markdown table with the ratio between them. With ``--models``: the whole
Predictor of each model directory (VAD mask, statistics branches, forward, kNN, calibration) on 3 s
pieces of a recording (the bundled demo file by default), one piece at a time, as the live engine calls it
for one stream; ratios against the first directory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .config import EncoderConfig, ModelConfig
from .ser import SERModel

WAVLM_LARGE = dict(
    model_type="wavlm", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_buckets=320, max_bucket_distance=800,
    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
)
"""microsoft/wavlm-large's architecture (its config.json), for random-init speed and memory figures."""

ENCODERS = {
    "built-in": EncoderConfig(kind="builtin"),
    "ge2e (frozen; random init here)": EncoderConfig(kind="ge2e", freeze="all"),
    "wavlm-large (random init)": EncoderConfig(kind="hf", hf_config=WAVLM_LARGE),
}


def time_forward(model: SERModel, seconds: float, repeats: int, device: torch.device, dtype: torch.dtype) -> float:
    """Median wall seconds of one full model forward on a ``seconds``-long clip."""
    n = int(seconds * 16_000)
    x = torch.randn(1, n, device=device) * 0.1
    lengths = torch.tensor([n], device=device)
    speech = torch.ones(1, (n - 400) // 320 + 1, dtype=torch.bool, device=device)
    autocast = device.type == "cuda" and dtype != torch.float32
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x, lengths, speech)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call is a warm-up
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_model_dirs(dirs: list[str], audio_file: str, repeats: int, device: torch.device) -> tuple[int, list[float]]:
    """The number of 3 s pieces of ``audio_file``, and each model directory's whole-Predictor real-time
    factor (median of ``repeats`` passes over them, interleaved in one run)."""
    import numpy as np
    import soundfile

    from .predictor import Predictor

    audio, rate = soundfile.read(audio_file, dtype="float32", always_2d=True)
    piece = 3 * rate
    pieces = [audio[i:i + piece].mean(1) for i in range(0, len(audio) - piece + 1, piece)]
    predictors = [Predictor.from_dir(d, device) for d in dirs]
    times: list[list[float]] = [[] for _ in dirs]
    for p in predictors:
        p.predict(pieces[0], rate)  # warm-up
    for _ in range(repeats):  # interleaved, so load on the machine hits every model alike
        for p, t in zip(predictors, times):
            t0 = time.perf_counter()
            for x in pieces:
                p.predict(x, rate)
            t.append(time.perf_counter() - t0)
    return len(pieces), [float(np.median(t)) / (len(pieces) * 3.0) for t in times]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", metavar="DIR", help="time these model directories' whole Predictor")
    ap.add_argument("--audio", help="recording for --models (default: the bundled demo file)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.models:
        from serlive.stream.cli import demo_file

        audio, repeats = args.audio or str(demo_file()), max(args.repeats, 1)
        n, rtfs = time_model_dirs(args.models, audio, repeats, device)
        print(f"device={device} threads={torch.get_num_threads()} audio={audio} ({n} pieces of 3 s), "
              f"median of {repeats} passes")
        print("| model directory | s compute per s audio (RTF) | vs first |")
        print("|---|---|---|")
        for d, rtf in zip(args.models, rtfs):
            print(f"| {d} | {rtf:.4f} | {rtf / rtfs[0]:.2f}x |")
        return 0
    print(f"device={device} dtype={'float32' if device.type == 'cpu' else args.dtype} threads={torch.get_num_threads()} "
          f"clip={args.seconds:g} s, median of {args.repeats} after a warm-up")
    print("| encoder | parameters (encoder) | parameters (model) | s per forward | s compute per s audio | vs built-in |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, enc in ENCODERS.items():
        model = SERModel(ModelConfig(encoder=enc)).eval().to(device)
        n_enc = sum(p.numel() for p in model.encoder.parameters())
        n_all = sum(p.numel() for p in model.parameters())
        sec = time_forward(model, args.seconds, args.repeats, device, dtype)
        base = base or sec
        print(f"| {name} | {n_enc / 1e6:.2f} M | {n_all / 1e6:.2f} M | {sec:.3f} | {sec / args.seconds:.4f} | {sec / base:.1f}x |")
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
