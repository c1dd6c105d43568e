"""Devices at the CLI edge: "auto" resolved here, and torchrun's environment (WORLD_SIZE, RANK,
LOCAL_RANK) turned into a process group (NCCL on CUDA, gloo on the CPU)."""

from __future__ import annotations

import logging
import os

import torch

from serlive.model import ConfigError
from serlive.model.devices import DeviceError, resolve_device as resolve

log = logging.getLogger(__name__)


def resolve_device(name: str | None) -> torch.device:
    """:func:`serlive.model.devices.resolve_device`, its error as a :class:`ConfigError`."""
    try:
        return resolve(name)
    except DeviceError as exc:
        raise ConfigError(str(exc)) from exc


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def setup_distributed(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; on CUDA, take the GPU of LOCAL_RANK."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend)
    log.info("rank %d of %d on %s (%s)", *world(), device, backend)
    return device


def shard(batches: list, rank: int, size: int) -> list:
    """This rank's share of a batch list, every rank getting the same count (DDP steps in lock-step):
    the list is cycled up to a multiple of ``size``, then dealt round-robin. Unlike DistributedSampler,
    this keeps the length buckets intact."""
    if size <= 1 or not batches:
        return batches
    total = -(-len(batches) // size) * size
    padded = [batches[i % len(batches)] for i in range(total)]
    return padded[rank::size]


def barrier() -> None:
    if world()[1] > 1:
        torch.distributed.barrier()
