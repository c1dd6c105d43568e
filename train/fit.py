"""``ser-train fit``: every fold of the protocol, one model directory per fold, and the aggregate
metrics (mean ± 95% CI over folds) in ``metrics.json`` and ``metrics.md`` of the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from serlive.model import ConfigError
from serlive.model.checkpoint import atomic_write, write_json

from .batching import AudioSet
from .cache import MaskCache
from .config import TrainConfig, load_json
from .devices import barrier, world
from .draws import babble_exclusions
from .data import DataError, columns_of, max_samples_of, read_manifest
from .fold import RESULT_FILE, read_result, run_fold
from .knn_tune import NEIGHBOURS_FILE, cross_fold, load_neighbours
from .metrics import fmt_ci, mean_ci
from .protocols import check_classes, make_folds
from .resume import CHECKPOINT_FILE

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"


def load_data(cfg: TrainConfig, progress: bool = True) -> AudioSet:
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is not set (use --set data.manifest=PATH)")
    utts = read_manifest(cfg.data.manifest, cfg.model.labels, cfg.data.label_map, columns_of(cfg.data))
    max_samples = max_samples_of(cfg.model.max_duration_s)
    cache = MaskCache(cfg.data.cache_dir or None, cfg.model.vad, max_samples)
    return AudioSet(utts, max_samples, cache, cfg.data.preload, progress, cfg.model.speech_pad_s)


def check_resume(cfg: TrainConfig, out: Path, resume: bool = True) -> None:
    """A resumed run must use the configuration it started with (the saved one wins on mismatch), and a new
    run must not overwrite the folds of a run of another configuration."""
    saved = out / CONFIG_FILE
    if not saved.is_file():
        return
    try:
        same = load_json(saved).to_dict() == cfg.to_dict()
    except ConfigError as exc:
        raise ConfigError(f"{exc}; choose another --out, or delete it to start over") from exc
    if not same and resume:
        raise ConfigError(f"{saved} differs from the given configuration; resume with the same config")
    started = any(out.glob(f"fold_*/{CHECKPOINT_FILE}")) or any(out.glob(f"fold_*/{RESULT_FILE}"))
    if not same and started:  # a run that stopped before its first epoch is simply replaced
        raise ConfigError(f"{out} holds a run of another configuration ({saved}); choose another --out, "
                          f"or delete it to overwrite that run")


def run(cfg: TrainConfig, out: str | Path, device: torch.device, resume: bool = False,
        only_folds: list[int] | None = None, data: AudioSet | None = None) -> dict:
    """Train and evaluate all (or ``only_folds``) folds into ``out``; returns the aggregate dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, size = world()
    check_resume(cfg, out, resume)
    if rank == 0:
        cfg.save(out / CONFIG_FILE)
    if size > 1 and cfg.run.freeze_encoder and not cfg.run.spread_folds:
        raise ConfigError("--freeze-encoder with several processes needs run.spread_folds=true (DDP needs the full model)")
    if device.type == "cpu" and cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    data = data or load_data(cfg)
    folds = make_folds(data.utts, cfg.protocol)
    exclude = babble_exclusions(np.array([u.speaker for u in data.utts]), folds, cfg.run.babble_groups) \
        if cfg.run.babble_groups else {}  # on every fold, before --folds picks some
    if only_folds:
        if unknown := sorted(set(only_folds) - {f.index for f in folds}):
            raise ConfigError(f"--folds {','.join(map(str, unknown))}: this protocol has folds "
                              f"{', '.join(str(f.index) for f in folds)}")
        folds = [f for f in folds if f.index in only_folds]
    check_classes(data.utts, folds, cfg.model.labels)
    spread = size > 1 and cfg.run.spread_folds
    for fold in folds[rank::size] if spread else folds:
        log.info("fold %d: %d train, %d val (%s), %d test (%s)", fold.index, len(fold.train), len(fold.val),
                 ",".join(fold.val_groups), len(fold.test), ",".join(fold.test_groups))
        run_fold(cfg, data, fold, out / f"fold_{fold.index}", device, resume, ddp=size > 1 and not spread,
                 babble_exclude=exclude.get(fold.index))
    barrier()
    if rank > 0:
        return {}
    results = [read_result(out / f"fold_{f.index}" / RESULT_FILE) for f in folds]
    summary = aggregate(results, cfg.model.labels)
    summary |= cross_fold_knn(cfg, results, [out / f"fold_{f.index}" / NEIGHBOURS_FILE for f in folds])
    write_json(out / "metrics.json", summary)
    atomic_write(out / "metrics.md", lambda tmp: Path(tmp).write_text(markdown_table(summary)))
    return summary


