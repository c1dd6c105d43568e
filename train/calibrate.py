"""``ser-train calibrate``: confidence, out-of-distribution reference and per-speaker adaptation of a
cross-validated recipe, measured on its folds and optionally written into a model directory.

For every fold of a finished ``ser-train fit`` run, the fold's model (through :class:`Predictor`, the live
path, with the cross-fold kNN setting the bundled model ships with) predicts its validation and test
speakers. Then, each fold scored with settings chosen on the OTHER folds' test speakers (cross-fitting:
unseen by their own models and datastores, as a user is; validation speakers are not, see :func:`_others`):

* **temperature**: fitted by NLL; ECE on the fold's test speakers before and after (10 bins), and pooled;
  the final model takes it only if it lowers the pooled ECE;
* **shift-aware temperature** (``--degraded N``, default 2): the test speakers' whole files under N draws
  of the recipe's training augmentation (noises, rooms, level, clipping, telephone, codecs; other settings
  and rooms than ``ser-train robustness``'s), predicted; ``shift_beta`` fitted by NLL with T fixed, from the
  median atypicality of clean speech on; ECE on degraded speech with one T and with the shift; the
  ``speech_limit`` (the 99th percentile of the checked speech's atypicality); and, with every setting as the model directory will
  have it (``min_confidence`` 0.4, ``min_voiced`` 0.02), the share flagged ``uncertain`` on clean and
  degraded speech and how often the flagged and the others are right;
* **OOD reference**: the atypicality (see :mod:`serlive.model.calibration`) of every fold's test speakers,
  unseen by the model that scored them; how much in-domain speech it flags;
* (a run still training is measured on its finished folds; the result says how many)
* **online per-speaker protocol**: each test speaker's utterances in ``orders`` random orders, each
  predicted knowing only the ones before it (:class:`SpeakerAdapter`), UA averaged over the orders, beside
  the utterance-alone UA; the adapter's shrinkage prior chosen on the other folds.

``--apply MODEL_DIR`` writes the final settings (temperature and prior chosen on every fold, the OOD
reference, and that model's own mean training embedding) into MODEL_DIR's config.json and the figures
into its metrics.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serlive.model import SAMPLE_RATE_HZ, ConfigError, KnnConfig, Predictor, load_model_dir
from serlive.model.adapt import SpeakerAdapter, adapted
from serlive.model.calibration import (apply_temperature, expected_calibration_error, fit_temperature, ood_score,
                                       reference_percentiles)
from serlive.model.checkpoint import CONFIG_FILE as MODEL_CONFIG, METRICS_FILE, write_json

from . import perturb
from .augment import TrainAugment
from .config import load_json
from .data import load_audio
from .fit import CONFIG_FILE, load_data
from .fold import RESULT_FILE
from .metrics import classification, fmt_ci, mean_ci
from .protocols import make_folds
from .uncertainty import SHIPPED, pct, shift_settings, shipped_path

log = logging.getLogger(__name__)

PRIORS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Shrinkage priors (pseudo-utterances) tried for the per-speaker adaptation."""

PRIOR_SLACK = 0.01
"""The adaptation prior kept is the largest within this much online UA of the best: the folds' speakers are
balanced over the emotions, which the mean shift assumes, so a quick shift wins there and costs natural, mostly
calm speech (``ser-train crosscorpus --skew``; on 5 grouped RAVDESS folds a prior of 8 beat 2 even balanced)."""


def choose_prior(online_ua: dict[float, float]) -> float:
    """The largest prior whose online UA is within :data:`PRIOR_SLACK` of the best prior's."""
    best = max(online_ua.values())
    return max(p for p, ua in online_ua.items() if ua >= best - PRIOR_SLACK)


@dataclass(frozen=True, slots=True)
class Split:
    """One fold's predictions over one split: final probabilities (kNN applied, T = 1), labels, raw
    embeddings, atypicality, and the per-utterance data :meth:`Predictor.adapt` needs."""

    probs: np.ndarray
    labels: np.ndarray
    preds: list


def predict_split(predictor: Predictor, waves: list[np.ndarray], labels: np.ndarray) -> Split:
    preds = []
    for start in range(0, len(waves), 16):
        preds += predictor.predict_batch(waves[start:start + 16])
    return Split(np.array([p.probs for p in preds]), np.asarray(labels), preds)


