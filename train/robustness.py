"""``ser-train robustness``: a cross-validation run's fold models, and the classic baseline on the same folds,
on their test speakers' utterances under every condition of :data:`.perturb.BENCHMARK`.

Each test utterance is read whole (as a microphone delivers it, silence included), perturbed once per
condition (seeded by the protocol seed, the condition and the utterance, so a rerun gives the same audio),
and that audio goes to both: the fold's model through the Predictor's path (VAD on the perturbed audio, then
the model's ``speech_pad_s`` cut; kNN, temperature and OOD tempering as the fold's model directory has them)
with and without its kNN datastore, and the baseline (fitted on the fold's training speakers as ``ser-train
baseline`` does) on the same cut. The clean condition is therefore the fold's own test evaluation. Babble
comes from the fold's training speakers; rooms from the benchmark's bank (:func:`.perturb.benchmark_rooms`).

Per condition: UA, WA, the 10-bin expected calibration error of the top probability, the share flagged
``uncertain``, the mean OOD score and the share of predictions that differ from clean; mean ± 95% CI over
folds and the drop from clean, in ``robustness.json`` and ``robustness.md``. Each finished fold is kept in
``fold_<i>/robustness.json`` and reused by a rerun of the same conditions on the same weights.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from serlive.model import ConfigError, Predictor, trim_to_speech
from serlive.model.calibration import expected_calibration_error
from serlive.model.checkpoint import atomic_write, write_json

from . import lines, perturb
from .baseline import fit_fold, utterance_features
from .uncertainty import SHIPPED
from .config import load_json
from .data import load_audio
from .fit import CONFIG_FILE, load_data
from .metrics import classification, fmt_ci, mean_ci
from .protocols import make_folds

log = logging.getLogger(__name__)

FOLD_FILE = "robustness.json"


def select(names: str = "") -> list[perturb.Condition]:
    """The benchmark conditions named in a comma-separated list (all when empty); clean is always kept first."""
    if not names.strip():
        return list(perturb.BENCHMARK)
    by_name = {c.name: c for c in perturb.BENCHMARK}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ConfigError(f"unknown condition(s) {', '.join(map(repr, unknown))}; known: {', '.join(by_name)}")
    return [perturb.BENCHMARK[0]] + [by_name[n] for n in wanted if n != "clean"]


def run(run_dir: str | Path, out: str | Path | None = None, conditions: list[perturb.Condition] | None = None,
        folds: list[int] | None = None, fresh: bool = False) -> dict:
    """The benchmark of ``run_dir``; writes ``out`` (default ``run_dir/robustness.json``) and its ``.md``."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE}: is it a ser-train fit run directory?")
    cfg = load_json(run_dir / CONFIG_FILE)
    if cfg.run.num_threads:
        import torch

        torch.set_num_threads(cfg.run.num_threads)
    conditions = conditions or list(perturb.BENCHMARK)
    if conditions[0].family != "clean":
        conditions = [perturb.BENCHMARK[0]] + [c for c in conditions if c.family != "clean"]
    if any(c.family == "codec" for c in conditions):
        lines.require_ffmpeg("the codec conditions")
    data = load_data(cfg, progress=False)
    chosen = [f for f in make_folds(data.utts, cfg.protocol) if folds is None or f.index in folds]
    chosen = [f for f in chosen if (run_dir / f"fold_{f.index}" / "model" / "config.json").is_file()]
    if not chosen:
        raise ConfigError(f"{run_dir} has no finished fold with a model directory (fold_<i>/model)")
    rt60s = tuple(sorted({c.value for c in conditions if c.family == "reverb"}))
    rooms = perturb.benchmark_rooms(rt60s_s=rt60s) if rt60s else None
    feats = np.stack([utterance_features(data.wave(i), data.masks[i]) for i in range(len(data))])
    calibrations = fold_calibrations(run_dir)
    rows = []
    for fold in chosen:
        fold_dir = run_dir / f"fold_{fold.index}"
        settings = calibrations.get(fold.index)
        key = json.loads(json.dumps(_key(cfg, conditions, fold_dir) | {"calibration": settings}))  # as saved: lists
        saved = fold_dir / FOLD_FILE
        if not fresh and saved.is_file() and json.loads(saved.read_text()).get("key") == key:
            log.info("fold %d: benchmark already done; reusing %s", fold.index, saved)
            rows.append(json.loads(saved.read_text()))
            continue
        row = run_fold(cfg, data, fold, fold_dir, conditions, rooms, feats, settings) | {"key": key}
        write_json(saved, row)
        log.info("fold %d: %d utterances x %d conditions in %.1f s; kept in %s", fold.index, row["n_test"],
                 len(conditions), row["seconds"], saved)
        rows.append(row)
    summary = summarise(rows, conditions, cfg.model.labels) | {"run": str(run_dir), "seed": cfg.protocol.seed}
    out = Path(out) if out else run_dir / "robustness.json"
    write_json(out, summary)
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown_table(summary)))
    return summary


