"""``ser-train ablate``: GAP / SAP / SR pooling x (±SCL) x (±kNN), mean ± 95% CI over folds.

Each (pooling, SCL) pair is one ``fit`` run in ``<out>/<pooling>-scl|-ce``; ±kNN needs no retraining:
every trained fold is measured with alpha = 0 (the model alone) and with its tuned alpha.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from serlive.model import ConfigError
from serlive.model.checkpoint import atomic_write, write_json

from . import fit
from .config import TrainConfig
from .metrics import fmt_ci

log = logging.getLogger(__name__)


def variants(cfg: TrainConfig, poolings: list[str], cells: list[str] | None = None) -> list[tuple[str, bool, TrainConfig]]:
    """(pooling, scl, config) for every cell, or only the named ``cells`` (``"sr-scl"``, ``"gap-ce"``, …);
    SCL on uses the configured lambda (0.1 if it was 0)."""
    lam = cfg.loss.scl_lambda or 0.1
    for pooling in poolings:
        if pooling not in ("gap", "sap", "sr"):
            raise ConfigError(f"--poolings takes gap, sap and sr, not {pooling!r}")
    every = [(p, scl) for p in (poolings if not cells else ("gap", "sap", "sr")) for scl in (False, True)]
    if cells:
        unknown = set(cells) - {cell_name(p, s) for p, s in every}
        if unknown:
            raise ConfigError(f"--cells takes names like gap-scl or sr-ce, not {', '.join(sorted(unknown))}")
        every = [(p, s) for p, s in every if cell_name(p, s) in cells]
    out = []
    for pooling, scl in every:
        loss = dataclasses.replace(cfg.loss, scl_lambda=lam if scl else 0.0)
        out.append((pooling, scl, cfg.replace(model=cfg.model.replace(pooling=pooling), loss=loss)))
    return out


def cell_name(pooling: str, scl: bool) -> str:
    """The cell's run folder: ``<pooling>-scl`` or ``<pooling>-ce``."""
    return f"{pooling}-{'scl' if scl else 'ce'}"


def run(cfg: TrainConfig, out: str | Path, device: torch.device, poolings: list[str], resume: bool = False,
        cells: list[str] | None = None) -> str:
    """Train every variant and return (and write ``ablation.md`` / ``ablation.json``) the table."""
    out = Path(out)
    data = fit.load_data(cfg)
    rows = []
    for pooling, scl, vcfg in variants(cfg, poolings, cells):
        name = cell_name(pooling, scl)
        log.info("ablation: %s", name)
        summary = fit.run(vcfg, out / name, device, resume=resume, data=data)
        if not summary:  # a torchrun rank other than 0
            continue
        for knn, key in ((False, "test"), (True, "test_knn")):
            rows.append({"pooling": pooling, "scl": scl, "knn": knn, "ua": summary[key]["ua"],
                         "wa": summary[key]["wa"], "folds": summary["folds"]})
    if not rows:
        return ""
    write_json(out / "ablation.json", {"rows": rows})
    table = ablation_table(rows)
    atomic_write(out / "ablation.md", lambda tmp: Path(tmp).write_text(table))
    return table


def ablation_table(rows: list[dict]) -> str:
    lines = ["| pooling | SCL | kNN | UA % (mean ± 95% CI) | WA % (mean ± 95% CI) | folds |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pooling'].upper()} | {'+' if r['scl'] else '−'} | {'+' if r['knn'] else '−'} | "
                     f"{fmt_ci(r['ua'])} | {fmt_ci(r['wa'])} | {r['folds']} |")
    return "\n".join(lines) + "\n"
