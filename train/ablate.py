"""``ser-train ablate``: GAP / SAP / SR pooling x (±SCL) x (±kNN), mean ± 95% CI over folds.

Each (pooling, SCL) pair is one ``fit`` run in ``<out>/<pooling>-scl|-ce``; ±kNN needs no retraining:
every trained fold is measured with alpha = 0 (the model alone), with the (k, alpha) searched on its own
validation speakers, and, with two folds or more, with the (k, alpha) searched across folds. A cell
named with ``-nostats`` (``sr-scl-nostats``) is the same without the spectral-statistics branch, for a
recipe that has it.
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


def variants(cfg: TrainConfig, poolings: list[str], cells: list[str] | None = None) -> list[tuple[str, TrainConfig]]:
    """(cell name, config) for every pooling x SCL cell, or only the named ``cells`` (``"sr-scl"``,
    ``"gap-ce"``, and ``"sr-scl-nostats"`` for a recipe with the spectral-statistics branch); SCL on uses
    the configured lambda (0.1 if it was 0)."""
    lam = cfg.loss.scl_lambda or 0.1
    for pooling in poolings:
        if pooling not in ("gap", "sap", "sr"):
            raise ConfigError(f"--poolings takes gap, sap and sr, not {pooling!r}")
    drops = (False, True) if cells and cfg.model.spectral_stats else (False,)
    every = [(p, scl, nostats) for p in (poolings if not cells else ("gap", "sap", "sr")) for scl in (False, True)
             for nostats in drops]
    if cells:
        unknown = set(cells) - {cell_name(*cell) for cell in every}
        if unknown:
            raise ConfigError(f"--cells takes names like gap-scl or sr-ce, not {', '.join(sorted(unknown))}")
        every = [cell for cell in every if cell_name(*cell) in cells]
    out = []
    for pooling, scl, nostats in every:
        loss = dataclasses.replace(cfg.loss, scl_lambda=lam if scl else 0.0)
        model = cfg.model.replace(pooling=pooling, spectral_stats=cfg.model.spectral_stats and not nostats)
        out.append((cell_name(pooling, scl, nostats), cfg.replace(model=model, loss=loss)))
    return out


def cell_name(pooling: str, scl: bool, nostats: bool = False) -> str:
    """The cell's run folder: ``<pooling>-scl`` or ``<pooling>-ce``, then ``-nostats`` for a cell that
    drops the recipe's spectral-statistics branch."""
    return f"{pooling}-{'scl' if scl else 'ce'}" + ("-nostats" if nostats else "")


def run(cfg: TrainConfig, out: str | Path, device: torch.device, poolings: list[str], resume: bool = False,
        cells: list[str] | None = None) -> str:
    """Train every variant and return (and write ``ablation.md`` / ``ablation.json``) the table."""
    out = Path(out)
    data = fit.load_data(cfg)
    rows = []
    for name, vcfg in variants(cfg, poolings, cells):
        log.info("ablation: %s", name)
        summary = fit.run(vcfg, out / name, device, resume=resume, data=data)
        if not summary:  # a torchrun rank other than 0
            continue
        cell = {"cell": name, "pooling": vcfg.model.pooling, "scl": vcfg.loss.scl_lambda > 0,
                "stats": vcfg.model.spectral_stats, "folds": summary["folds"]}
        for knn, key in (("none", "test"), ("fold", "test_knn"), ("cross-fold", "test_knn_xfold")):
            if key in summary:
                rows.append(cell | {"knn": knn, "ua": summary[key]["ua"], "wa": summary[key]["wa"]})
    if not rows:
        return ""
    write_json(out / "ablation.json", {"rows": rows})
    table = ablation_table(rows)
    atomic_write(out / "ablation.md", lambda tmp: Path(tmp).write_text(table))
    return table


KNN_COLUMN = {"none": "−", "fold": "+ (own val)", "cross-fold": "+ (cross-fold)"}
"""How each kNN row was chosen: none, searched on the fold's own validation speakers, or across folds."""


def ablation_table(rows: list[dict]) -> str:
    lines = ["| pooling | SCL | spectral stats | kNN | UA % (mean ± 95% CI) | WA % (mean ± 95% CI) | folds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pooling'].upper()} | {'+' if r['scl'] else '−'} | {'+' if r['stats'] else '−'} | "
                     f"{KNN_COLUMN[r['knn']]} | {fmt_ci(r['ua'])} | {fmt_ci(r['wa'])} | {r['folds']} |")
    return "\n".join(lines) + "\n"
