"""``ser-train crosscorpus``: one model on several corpora at once, the table every recipe change is chosen on.

Per corpus, alone (each utterance by itself) and online (each speaker's utterances in ``orders`` random
orders, each predicted knowing only that speaker's earlier ones, through a per-speaker adapter as
``ser-live`` runs): UA, WA, per-class recall, the share of predictions per class, the ECE of the top
probability (10 bins), the share flagged ``uncertain`` and how often the flagged and the others are right.

Everything in the table is computed from the per-utterance CSV it writes (one row per utterance, mode and
order: ``alone`` has order 0, ``online-<kind>`` orders 0..N-1), so anyone can recompute it: the online
figures are pooled over the orders' rows (for UA, WA, recall and shares that is the mean over orders, each
order holding every utterance once).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from serlive.model import ConfigError, Predictor
from serlive.model.adapt import adapted, build
from serlive.model.calibration import expected_calibration_error

from .data import load_audio, read_manifest

log = logging.getLogger(__name__)

CSV_COLUMNS = ("corpus", "mode", "order", "path", "speaker", "true", "predicted", "confidence", "uncertain")


@dataclass(frozen=True, slots=True)
class Corpus:
    """A named manifest; its utterances and their unadapted predictions once :func:`predict` has run."""

    name: str
    utts: list
    preds: list


def parse_corpora(specs: list[str]) -> list[tuple[str, Path]]:
    """``NAME=MANIFEST.csv`` pairs (a bare path is named after its folder); names must differ."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (Path(spec).parent.name or "data", spec)
        if not name or not path:
            raise ConfigError(f"--data takes NAME=MANIFEST.csv, not {spec!r}")
        out.append((name, Path(path)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"--data names must differ, got {', '.join(names)}")
    return out


def parse_voice(spec: str | None) -> tuple[str, float] | None:
    """``NAME=FROM``: fit the voice term on corpus NAME past distance FROM (None: no fit)."""
    if spec is None:
        return None
    name, _, start = spec.partition("=")
    try:
        value = float(start)
    except ValueError:
        value = -1.0
    if not name or not 0 <= value < 1e3:
        raise ConfigError(f"--fit-voice takes NAME=FROM (a corpus name, a distance of 0 or more), not {spec!r}")
    return name, value


def parse_skews(specs: list[str]) -> tuple:
    """``CLASS=SHARE`` (a model class or ``dominant``) pairs for :func:`skewed`."""
    from serlive.model import ModelConfig

    out = []
    for spec in specs:
        which, _, share = spec.partition("=")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if which not in (*ModelConfig().labels, "dominant") or not 0.25 <= value < 1:
            raise ConfigError(f"--skew takes CLASS=SHARE (a model class or 'dominant', a share from 0.25 to below 1), "
                              f"not {spec!r}")
        out.append((which, value))
    return tuple(out)


def predict(predictor: Predictor, name: str, manifest: Path, label_map: str = "", label_column: str = "emotion",
            batch_size: int = 16) -> Corpus:
    """Every utterance of ``manifest`` through the Predictor (the live path), unadapted."""
    utts = read_manifest(manifest, predictor.labels, label_map or None, {"label": label_column})
    return Corpus(name, utts, predict_utts(predictor, utts, batch_size))


def predict_utts(predictor: Predictor, utts: list, batch_size: int = 16) -> list:
    """Unadapted predictions of ``utts``, each read whole from its file (as a microphone delivers it)."""
    preds = []
    for start in range(0, len(utts), batch_size):
        waves = [load_audio(u.path, predictor.max_samples) for u in utts[start: start + batch_size]]
        preds += predictor.predict_prepared(waves, [predictor.mask(w) for w in waves])
    log.info("%d utterances predicted", len(utts))
    return preds


def skewed(corpus: Corpus, spec: tuple[str, float], labels: tuple[str, ...], rng: np.random.Generator) -> Corpus:
    """Each speaker's stream thinned so that one class makes up ``share`` of it, as in natural talk where a
    speaker is mostly calm, or in one mood: ``spec`` is (class, share) or ("dominant", share) for a class drawn
    per speaker. Every utterance of that class is kept and the others drawn at random; a stream that cannot
    reach the share keeps what it has."""
    which, share = spec
    keep = []
    for speaker in dict.fromkeys(u.speaker for u in corpus.utts):
        rows = [i for i, u in enumerate(corpus.utts) if u.speaker == speaker]
        target = labels.index(which) if which != "dominant" else int(rng.integers(len(labels)))
        main = [i for i in rows if corpus.utts[i].label == target]
        rest = [i for i in rows if corpus.utts[i].label != target]
        n_rest = min(len(rest), int(round(len(main) * (1 - share) / share)))
        keep += main + [rest[j] for j in sorted(rng.choice(len(rest), n_rest, replace=False))]
    keep.sort()
    return Corpus(f"{corpus.name} ({which} {share:.0%})", [corpus.utts[i] for i in keep], [corpus.preds[i] for i in keep])


def online(predictor: Predictor, corpus: Corpus, new_adapter: Callable, rng: np.random.Generator,
           distances: list | None = None) -> list:
    """One random order per speaker: each utterance adapted by that speaker's earlier ones only (as the engine:
    an utterance with no voice or far out of distribution teaches nothing). Predictions in manifest order;
    ``distances``, when given, receives each one's adapter distance (the voice's, see :mod:`.voice`)."""
    by_speaker: dict[str, list[int]] = {}
    for i, u in enumerate(corpus.utts):
        by_speaker.setdefault(u.speaker, []).append(i)
    out, dist = [None] * len(corpus.utts), [0.0] * len(corpus.utts)
    for rows in by_speaker.values():
        adapter = new_adapter()
        for i in (rows[j] for j in rng.permutation(len(rows))):
            raw = corpus.preds[i]
            out[i], dist[i] = adapted(predictor, raw, adapter), adapter.distance()
            if raw.speech_frames > 0 and not raw.far:
                adapter.update(raw.embedding)
    if distances is not None:
        distances[:] = dist
    return out


def adapter_factory(predictor: Predictor, kind: str, class_means=None, train_priors=None) -> Callable:
    """A function making a fresh adapter of ``kind`` for ``predictor`` (see :mod:`serlive.model.adapt`)."""
    cal = predictor.config.calibration
    if not predictor.can_adapt:
        raise ConfigError("the model has no calibration.embedding_mean (run ser-train calibrate --apply): it cannot adapt")
    if kind == "mixture" and class_means is None:
        raise ConfigError("the mixture adaptation needs the training class means (--train-data)")
    clf = predictor.model.classifier
    heads = (clf.weight.detach().double().numpy(), clf.bias.detach().double().numpy(), cal.temperature)
    return lambda: build(kind, np.array(cal.embedding_mean), cal.adapt_prior, heads, class_means, train_priors)


def class_statistics(corpus: Corpus, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The training data's raw mean embedding per class ``(C, D)`` and its label proportions ``(C,)``: what
    the ``mixture`` adaptation centres a stream on."""
    labels = np.array([u.label for u in corpus.utts])
    emb = np.stack([p.embedding for p in corpus.preds]).astype(np.float64)
    if any(not (labels == c).any() for c in range(num_classes)):
        raise ConfigError(f"--train-data {corpus.name} lacks a class: the mixture adaptation needs every class's mean")
    return np.stack([emb[labels == c].mean(0) for c in range(num_classes)]), np.bincount(labels, minlength=num_classes) / len(labels)


def rows_of(corpus: Corpus, mode: str, order: int, preds: list) -> list[dict]:
    labels = preds[0].labels if preds else ()
    return [{"corpus": corpus.name, "mode": mode, "order": order, "path": str(u.path), "speaker": u.speaker,
             "true": labels[u.label], "predicted": p.label, "confidence": round(p.confidence, 6),
             "uncertain": int(p.uncertain)} for u, p in zip(corpus.utts, preds)]


def figures(rows: list[dict], labels: tuple[str, ...]) -> dict:
    """The table's figures for one (corpus, mode) from its CSV rows (as written or read back)."""
    true = np.array([labels.index(r["true"]) for r in rows])
    pred = np.array([labels.index(r["predicted"]) for r in rows])
    conf = np.array([float(r["confidence"]) for r in rows])
    flag = np.array([int(r["uncertain"]) for r in rows], bool)
    right = pred == true
    recall = {c: float(right[true == i].mean()) if (true == i).any() else None for i, c in enumerate(labels)}
    top = np.zeros((len(rows), len(labels)))  # ECE needs only the top probability and the predicted class
    top[np.arange(len(rows)), pred] = conf
    present = [r for r in recall.values() if r is not None]
    return {"n": int(len(rows)), "speakers": len({r["speaker"] for r in rows}),
            "orders": len({int(r["order"]) for r in rows}),
            "ua": float(np.mean(present)), "wa": float(right.mean()), "recall": recall,
            "share": {c: float((pred == i).mean()) for i, c in enumerate(labels)},
            "ece": expected_calibration_error(top, true), "uncertain": float(flag.mean()),
            "right_when_flagged": float(right[flag].mean()) if flag.any() else None,
            "right_otherwise": float(right[~flag].mean()) if (~flag).any() else None}


def table(rows: list[dict], labels: tuple[str, ...]) -> list[dict]:
    """One entry per (corpus, mode), in the order they first appear."""
    keys = list(dict.fromkeys((r["corpus"], r["mode"]) for r in rows))
    return [{"corpus": c, "mode": m} | figures([r for r in rows if r["corpus"] == c and r["mode"] == m], labels)
            for c, m in keys]


def run(model_dir, corpora: list[tuple[str, Path]], out: Path, label_map: str = "", label_column: str = "emotion",
        adapt: tuple[str, ...] = ("mean",), orders: int = 10, seed: int = 0, device=torch.device("cpu"),
        batch_size: int = 16, train_data: tuple[Path, str] | None = None, skews: tuple = (),
        voice: tuple[str, float] | None = None, cv: Path | None = None, cv_corpora: bool = False) -> dict:
    """The table over ``corpora`` (name, manifest), written into ``out`` (predictions.csv, crosscorpus.json|.md);
    ``train_data`` (manifest, label map): the model's training data, for the ``mixture`` adaptation; each of
    ``skews`` (class or "dominant", share) adds every corpus again with its streams thinned (:func:`skewed`);
    ``voice`` (corpus name, voice_from): fit ``calibration.voice_beta`` on that corpus (:mod:`.voice`), which
    adds its ``online-<kind>+voice`` rows, cross-fitted, and the fit to the result; ``cv``: a cross-validation
    run whose fold models, each on its own test speakers with this model's calibration, make one more corpus;
    ``cv_corpora``: each of ``corpora`` also through every fold model, pooled as ``NAME (K fold models)`` (a recipe
    compared across languages before any model of it is shipped)."""
    from .evaluate import load_predictor

    from .voice import cross_fitted, online_with_distances

    predictor = load_predictor(model_dir, device)
    fitted = None
    class_means = train_priors = None
    if train_data is not None and "mixture" in adapt:
        train = predict(predictor, "train", train_data[0], train_data[1], label_column, batch_size)
        class_means, train_priors = class_statistics(train, len(predictor.labels))
    kinds = [k for k in adapt if k != "none"] if orders else []
    factories = {k: adapter_factory(predictor, k, class_means, train_priors) for k in kinds}
    rows = []
    for name, manifest in corpora:
        whole = predict(predictor, name, manifest, label_map, label_column, batch_size)
        rows += corpus_rows(predictor, whole, factories, skews, orders, seed)
        if voice is not None and name == voice[0] and factories:
            kind, factory = next(iter(factories.items()))
            runs = online_with_distances(predictor, whole, factory, orders, seed)
            voice_rows, fitted = cross_fitted(predictor, whole, runs, voice[1], f"online-{kind}+voice")
            rows += voice_rows
    if cv is not None:
        from .crosscv import fold_corpora

        folds = fold_corpora(cv, predictor, batch_size)
        for fold_predictor, corpus in folds:
            rows += corpus_rows(fold_predictor, corpus, {k: adapter_factory(fold_predictor, k) for k in kinds},
                                skews, orders, seed)
        for name, manifest in corpora if cv_corpora else ():
            for fold_predictor, _ in folds:
                other = predict(fold_predictor, f"{name} ({len(folds)} fold models)", manifest, label_map, label_column,
                                batch_size)
                rows += corpus_rows(fold_predictor, other, {k: adapter_factory(fold_predictor, k) for k in kinds},
                                    skews, orders, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "predictions.csv", rows)
    result = {"model": str(predictor_dir(model_dir)), "labels": list(predictor.labels), "orders": orders, "seed": seed,
              "table": table(rows, predictor.labels)} | ({"voice": fitted} if fitted else {})
    (out / "crosscorpus.json").write_text(json.dumps(result, indent=1))
    (out / "crosscorpus.md").write_text(markdown(result))
    return result


def corpus_rows(predictor: Predictor, whole: Corpus, factories: dict, skews: tuple, orders: int, seed: int) -> list[dict]:
    """CSV rows of a corpus (and its skewed variants): alone, and ``orders`` online runs per adapter kind."""
    rows = []
    for corpus in [whole] + [skewed(whole, s, predictor.labels, np.random.default_rng(seed)) for s in skews]:
        rows += rows_of(corpus, "alone", 0, corpus.preds)
        for kind, factory in factories.items():
            rng = np.random.default_rng(seed)
            for order in range(orders):
                rows += rows_of(corpus, f"online-{kind}", order, online(predictor, corpus, factory, rng))
    return rows


def predictor_dir(model_dir) -> Path:
    from serlive.model import bundled_model_dir

    return Path(model_dir) if model_dir else bundled_model_dir()


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown(result: dict) -> str:
    labels = result["labels"]
    head = ["corpus", "mode", "n", "UA", "WA", *[f"recall {c}" for c in labels], *[f"share {c}" for c in labels],
            "ECE", "uncertain %", "right when flagged %", "right otherwise %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in result["table"]:
        cells = [t["corpus"], t["mode"], str(t["n"]), _pct(t["ua"]), _pct(t["wa"]),
                 *[_pct(t["recall"][c]) for c in labels], *[_pct(t["share"][c]) for c in labels],
                 f"{t['ece']:.3f}", _pct(t["uncertain"]), _pct(t["right_when_flagged"]), _pct(t["right_otherwise"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