def cross_fold_knn(cfg: TrainConfig, results: list[dict], paths: list[Path]) -> dict:
    """``test_knn_xfold``: test metrics with (k, alpha) searched on the other folds' validation speakers,
    and ``knn_final``: the setting searched on every fold's (see :func:`knn_tune.cross_fold`)."""
    if not cfg.knn.tune or len(results) < 2 or not all(p.is_file() for p in paths):
        return {}
    xf = cross_fold(results, [load_neighbours(p) for p in paths], cfg.knn, cfg.model.labels)
    rows = xf["per_fold"]
    entry = summarise(rows, cfg.model.labels)
    entry["per_fold"] = [{k: r[k] for k in ("fold", "k", "alpha", "pooled_val", "ua", "wa")} for r in rows]
    return {"test_knn_xfold": entry, "knn_final": xf["final"]}


def summarise(rows: list[dict], labels: tuple[str, ...]) -> dict:
    """Mean ± 95% CI over per-fold metric dicts of UA, WA, per-class recall and any dimensional metric;
    the confusion matrices summed."""
    entry = {m: mean_ci([r.get(m) for r in rows]) for m in ("ua", "wa")}
    entry["recall"] = {c: mean_ci([r["recall"].get(c) for r in rows]) for c in labels}
    for m in ("valence_mae", "valence_ccc", "arousal_mae", "arousal_ccc"):
        if any(m in r for r in rows):
            entry[m] = mean_ci([r.get(m) for r in rows])
    entry["confusion"] = np.sum([r["confusion"] for r in rows], axis=0).tolist() if rows else []
    return entry


def aggregate(results: list[dict], labels: tuple[str, ...]) -> dict:
    """Mean ± 95% CI over folds of UA, WA, per-class recall (± kNN) and dimensional metrics."""
    out: dict = {"folds": len(results), "labels": list(labels), "per_fold": []}
    for key in ("test", "test_knn"):
        out[key] = summarise([r[key] for r in results], labels)
    out["per_fold"] = [{"fold": r["fold"], "test_groups": r["test_groups"], "ua": r["test"]["ua"], "wa": r["test"]["wa"],
                        "ua_knn": r["test_knn"]["ua"], "wa_knn": r["test_knn"]["wa"], "k": r["knn"]["k"],
                        "alpha": r["knn"]["alpha"], "best_epoch": r.get("best_epoch")} for r in results]
    return out


def markdown_table(summary: dict) -> str:
    """The aggregate as a markdown table: rows are metrics, columns without / with kNN."""
    n = summary["folds"]
    lines = [f"| metric ({n} fold{'s' if n != 1 else ''}, mean ± 95% CI, %) | model | model + kNN |", "|---|---|---|"]
    a, b, x = summary["test"], summary["test_knn"], summary.get("test_knn_xfold")
    if x is not None:
        lines = [lines[0] + " model + kNN (cross-fold k, α) |", "|---|---|---|---|"]
    for m in ("ua", "wa"):
        lines.append(f"| {m.upper()} | {fmt_ci(a[m])} | {fmt_ci(b[m])} |" + (f" {fmt_ci(x[m])} |" if x else ""))
    for c in summary["labels"]:
        lines.append(f"| recall {c} | {fmt_ci(a['recall'][c])} | {fmt_ci(b['recall'][c])} |"
                     + (f" {fmt_ci(x['recall'][c])} |" if x else ""))
    if "knn_final" in summary:
        f = summary["knn_final"]
        lines.append(f"\nkNN for a model of all the speakers (searched on every fold's validation speakers): "
                     f"k = {f['k']}, α = {f['alpha']:g} (UA {100 * f['val_ua']:.1f} vs {100 * f['val_ua_model']:.1f} alone)")
    for m in ("valence_mae", "valence_ccc", "arousal_mae", "arousal_ccc"):
        if m in a:
            lines.append(f"| {m} | {fmt_ci(a[m], 1.0)} | {fmt_ci(b[m], 1.0)} |")
    return "\n".join(lines) + "\n"


__all__ = ["run", "load_data", "aggregate", "markdown_table", "DataError"]
