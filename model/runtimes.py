"""``python -m serlive.model.runtimes --model DIR``: the GE2E model's encoder LSTM and heads under eager torch,
TorchScript (traced, frozen, optimised for inference) and ONNX Runtime (when ``onnxruntime`` and ``onnx`` are
importable: they are not dependencies of ser-live), in one run, on the same inputs.

Printed per part and runtime: the median time of ``--repeats`` calls after a warm-up (the runtimes take turns), its ratio to eager, and the
largest difference from eager (the LSTM's outputs, or the class probabilities of the heads). Eager torch is the
reference and the runtime ser-live uses; another would be kept only if faster with a probability difference of at
most 1e-4 (issue 27).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model_dir


class _Stack(nn.Module):
    """The encoder's three LSTM layers with their states in and out: (B, K, 40), h0, c0 (3, B, 256) ->
    outputs (B, K, 768), hn, cn."""

    def __init__(self, lstms: nn.ModuleList) -> None:
        super().__init__()
        self.lstm = lstms

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        outs, hs, cs = [], [], []
        for i, lstm in enumerate(self.lstm):
            x, (h, c) = lstm(x, (h0[i:i + 1], c0[i:i + 1]))
            outs.append(x)
            hs.append(h)
            cs.append(c)
        return torch.cat(outs, -1), torch.cat(hs), torch.cat(cs)


class _Heads(nn.Module):
    """Pooling, projection and classifier on encoder frames: hidden (B, T, 768), valid and speech (B, T) bool,
    the spectral statistics (B, E) -> class probabilities (B, C) before calibration."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden, valid, speech, extra):
        pooled = torch.cat([self.model.pooling(hidden, speech & valid, valid), extra], dim=-1)
        return torch.softmax(self.model.classifier(self.model.project(pooled)), dim=-1)


def _candidates(module: nn.Module, inputs: tuple, names: list[str], tmp: Path):
    """(runtime name, callable returning the first output as a tensor) for each runtime that builds."""
    yield "eager", lambda: _first(module(*inputs))
    try:
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(module, inputs).eval()))
        yield "torch.jit (trace, freeze, optimize_for_inference)", lambda: _first(traced(*inputs))
    except Exception as exc:  # noqa: BLE001 - a runtime that cannot take the module is a result too
        yield f"torch.jit: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})", None
    try:
        import onnxruntime as ort

        path = tmp / "part.onnx"
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX export
        try:
            torch.onnx.export(module, inputs, str(path), input_names=names, dynamo=False, opset_version=17)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {n: t.numpy() for n, t in zip(names, inputs)}
        yield f"onnxruntime {ort.__version__}", lambda: torch.from_numpy(session.run(None, feed)[0])
    except ImportError:
        yield "onnxruntime: not installed", None
    except Exception as exc:  # noqa: BLE001
        yield f"onnxruntime: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})", None


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serlive.model.runtimes", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, metavar="DIR", help="a GE2E model directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model_dir(args.model)[0].eval()
    if model.config.encoder.kind != "ge2e" or model.spectral is None:
        raise SystemExit(f"python -m serlive.model.runtimes: {args.model} is not a GE2E model with spectral statistics")
    gen = torch.Generator().manual_seed(0)
    parts = []
    for b, k in ((1, 50), (16, 50), (1, 300)):
        x = torch.rand(b, k, 40, generator=gen) * 1e-2
        h = 0.1 * torch.randn(3, b, 256, generator=gen)
        parts.append((f"LSTM x3, batch {b} x {k} frames", _Stack(model.encoder.lstm), (x, h, h.clone()), ["x", "h0", "c0"]))
    t = 150
    hidden = torch.randn(16, t, model.encoder.dim, generator=gen)
    valid = torch.arange(t)[None] < torch.randint(60, t + 1, (16, 1), generator=gen)
    speech = torch.rand(16, t, generator=gen) > 0.3
    extra = torch.randn(16, model.spectral.out_dim, generator=gen)
    parts.append(("heads (SR pooling, projection, classifier), batch 16 x 150 frames", _Heads(model),
                  (hidden, valid, speech, extra), ["hidden", "valid", "speech", "extra"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| part | runtime | ms per call | vs eager | max difference from eager |")
    print("|---|---|---|---|---|")
    with torch.inference_mode(False), torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for name, module, inputs, names in parts:
            built = list(_candidates(module, inputs, names, Path(tmp)))
            ready = [(runtime, fn) for runtime, fn in built if fn is not None]
            outs = [_first(fn()) for _, fn in ready]
            times: list[list[float]] = [[] for _ in ready]
            for _ in range(args.repeats):  # interleaved: a neighbour's load falls on every runtime alike
                for k, (_, fn) in enumerate(ready):
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            eager_s = statistics.median(times[0])
            for (runtime, _), out, ts in zip(ready, outs, times):
                diff = float((out - outs[0]).abs().max())
                print(f"| {name} | {runtime} | {statistics.median(ts) * 1000:.2f} | "
                      f"{statistics.median(ts) / eager_s:.2f} | {diff:.1e} |", flush=True)
            for runtime, fn in built:
                if fn is None:
                    print(f"| {name} | {runtime} | - | - | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