def fold_calibrations(run_dir: Path) -> dict[int, dict]:
    """Each fold's calibration as ``ser-train calibrate`` fitted it on the OTHER folds (temperature, shift,
    speech limit, flag thresholds; the pooled OOD reference for the score), {} before calibrate has run."""
    path = run_dir / "calibration.json"
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    keep = ("temperature", "embedding_mean") + SHIPPED
    reference = {"ood_reference": tuple(result["final"].get("ood_reference", ())),
                 "ood_statistic": result["final"]["ood_statistic"]}
    return {f["fold"]: {k: tuple(f[k]) if k == "embedding_mean" else f[k] for k in keep if k in f} | reference
            | ({"adapt_prior": f["prior"]} if "prior" in f else {}) for f in result["per_fold"]}


def _key(cfg, conditions, fold_dir: Path) -> dict:
    weights = fold_dir / "model" / "model.safetensors"
    stat = weights.stat() if weights.is_file() else None
    return {"conditions": [c.name for c in conditions], "seed": cfg.protocol.seed, "version": 5,
            "weights": [stat.st_size, stat.st_mtime_ns] if stat else None}


def run_fold(cfg, data, fold, fold_dir: Path, conditions, rooms, feats: np.ndarray, settings: dict | None = None) -> dict:
    """One fold: every condition's figures for the model (± kNN) and the baseline, and the seconds it took.
    ``settings``: the fold's cross-fitted calibration (:func:`fold_calibrations`; None: the fold model's own)."""
    start = time.monotonic()
    labels, seed = cfg.model.labels, cfg.protocol.seed
    shipped = Predictor.from_dir(fold_dir / "model")  # kNN as the fold's model directory says
    if settings:
        shipped = shipped.with_calibration(**settings)
    alone = Predictor(shipped.model, shipped.datastore, use_knn=False)
    alone.config = shipped.config  # the same calibration, without the kNN vote
    baseline, _ = fit_fold(feats, data.labels, fold, labels)
    pool = perturb.babble_pool(data, fold, seed)
    test = [int(i) for i in fold.test]
    originals = [load_audio(data.utts[i].path, data.max_samples) for i in test]
    y = data.labels[test]
    out, clean_pred = {}, None
    for cond in conditions:
        waves = _perturbed(cond, originals, test, seed, pool, rooms)
        masks = [shipped.mask(w) for w in waves]
        solo, knn = _model_outputs(shipped, alone, waves, masks, cfg.run.eval_batch_size)
        entry = {"model": _scores(solo, y, labels)} | ({"model_knn": _scores(knn, y, labels)} if knn else {})
        bfeats = np.stack([utterance_features(*_cut(w, m, cfg.model.speech_pad_s)) for w, m in zip(waves, masks)])
        entry["baseline"] = _scores(baseline.predict_proba(bfeats), y, labels)
        pred = np.array([labels.index(p.label) for p in solo])
        clean_pred = pred if cond.family == "clean" else clean_pred
        if clean_pred is not None:
            entry["model"]["changed"] = float(np.mean(pred != clean_pred))
        if shipped.can_adapt:
            entry["online"] = _online(shipped, knn or solo, y, labels, seed)
        out[cond.name] = entry
        log.info("fold %d, %s: model UA %.3f, baseline UA %.3f", fold.index, cond.name, entry["model"]["ua"],
                 entry["baseline"]["ua"])
    seconds = time.monotonic() - start
    return {"fold": fold.index, "test_groups": list(fold.test_groups), "n_test": len(test), "knn": shipped.use_knn,
            "temperature": shipped.config.calibration.temperature, "seconds": seconds, "conditions": out}


def _perturbed(cond, originals: list[np.ndarray], index: list[int], seed: int, pool, rooms) -> list[np.ndarray]:
    """Each original under ``cond``; codecs code the fold's utterances in one ffmpeg run."""
    if cond.family == "codec":
        return lines.codec_many(originals, cond.kind, cond.value)
    c = perturb.BENCHMARK.index(cond)
    return [perturb.apply(cond, x, np.random.default_rng([seed, c, i]), pool, rooms) for x, i in zip(originals, index)]


def _model_outputs(shipped: Predictor, alone: Predictor, waves, masks, batch_size: int):
    """Predictions of the model alone and, when the model directory has a kNN datastore in use, with it
    (None otherwise), from one forward pass per batch of similar lengths."""
    order = np.argsort([len(w) for w in waves], kind="stable")
    solo, knn = [None] * len(waves), [None] * len(waves)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        preds = shipped.predict_prepared([waves[i] for i in idx], [masks[i] for i in idx])
        own = preds
        if shipped.use_knn:
            own = alone.refinish(preds)
        for i, p, q in zip(idx, own, preds):
            solo[i], knn[i] = p, q
    return solo, (knn if shipped.use_knn else None)


