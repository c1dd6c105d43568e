"""``ser-train``: fit, evaluate, crosscorpus, ablate, baseline, bundle, calibrate, robustness, probe, prepare. Parses arguments and
calls a ``run``; bad input is one sentence on stderr and exit status 2 (1 for a failure while running)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from serlive.model import AudioError, CheckpointError, ConfigError

from .data import DataError

log = logging.getLogger("serlive.train")

USER_ERRORS = (ConfigError, DataError, CheckpointError, AudioError, FileNotFoundError)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ser-train", description="Train and evaluate ser-live emotion models.")
    sub = ap.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train every fold of a protocol; one model directory per fold")
    _train_args(fit)
    fit.add_argument("--folds", default="", help="comma-separated fold indices to run (default: all)")
    fit.add_argument("--knn-from", default=None, metavar="CV_RUN",
                     help="take kNN k and alpha from a cross-validation run's cross-fold search (no search here)")
    ab = sub.add_parser("ablate", help="GAP/SAP/SR x (±SCL) x (±kNN) table, mean ± 95%% CI over folds")
    _train_args(ab)
    ab.add_argument("--poolings", default="gap,sap,sr")
    ab.add_argument("--cells", default="", help="only these cells, e.g. gap-scl,sap-scl,sr-ce,sr-scl")
    ev = sub.add_parser("evaluate", help="metrics of a model directory on a manifest (uses the Predictor)")
    ev.add_argument("--model", default=None, help="model directory (default: the bundled ravdess-ge2e)")
    ev.add_argument("--data", required=True, help="manifest CSV")
    ev.add_argument("--label-map", default="", help="preset (ravdess, iemocap, kemdy19) or raw=class,... pairs")
    ev.add_argument("--label-column", default="emotion")
    ev.add_argument("--predictions", default=None, help="write per-utterance predictions to this CSV")
    ev.add_argument("--no-knn", action="store_true", help="ignore the kNN datastore")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--orders", type=int, default=10,
                    help="random orders per speaker for the online per-speaker protocol (0: skip it)")
    cc = sub.add_parser("crosscorpus", help="one model on several corpora: UA/WA, recall, shares, ECE, uncertain, "
                        "alone and online; a per-utterance CSV and one table")
    cc.add_argument("--model", default=None, help="model directory (default: the bundled ravdess-ge2e)")
    cc.add_argument("--data", action="append", required=True, metavar="NAME=MANIFEST.csv", help="a corpus (repeat)")
    cc.add_argument("--out", required=True, help="folder for predictions.csv, crosscorpus.json and crosscorpus.md")
    cc.add_argument("--label-map", default="", help="preset (ravdess, iemocap, kemdy19) or raw=class,... pairs")
    cc.add_argument("--label-column", default="emotion")
    cc.add_argument("--adapt", default="mean", help="comma-separated online adaptations: none, mean, mixture, prior, guard")
    cc.add_argument("--orders", type=int, default=10, help="random orders per speaker for the online rows (0: alone only)")
    cc.add_argument("--train-data", default=None, metavar="MANIFEST.csv",
                    help="the model's training manifest (the mixture adaptation's class means)")
    cc.add_argument("--train-label-map", default="", help="label map of --train-data")
    cc.add_argument("--skew", action="append", default=[], metavar="CLASS=SHARE",
                    help="also each corpus with every speaker's stream thinned to SHARE of CLASS (or dominant=SHARE: "
                    "a class drawn per speaker), e.g. neutral=0.7 (repeat)")
    cc.add_argument("--cv", default=None, metavar="CV_RUN",
                    help="also a cross-validation run's fold models on their own test speakers (one more corpus)")
    cc.add_argument("--cv-corpora", action="store_true",
                    help="with --cv: every --data corpus also through each fold model, pooled (a recipe across languages)")
    cc.add_argument("--fit-voice", default=None, metavar="NAME=FROM",
                    help="fit calibration.voice_beta on corpus NAME's online predictions past speaker-mean distance FROM")
    cc.add_argument("--apply", default=None, metavar="MODEL_DIR", help="write the fitted voice_from / voice_beta here")
    cc.add_argument("--device", default="auto")
    cc.add_argument("--batch-size", type=int, default=16)
    bl = sub.add_parser("baseline", help="classic baseline (logistic regression on log-mel statistics) on the same folds")
    bl.add_argument("--config", default=None, help="TOML file (data, protocol and model.labels are used)")
    bl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    bl.add_argument("--train-only", action="store_true",
                    help="fit on the training speakers only, as the network is (default: refit on train + val)")
    bl.add_argument("--gain-free", action="store_true",
                    help="drop the absolute-level features (band means relative to their average, no energy mean)")
    bl.add_argument("--test-gain-db", type=float, default=0.0, metavar="DB",
                    help="play each test utterance at a random gain within +-DB (a microphone's unknown level)")
    bu = sub.add_parser("bundle", help="a shippable model directory: a final run's model + the CV and baseline figures")
    bu.add_argument("--cv", required=True, help="the cross-validation run directory")
    bu.add_argument("--final", required=True, help="the final run (protocol.kind = \"all\") of the same recipe")
    bu.add_argument("--out", required=True, help="model directory to write (replaced)")
    ca = sub.add_parser("calibrate", help="temperature, OOD reference and per-speaker adaptation measured on a CV run's folds")
    ca.add_argument("--cv", required=True, help="a finished cross-validation run directory (ser-train fit)")
    ca.add_argument("--orders", type=int, default=10, help="random utterance orders per speaker (online protocol)")
    ca.add_argument("--degraded", type=int, default=2, metavar="N",
                    help="draws of the training augmentation per test utterance for the shift-aware temperature (0: off)")
    ca.add_argument("--apply", default=None, metavar="MODEL_DIR",
                    help="write the final settings into this model directory (e.g. the bundled model)")
    rb = sub.add_parser("robustness", help="fold models and the baseline under level, noise, rooms, telephone, "
                        "codecs and clipping (UA/WA/ECE per condition)")
    rb.add_argument("--cv", required=True, help="a cross-validation run directory (ser-train fit) with its fold models")
    rb.add_argument("--out", default=None, help="JSON to write (default CV/robustness.json; .md beside it)")
    rb.add_argument("--conditions", default="", help="comma-separated condition names (default: all 24)")
    rb.add_argument("--folds", default="", help="comma-separated fold indices (default: all)")
    rb.add_argument("--fresh", action="store_true", help="recompute folds already benchmarked on the same weights")
    po = sub.add_parser("probe", help="a model on speech under noise, rooms and the telephone band, on noise, "
                        "silence, tones and synthetic speech: the share flagged uncertain and the top probabilities")
    po.add_argument("files", nargs="+", help="two or more speech recordings (any rate; babble is made from the others)")
    po.add_argument("--model", default=None, metavar="DIR", help="model directory (default: the bundled model)")
    pr = sub.add_parser("prepare", help="write a manifest CSV for an IEMOCAP or KEMDy19 tree")
    pr.add_argument("corpus", choices=["iemocap", "kemdy19"])
    pr.add_argument("root", help="the corpus folder")
    pr.add_argument("--out", required=True, help="manifest CSV to write")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=3e-5")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--freeze-encoder", action="store_true", help="cache encoder features once; train the rest")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 (overrides run.device)")
    p.add_argument("--spread-folds", action="store_true",
                   help="under torchrun: one fold per process/GPU at a time instead of DDP within each fold")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except USER_ERRORS as exc:
        print(f"ser-train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "finished folds are kept: rerun to continue" if args.command == "robustness" else \
            "rerun with --resume to continue"
        print(f"ser-train: interrupted; {hint}", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from .devices import resolve_device, setup_distributed

    if args.command == "prepare":
        from .corpora import write_manifest

        n = write_manifest(args.corpus, args.root, args.out)
        print(f"wrote {n} utterances to {args.out}")
        return 0
    if args.command == "probe":
        from .probe import markdown, run as run_probe

        print(markdown(run_probe(args.model, args.files)), end="")
        return 0
    if args.command == "bundle":
        from .bundle import run as run_bundle

        metrics = run_bundle(args.cv, args.final, args.out)
        cv = metrics["cross_validation"]
        print(f"wrote {args.out}: {cv['folds']}-fold UA {100 * cv['test']['ua']['mean']:.1f}, "
              f"baseline {100 * metrics['baseline_same_folds']['as_is']['ua']['mean']:.1f}")
        return 0
    if args.command == "calibrate":
        from .calibrate import markdown, run as run_calibrate

        if args.orders < 1 or args.degraded < 0:
            raise ConfigError("--orders must be at least 1 and --degraded at least 0")
        print(markdown(run_calibrate(args.cv, args.orders, args.apply, args.degraded)), end="")
        return 0
    if args.command == "robustness":
        return _robustness(args)
    if args.command == "baseline":
        from . import config
        from .baseline import cross_validate

        result = cross_validate(config.load(args.config, args.set), refit=not args.train_only, gain_free=args.gain_free,
                                test_gain_db=args.test_gain_db)
        print(json.dumps(result, indent=1))
        return 0
    if args.command == "crosscorpus":
        return _crosscorpus(args, resolve_device(args.device))
    if args.command == "evaluate":
        from .evaluate import run as run_evaluate

        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, not {args.batch_size}")

        result = run_evaluate(args.model, args.data, args.label_map, args.predictions, resolve_device(args.device),
                              use_knn=not args.no_knn, label_column=args.label_column, batch_size=args.batch_size,
                              orders=args.orders)
        print(json.dumps(result, indent=2))
        return 0
    cfg = _train_config(args)
    folds = _folds(args.folds) if args.command == "fit" else None
    device = setup_distributed(resolve_device(args.device or cfg.run.device))
    _log_file(Path(args.out))
    if args.command == "fit":
        from .fit import markdown_table, run as run_fit

        summary = run_fit(cfg, args.out, device, resume=args.resume, only_folds=folds)
        if summary:  # empty on torchrun ranks other than 0
            print(markdown_table(summary))
        return 0
    from .ablate import run as run_ablate

    cells = [c.strip() for c in args.cells.split(",") if c.strip()] or None
    table = run_ablate(cfg, args.out, device, args.poolings.split(","), resume=args.resume, cells=cells)
    if table:
        print(table)
    return 0


def _crosscorpus(args, device) -> int:
    from serlive.model.adapt import KINDS

    from .crosscorpus import markdown, parse_corpora, parse_skews, parse_voice, run

    kinds = tuple(k.strip() for k in args.adapt.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or args.orders < 0 or args.batch_size < 1:
        raise ConfigError(f"--adapt takes {', '.join(KINDS)}, --orders 0 or more and --batch-size 1 or more "
                          f"(got {args.adapt!r}, {args.orders}, {args.batch_size})")
    train = (Path(args.train_data), args.train_label_map) if args.train_data else None
    corpora, voice = parse_corpora(args.data), parse_voice(args.fit_voice)
    if voice and (voice[0] not in [n for n, _ in corpora] or not args.orders or kinds in ((), ("none",))):
        raise ConfigError(f"--fit-voice needs a --data name ({', '.join(n for n, _ in corpora)}), --orders and an "
                          f"--adapt kind, not {args.fit_voice!r}")
    if args.cv_corpora and not args.cv:
        raise ConfigError("--cv-corpora puts the corpora through a cross-validation run's fold models: give --cv CV_RUN")
    if args.apply and not voice:
        raise ConfigError("--apply writes what --fit-voice fits: give --fit-voice NAME=FROM")
    result = run(args.model, corpora, Path(args.out), args.label_map, args.label_column, kinds, args.orders,
                 device=device, batch_size=args.batch_size, train_data=train, skews=parse_skews(args.skew), voice=voice,
                 cv=Path(args.cv) if args.cv else None, cv_corpora=args.cv_corpora)
    if args.apply:
        from .voice import apply

        apply(Path(args.apply), result["voice"]["voice_from"], result["voice"]["voice_beta"])
    print(markdown(result), end="")
    return 0


def _robustness(args) -> int:
    from .lines import CodecError
    from .robustness import markdown_table, run, select

    parts = [x.strip() for x in args.folds.split(",") if x.strip()]
    if not all(x.isdigit() for x in parts):
        raise ConfigError(f"--folds takes comma-separated fold numbers, not {args.folds!r}")
    try:
        summary = run(args.cv, args.out, select(args.conditions), [int(x) for x in parts] or None, fresh=args.fresh)
    except CodecError as exc:
        print(f"ser-train: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(summary))
    return 0


def _train_config(args):
    import dataclasses

    from . import config

    cfg = config.load(args.config, args.set)
    if args.freeze_encoder:
        cfg = cfg.replace(run=dataclasses.replace(cfg.run, freeze_encoder=True))
    if args.spread_folds:
        cfg = cfg.replace(run=dataclasses.replace(cfg.run, spread_folds=True))
    if getattr(args, "knn_from", None):
        from serlive.model import KnnConfig

        from .bundle import load_knn_final

        best = load_knn_final(args.knn_from)
        cfg = cfg.replace(knn=dataclasses.replace(cfg.knn, tune=False), model=cfg.model.replace(
            knn=KnnConfig(k=best["k"], alpha=best["alpha"], temperature=cfg.knn.temperature)))
    return cfg


def _folds(spec: str) -> list[int] | None:
    try:
        folds = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--folds must be comma-separated fold numbers, not {spec!r}") from None
    if any(f < 0 for f in folds):
        raise ConfigError(f"--folds must be fold numbers from 0, not {spec!r}")
    return folds or None


def _log_file(out: Path) -> None:
    """Append the run's log to ``out/train.log``; an --out that cannot be written is refused here, first."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "train.log")
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be written: {exc.strerror or exc}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


if __name__ == "__main__":
    raise SystemExit(main())
