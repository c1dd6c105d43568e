"""One fold end to end: build the model, train, build and tune the kNN datastore, measure the test
speakers with and without kNN, and write ``fold_<i>/model`` (a ser-live model directory)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from serlive.model import ConfigError, KnnConfig, SERModel, save_model_dir
from serlive.model.checkpoint import resolved_config, write_json
from serlive.model.encoders import length_mask

from .config import TrainConfig, read_json
from .devices import barrier, world
from .knn_tune import NEIGHBOURS_FILE, Neighbours, build_datastore, infer, save_neighbours, search
from .losses import class_weights
from .metrics import classification, dimensional
from .resume import discard_previous
from .sources import FeatureSource, WaveSource
from .trainer import Trainer

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
"""Written last in a fold directory: its presence means the fold is finished."""


def build_model(cfg: TrainConfig, device: torch.device) -> SERModel:
    model = SERModel(cfg.model)
    if hasattr(model.encoder, "load_pretrained"):
        model.encoder.load_pretrained()  # weights that live outside the model directory (GE2E)
    if cfg.run.freeze_encoder:
        model.encoder.requires_grad_(False)
    if cfg.run.grad_checkpointing and hasattr(model.encoder, "backbone"):
        backbone = model.encoder.backbone  # transformers >= 5 renamed the switch
        enable = getattr(backbone, "activation_checkpointing_enable", None) or backbone.gradient_checkpointing_enable
        enable()
    return model.to(device)


def make_source(cfg: TrainConfig, model: SERModel, data, device: torch.device, cache_dir: Path | None = None,
                babble_exclude: frozenset[str] | None = None):
    """Batches for training: perturbed draws (``babble_exclude``: whose voices their babble may not hold, None
    for own-speaker babble), cached encoder features, or waveforms."""
    views = cfg.augment if cfg.loss.scl_lambda > 0 else None
    perturb = cfg.augment if cfg.augment.classifier else None
    if cfg.run.draws:
        if not (hasattr(model.encoder, "raw") and cfg.model.encoder.freeze == "all" and perturb is not None):
            raise ConfigError("run.draws needs a frozen GE2E encoder (encoder.kind = \"ge2e\", freeze = \"all\") and "
                              "augment.classifier = true")
        from .draws import DrawSource

        return DrawSource(model, data, cfg.augment, views is not None, cfg.run.draws, cfg.optim.batch_size,
                          cfg.optim.bucket_batches, device, cfg.run.seed, cfg.data.cache_dir or cache_dir,
                          babble_exclude=babble_exclude)
    if cfg.run.freeze_encoder:
        if perturb is not None:
            raise ConfigError("augment.classifier perturbs waveforms on the fly: it cannot train on cached encoder "
                              "features (--freeze-encoder)")
        model.eval()
        return FeatureSource(model, data, views, cfg.optim.batch_size, cfg.optim.bucket_batches, device, cfg.run.seed)
    return WaveSource(data, views, cfg.optim.batch_size, cfg.optim.bucket_batches, perturb)


@torch.no_grad()
def standardise(model: SERModel, source, index: np.ndarray, device: torch.device, batch_size: int) -> None:
    """Standardise the statistics branch and a pretrained encoder's frames (GE2E), whichever the model has,
    with their raw values over the training utterances ``index`` (original audio, no augmentation), before
    training starts: from the draws' clean entries, or in one pass over the waveforms."""
    frames_too = hasattr(model.encoder, "standardise_with")
    if model.spectral is None and not frames_too:
        return
    if hasattr(source, "clean_raw"):
        frames, stats = source.clean_raw(index)
    elif isinstance(source, WaveSource):
        frames, stats = [], []
        for b in (batch.to(device) for batch in source.eval_batches(index, batch_size)):
            if model.spectral is not None:
                stats.append(model.spectral.raw(b.waves, b.lengths, b.speech).cpu())
            if frames_too:
                h, n = model.encoder.raw(b.waves, b.lengths)
                frames.append(h[length_mask(n, h.shape[1])].cpu())
        frames, stats = (torch.cat(frames) if frames else None), (torch.cat(stats) if stats else None)
    else:
        raise ConfigError("model.spectral_stats and a GE2E encoder standardise from waveforms: they cannot train on "
                          "cached encoder features")
    if model.spectral is not None:
        model.spectral.standardise_with(stats)
    if frames_too:
        model.encoder.standardise_with(frames)