ONLINE_ORDERS = 10
"""Random orders of the test speaker's utterances in the online column (as ``ser-train evaluate --orders``)."""


def _online(shipped: Predictor, preds, y: np.ndarray, labels, seed: int) -> dict:
    """UA / WA of the shipped path under the online per-speaker protocol, all of the fold's test speaker's
    utterances in the same condition (one person in one room or on one line), each knowing only the earlier
    ones; mean over :data:`ONLINE_ORDERS` orders."""
    from .calibrate import online_labels

    rng, prior = np.random.default_rng(seed), shipped.config.calibration.adapt_prior
    runs = [classification(y, online_labels(shipped, preds, rng, prior), labels) for _ in range(ONLINE_ORDERS)]
    return {"ua": float(np.mean([r["ua"] for r in runs])), "wa": float(np.mean([r["wa"] for r in runs]))}


def _cut(wave: np.ndarray, mask: np.ndarray, pad_s: float | None):
    return trim_to_speech(wave, mask, pad_s) if pad_s is not None else (wave, mask)


def _scores(preds, y: np.ndarray, labels) -> dict:
    """UA, WA, recall; for Predictions also the ECE of the top probability, the share flagged uncertain and
    the mean OOD score (None without an OOD reference); for a probability array (the baseline) not."""
    probs = np.array([p.probs for p in preds]) if not isinstance(preds, np.ndarray) else preds
    m = classification(y, probs.argmax(1), labels)
    out = {"ua": m["ua"], "wa": m["wa"], "recall": m["recall"]}
    if isinstance(preds, np.ndarray):
        return out
    ood = [p.ood for p in preds if p.ood is not None]
    # without an OOD reference (a fold model before ``ser-train calibrate``) nothing can be flagged: no figure
    uncertain = float(np.mean([p.uncertain for p in preds])) if ood else None
    return out | {"ece": expected_calibration_error(probs, y), "uncertain": uncertain,
                  "ood": float(np.mean(ood)) if ood else None}


def summarise(rows: list[dict], conditions, labels) -> dict:
    """Mean ± 95% CI over folds per condition and system, and the drop in mean UA/WA from clean (points)."""
    systems = ["model"] + (["model_knn"] if all(r["knn"] for r in rows) else []) \
        + (["online"] if all("online" in c for r in rows for c in r["conditions"].values()) else []) + ["baseline"]
    table = []
    for cond in conditions:
        entry = {"name": cond.name, "family": cond.family, "value": cond.value, "kind": cond.kind}
        for system in systems:
            per = [r["conditions"][cond.name][system] for r in rows]
            entry[system] = {m: mean_ci([p[m] for p in per]) for m in ("ua", "wa", "ece", "changed", "uncertain", "ood")
                             if m in per[0]}
        table.append(entry)
    clean = table[0]
    for entry in table:
        for system in systems:
            for m in ("ua", "wa"):
                entry[system][f"drop_{m}"] = 100 * (clean[system][m]["mean"] - entry[system][m]["mean"])
    seconds = [r["seconds"] for r in rows]
    return {"folds": len(rows), "labels": list(labels), "systems": systems, "conditions": table,
            "seconds_per_fold": mean_ci(seconds), "per_fold": rows}


NAMES = {"model": "model", "model_knn": "model + kNN", "online": "online", "baseline": "baseline"}


def markdown_table(summary: dict) -> str:
    """One row per condition: UA (mean ± 95% CI over folds, %) and its drop from clean per system, WA, the
    models' expected calibration error, and the share of the shipped path's predictions flagged uncertain."""
    systems = summary["systems"]
    models = [s for s in systems if s not in ("baseline", "online")]
    head = ["condition"] + [f"{NAMES[s]} UA" for s in systems] + [f"Δ UA {NAMES[s]}" for s in systems] \
        + [f"{NAMES[s]} WA" for s in systems] + [f"{NAMES[s]} ECE" for s in models] + ["uncertain"]
    lines_ = [f"Robustness benchmark of {summary['run']}: {summary['folds']} folds, mean ± 95% CI over folds, %; "
              "Δ = points below clean. online: the shipped path (kNN, calibration) with per-speaker adaptation, "
              "the test speaker's utterances in that condition in random orders, each knowing only the earlier "
              "ones. ECE: 10-bin expected calibration error of the top probability. uncertain: "
              f"share of {NAMES[models[-1]]} predictions flagged uncertain (— where the fold models carry no OOD "
              "reference).", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary["conditions"]:
        cells = [e["name"]] + [fmt_ci(e[s]["ua"]) for s in systems] + [f"{e[s]['drop_ua']:+.1f}" for s in systems] \
            + [fmt_ci(e[s]["wa"]) for s in systems] + [fmt_ci(e[s]["ece"], 1.0, 3) for s in models] \
            + [fmt_ci(e[models[-1]]["uncertain"])]
        lines_.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines_) + "\n"