def online_labels(predictor: Predictor, preds: list, rng: np.random.Generator, prior: float) -> np.ndarray:
    """One speaker's utterances in a random order, each predicted knowing only the ones before it (its
    label index after adaptation), returned in the original order."""
    adapter = SpeakerAdapter(np.array(predictor.config.calibration.embedding_mean), prior)
    y_pred = np.zeros(len(preds), np.int64)
    for i in rng.permutation(len(preds)):
        y_pred[i] = predictor.labels.index(adapted(predictor, preds[i], adapter).label)
        if preds[i].speech_frames > 0 and not preds[i].far:  # as the engine: no voice, no learning
            adapter.update(preds[i].embedding)
    return y_pred


def online_ua(predictor: Predictor, split: Split, prior: float, orders: int, seed: int) -> float:
    """Mean UA over ``orders`` random orders of one speaker's utterances, each adapted causally."""
    rng = np.random.default_rng(seed)
    return float(np.mean([classification(split.labels, online_labels(predictor, split.preds, rng, prior),
                                          predictor.labels)["ua"] for _ in range(orders)]))


def degraded_split(predictor: Predictor, cfg, data, fold, draws: int) -> Split:
    """The fold's test speakers' whole files under ``draws`` draws of the recipe's training augmentation
    (seeded by the protocol seed and the fold), predicted."""
    seed = cfg.protocol.seed
    augment = TrainAugment(cfg.augment, perturb.babble_pool(data, fold, seed), np.random.default_rng([seed, 1, fold.index]))
    files = [load_audio(data.utts[i].path, data.max_samples) for i in fold.test]
    waves = [w for _ in range(draws) for w in augment.batch(files)]
    return predict_split(predictor, waves, np.tile(data.labels[fold.test], draws))


SHORT_PREFIXES_S = (0.4, 0.6, 0.8, 1.0, 1.5)
"""Seconds of speech an interim has heard: the short split cuts each test utterance's speech span there."""


def short_split(predictor: Predictor, cfg, data, fold) -> Split:
    """The fold's test utterances cut to their first :data:`SHORT_PREFIXES_S` seconds of speech (from the start
    of the speech span with the model's padding, as an open segment with its pre-roll), predicted."""
    pad = cfg.model.speech_pad_s or 0.0
    waves = [data.wave(i)[: int(round((s + pad) * SAMPLE_RATE_HZ))] for s in SHORT_PREFIXES_S for i in fold.test]
    return predict_split(predictor, waves, np.tile(data.labels[fold.test], len(SHORT_PREFIXES_S)))


def fold_predictor(model_dir: Path, knn: dict | None, embedding_mean: np.ndarray) -> Predictor:
    """The fold's model with the cross-fold kNN setting and its training mean embedding (T = 1, no OOD)."""
    model, cfg, store, _ = load_model_dir(model_dir)
    statistic = "spectral_z" if cfg.spectral_stats else "knn_distance"  # see serlive.model.calibration
    cal = cfg.calibration.__class__(ood_statistic=statistic, embedding_mean=tuple(float(x) for x in embedding_mean))
    if knn is not None:
        cfg = cfg.replace(knn=KnnConfig(k=knn["k"], alpha=knn["alpha"], temperature=cfg.knn.temperature))
    model.config = cfg.replace(calibration=cal)
    return Predictor(model, store)


def mean_embedding(model_dir: Path, waves: list[np.ndarray]) -> np.ndarray:
    """The mean raw embedding of a model over ``waves`` (its training utterances)."""
    predictor = Predictor.from_dir(model_dir, use_knn=False)
    embs = [p.embedding for s in range(0, len(waves), 16) for p in predictor.predict_batch(waves[s:s + 16])]
    return np.mean(embs, axis=0)


