"""DDP on the CPU: two gloo processes train one fold together (torchrun's environment, set by hand)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

DATA = Path(__file__).parent / "data" / "ravdess"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, tmp: str, spread: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(size), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from serlive.train import config, fit
    from serlive.train.devices import setup_distributed

    extra = ["protocol.max_folds=2", "run.spread_folds=true"] if spread else []
    from tests.test_train_fit import TINY

    cfg = config.load(None, TINY + [f"data.cache_dir='{tmp}/vad'", "optim.epochs=2", *extra])
    device = setup_distributed(torch.device("cpu"))
    try:
        summary = fit.run(cfg, Path(tmp) / "run", device)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps({"summary": bool(summary)}))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("spread", [False, True])
def test_two_gloo_processes(tmp_path, spread):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), spread), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["summary"] and not ranks[1]["summary"]  # rank 0 aggregates
    folds = sorted(p.name for p in (tmp_path / "run").glob("fold_*"))
    assert folds == (["fold_0", "fold_1"] if spread else ["fold_0"])
    for f in folds:
        result = json.loads((tmp_path / "run" / f / "result.json").read_text())
        assert len(result["history"]) == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["folds"] == len(folds)
