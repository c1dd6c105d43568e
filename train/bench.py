"""Training throughput: seconds of audio per wall-clock second through one full training step
(forward, loss, backward, AdamW), and the projected time of one IEMOCAP fold.

    python -m serlive.train.bench --encoder builtin --batch 32 --seconds 3.7 --steps 3
    python -m serlive.train.bench --encoder wavlm-large --batch 2 --seconds 5 --steps 2

Random-init WavLM Large has the real architecture (no download), so its speed is the real one.
"""

from __future__ import annotations

import argparse
import time

import torch

from serlive.model import EncoderConfig, ModelConfig, SERModel
from serlive.model.bench import WAVLM_LARGE

from .config import LossConfig
from .losses import combined_loss

IEMOCAP_AUDIO_S = 7 * 3600
"""About seven hours of audio in the 5531 four-class IEMOCAP utterances."""


def encoder_config(name: str, freeze: str) -> EncoderConfig:
    if name == "builtin":
        return EncoderConfig(kind="builtin", dim=128, conv_layers=2, transformer_layers=2, heads=4, freeze="none")
    return EncoderConfig(kind="hf", hf_config=WAVLM_LARGE, freeze=freeze)


def time_steps(model: SERModel, batch: int, seconds: float, steps: int, device: torch.device, scl: bool) -> float:
    """Median seconds of one optimiser step on ``batch`` clips (2 * batch rows with SCL views)."""
    rows = 2 * batch if scl else batch
    n = int(seconds * 16000)
    x = torch.randn(rows, n, device=device) * 0.1
    lengths = torch.full((rows,), n, device=device)
    speech = torch.ones(rows, (n - 400) // 320 + 1, dtype=torch.bool, device=device)
    labels = torch.arange(rows, device=device) % len(model.config.labels)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cfg = LossConfig(scl_lambda=0.1 if scl else 0.0)
    times = []
    model.train()
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(x, lengths, speech)
        combined_loss(out, labels, torch.full((rows, 2), float("nan"), device=device), cfg, None, scl).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", choices=["builtin", "wavlm-large"], default="builtin")
    ap.add_argument("--freeze", default="cnn", help="for wavlm-large: none, cnn or all")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-scl", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SERModel(ModelConfig(encoder=encoder_config(args.encoder, args.freeze), dimensional=False)).to(device)
    step_s = time_steps(model, args.batch, args.seconds, args.steps, device, not args.no_scl)
    audio_per_s = args.batch * args.seconds / step_s
    fold_h = args.epochs * 0.8 * IEMOCAP_AUDIO_S / audio_per_s / 3600
    print(f"encoder={args.encoder} device={device} threads={torch.get_num_threads()} batch={args.batch} "
          f"clip={args.seconds:g}s scl={not args.no_scl} steps={args.steps} (median after a warm-up)")
    print(f"step: {step_s:.3f} s; throughput: {audio_per_s:.1f} utterance-seconds per second")
    print(f"projected IEMOCAP fold ({args.epochs} epochs x 80% of 7 h, training steps only): {fold_h:.1f} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