def run_fold(cfg: TrainConfig, data, fold, fold_dir: Path, device: torch.device, resume: bool = False,
             source=None, ddp: bool = False, babble_exclude: frozenset[str] | None = None) -> dict | None:
    """Train and evaluate one fold; returns (and writes) its result dict. A finished fold is reloaded.
    With ``ddp`` every rank trains; rank 0 alone evaluates and writes (the others return None).
    ``babble_exclude``: the speakers its perturbed draws' babble may not hold (``run.babble_groups``)."""
    fold_dir = Path(fold_dir)
    done = fold_dir / RESULT_FILE
    if resume and done.is_file():
        log.info("fold %d already finished; skipping", fold.index)
        return read_result(done)
    torch.manual_seed(cfg.run.seed + fold.index)
    model = build_model(cfg, device)
    source = source or make_source(cfg, model, data, device, fold_dir.parent, babble_exclude)
    standardise(model, source, fold.train, device, cfg.run.eval_batch_size)
    labels = cfg.model.labels
    weights = class_weights(data.labels[fold.train], len(labels)) if cfg.loss.class_weights else None
    trainer = Trainer(model, cfg, source, fold, fold_dir, device, weights, ddp=ddp)
    state = trainer.fit(resume=resume)
    if ddp and world()[0] > 0:
        barrier()
        return None
    result = evaluate_fold(cfg, model, source, fold, device, trainer.autocast, fold_dir)
    result |= {"best_epoch": state.best_epoch, "epochs_run": state.epoch, "history": state.history}
    write_json(done, result)
    discard_previous(trainer.checkpoint_path)
    if cfg.run.plots:
        from .plots import save_fold_plots

        save_fold_plots(fold_dir, result)
    if ddp:
        barrier()
    return result


def read_result(path: Path) -> dict:
    """A finished fold's ``result.json``; a damaged one is named, with the way to redo only the evaluation."""
    try:
        return read_json(path, "a finished fold's result")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; delete it and rerun with --resume to evaluate this fold again from its "
                          f"checkpoint") from exc


def evaluate_fold(cfg: TrainConfig, model: SERModel, source, fold, device, autocast: bool, fold_dir: Path) -> dict:
    """kNN datastore + search, test metrics with alpha 0 and the tuned alpha, and the model directory."""
    bs, labels = cfg.run.eval_batch_size, cfg.model.labels
    train, val, test = (infer(model, source, ix, device, bs, autocast) for ix in (fold.train, fold.val, fold.test))
    store = build_datastore([train, val], len(labels))
    val_nb = Neighbours.of(build_datastore([train], len(labels)), val, cfg.knn.k_max)
    knn = search(val_nb, cfg.knn, labels) if cfg.knn.tune else {
        "k": cfg.model.knn.k, "alpha": cfg.model.knn.alpha, "val_ua": None, "val_ua_model": None}
    temp = cfg.knn.temperature if cfg.knn.tune else cfg.model.knn.temperature
    test_nb = Neighbours.of(store, test, max(cfg.knn.k_max, knn["k"]))  # one search serves both uses
    save_neighbours(fold_dir / NEIGHBOURS_FILE, val_nb, test_nb)
    result = {
        "fold": fold.index, "val_groups": list(fold.val_groups), "test_groups": list(fold.test_groups),
        "n_train": len(fold.train), "n_val": len(fold.val), "knn": knn,
        "test": split_metrics(test, test.p_model, labels),
        "test_knn": split_metrics(test, test_nb.probs(knn["k"], knn["alpha"], temp, len(labels)), labels),
        "val": split_metrics(val, val.p_model, labels),
    }
    model_cfg = model.config.replace(knn=KnnConfig(k=knn["k"], alpha=knn["alpha"], temperature=temp))
    if model_cfg.encoder.kind == "hf":
        model_cfg = model_cfg.replace(encoder=resolved_config(model).encoder)
    model_metrics = {"test": result["test"], "test_knn": result["test_knn"], "knn": knn,
                     "test_groups": result["test_groups"], "train_config": cfg.to_dict()}
    save_model_dir(fold_dir / "model", model.cpu(), store, model_metrics, config=model_cfg)
    model.to(device)
    return result


def split_metrics(out, probs: np.ndarray, labels: tuple[str, ...]) -> dict:
    m = classification(out.labels, probs.argmax(1), labels)
    return m | dimensional(out.dims, out.targets)
