"""Device names from a command line (``auto|cpu|cuda|cuda:N``) -> ``torch.device``.

Only the CLI edges (``ser-live``, ``ser-train``) call this; library code takes a ``torch.device``.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device that does not exist here; the message is one sentence."""


def resolve_device(spec: str | None) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda``/``cuda:N`` must exist on this machine."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    index = spec[5:] if spec.startswith("cuda:") else ""
    if spec != "cuda" and not index.isdigit():
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec} asks for CUDA, but torch sees no CUDA device on this machine (use --device cpu)")
    if index and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec} asks for a CUDA device this machine lacks ({torch.cuda.device_count()} visible)")
    return torch.device(spec)