def run(run_dir: str | Path, orders: int = 10, apply_to: str | Path | None = None, degraded: int = 2) -> dict:
    run_dir = Path(run_dir)
    cfg = load_json(run_dir / CONFIG_FILE)
    data = load_data(cfg, progress=False)
    summary = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    xknn = {r["fold"]: r for r in summary.get("test_knn_xfold", {}).get("per_fold", [])}
    folds = [f for f in make_folds(data.utts, cfg.protocol) if (run_dir / f"fold_{f.index}" / RESULT_FILE).is_file()]
    if len(folds) < 2:
        raise ConfigError(f"{run_dir} has {len(folds)} finished fold(s); calibration needs two or more")
    rows = []
    for fold in folds:
        model_dir = run_dir / f"fold_{fold.index}" / "model"
        predictor = fold_predictor(model_dir, xknn.get(fold.index), mean_embedding(model_dir, [data.wave(i) for i in fold.train]))
        test = predict_split(predictor, [data.wave(i) for i in fold.test], data.labels[fold.test])
        rows.append({"fold": fold, "predictor": predictor, "test": test,
                     "degraded": degraded_split(predictor, cfg, data, fold, degraded) if degraded else None,
                     "short": short_split(predictor, cfg, data, fold) if degraded else None,
                     "test_online": {prior: online_ua(predictor, test, prior, orders, cfg.protocol.seed) for prior in PRIORS}})
        log.info("fold %d: predictions done", fold.index)
    result = score(rows, cfg.model.labels, orders, cfg.protocol.seed)
    write_json(run_dir / "calibration.json", result)
    (run_dir / "calibration.md").write_text(markdown(result))
    if apply_to is not None:
        apply(Path(apply_to), result, mean_embedding(Path(apply_to), [data.wave(i) for i in range(len(data))]))
    return result


def _others(rows: list[dict], row: dict) -> list[dict]:
    """The other folds whose test speakers exclude ``row``'s. Their test speakers are unseen by their own
    model and datastore, as a user is; a fold's validation speakers are not (their keys are in its kNN
    datastore, so their predictions are too easy: a temperature fitted on them sharpened the test
    predictions and doubled the ECE)."""
    test = set(row["fold"].test_groups)
    return [r for r in rows if r is not row and not set(r["fold"].test_groups) & test]


def score(rows: list[dict], labels: tuple[str, ...], orders: int, seed: int) -> dict:
    per_fold, atyp = [], []
    for row in rows:
        others = _others(rows, row)
        t = fit_temperature(np.concatenate([r["test"].probs for r in others]), np.concatenate([r["test"].labels for r in others]))
        prior = choose_prior({p: float(np.mean([r["test_online"][p] for r in others])) for p in PRIORS})
        test, predictor = row["test"], row["predictor"]
        others = others or [row]  # a lone fold (protocols with one) can only be fitted on itself
        atyp += [p.atypicality for p in test.preds if p.atypicality is not None]
        per_fold.append({
            "fold": row["fold"].index, "temperature": t, "prior": prior,
            "ua": classification(test.labels, test.probs.argmax(1), labels)["ua"],
            "ua_online": row["test_online"][prior],
            "ece": expected_calibration_error(test.probs, test.labels),
            "ece_calibrated": expected_calibration_error(apply_temperature(test.probs, t), test.labels),
            "embedding_mean": [round(float(x), 6) for x in predictor.config.calibration.embedding_mean],
        } | shift_settings(others, t))
    final_t = fit_temperature(np.concatenate([r["test"].probs for r in rows]), np.concatenate([r["test"].labels for r in rows]))
    final_prior = choose_prior({p: float(np.mean([r["test_online"][p] for r in rows])) for p in PRIORS})
    reference = reference_percentiles(atyp) if atyp else ()
    out = {key: mean_ci([f[key] for f in per_fold]) for key in ("ua", "ua_online", "ece", "ece_calibrated")}
    # ECE over one actor's 36 utterances is mostly sampling noise: the pooled figure is the one to quote.
    probs = np.concatenate([r["test"].probs for r in rows])
    scaled = np.concatenate([apply_temperature(r["test"].probs, f["temperature"]) for r, f in zip(rows, per_fold)])
    y = np.concatenate([r["test"].labels for r in rows])
    out |= {"ece_pooled": expected_calibration_error(probs, y), "ece_pooled_calibrated": expected_calibration_error(scaled, y)}
    if out["ece_pooled_calibrated"] >= out["ece_pooled"]:
        final_t = 1.0  # the temperature does not earn its place: the probabilities stay as they are
    if reference:
        flagged = ood_score(np.array(atyp), reference) >= 0.99
        out["ood_flagged_in_domain"] = float(flagged.mean())
    final = {"temperature": final_t, "adapt_prior": final_prior,
             "ood_statistic": rows[0]["predictor"].config.calibration.ood_statistic, "ood_reference": list(reference)}
    if rows[0]["degraded"] is not None and atyp:
        final |= {k: v for k, v in shift_settings(rows, final_t).items() if k in SHIPPED}
        out["shipped_path"] = shipped_path(rows, per_fold, labels)
    return out | {"orders": orders, "final": final, "per_fold": per_fold}


def markdown(result: dict) -> str:
    f = result["final"]
    lines = [f"| measure ({len(result['per_fold'])} folds, mean ± 95% CI) | value |", "|---|---|",
             f"| UA, utterance alone | {fmt_ci(result['ua'])} |",
             f"| UA, online per-speaker protocol ({result['orders']} orders) | {fmt_ci(result['ua_online'])} |",
             f"| ECE before calibration, all test utterances pooled (per fold) | {result['ece_pooled']:.3f} "
             f"({fmt_ci(result['ece'], 1.0, 3)}) |",
             f"| ECE after (temperature from the other folds' test speakers) | {result['ece_pooled_calibrated']:.3f} "
             f"({fmt_ci(result['ece_calibrated'], 1.0, 3)}) |"]
    if "ood_flagged_in_domain" in result:
        lines.append(f"| unseen in-domain utterances flagged out of distribution | {100 * result['ood_flagged_in_domain']:.1f} % |")
    for name, what in (("test", "clean"), ("degraded", "degraded (training augmentation)"),
                       ("short", f"the first {'/'.join(f'{s:g}' for s in SHORT_PREFIXES_S)} s of clean")):
        if name in result.get("shipped_path", {}):
            d = result["shipped_path"][name]
            lines += [f"| ECE, {what} speech: one T → shipped temperature ({d['n']} predictions) | "
                      f"{d['ece_one_t']:.3f} → {d['ece_shift']:.3f} |",
                      f"| flagged uncertain, {what} speech (right when flagged / otherwise) | {100 * d['uncertain']:.1f} % "
                      f"({pct(d['right_when_flagged'])} / {pct(d['right_otherwise'])}) |"]
    lines.append(f"\nFinal settings (chosen on every fold): temperature {f['temperature']:g}, adaptation prior "
                 f"{f['adapt_prior']:g}, OOD statistic {f['ood_statistic']}"
                 + (f", shift β {f['shift_beta']:g} from atypicality {f['shift_from']:g}, speech limit "
                    f"{f['speech_limit']:g}, uncertain under confidence {f['min_confidence']:g} or voiced share "
                    f"{f['min_voiced']:g}" if "shift_beta" in f else "")
                 + (f", temperature × (n / {f['short_frames']:g})^-{f['short_gamma']:g} under {f['short_frames']:g} "
                    "speech frames" if f.get("short_gamma") else "") + ".")
    return "\n".join(lines) + "\n"


FITTED_ELSEWHERE = ("voice_from", "voice_beta", "adapt_near")
"""Calibration that ``ser-train crosscorpus`` fits on other corpora; ``--apply`` keeps it."""


def apply(model_dir: Path, result: dict, embedding_mean: np.ndarray) -> None:
    """Write the final calibration into ``model_dir``'s config.json, the figures into its metrics.json and the
    table into its calibration.md."""
    config = json.loads((model_dir / MODEL_CONFIG).read_text())
    f = result["final"]
    kept = {k: v for k, v in config["model"].get("calibration", {}).items() if k in FITTED_ELSEWHERE}
    config["model"]["calibration"] = kept | {
        "temperature": f["temperature"], "ood_statistic": f["ood_statistic"], "ood_reference": f["ood_reference"],
        "adapt_prior": f["adapt_prior"], "embedding_mean": [round(float(x), 6) for x in embedding_mean]} \
        | {k: f[k] for k in SHIPPED if k in f}
    from serlive.model.checkpoint import FORMAT_VERSION

    config["format_version"] = FORMAT_VERSION
    write_json(model_dir / MODEL_CONFIG, config)
    (model_dir / "calibration.md").write_text(markdown(result))  # the table the model card quotes
    metrics_path = model_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["calibration"] = {k: v for k, v in result.items() if k != "per_fold"} \
        | {"per_fold": [{k: v for k, v in f.items() if k != "embedding_mean"} for f in result["per_fold"]]}
    write_json(metrics_path, metrics)
    log.info("calibration written into %s", model_dir)
