"""The ablation table and the frozen-encoder (cached features) mode, on the RAVDESS fixtures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from serlive.model import ConfigError, SERModel
from serlive.train import ablate, fit

from .test_train_fit import tiny_cfg


def test_ablation_table_has_every_cell(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "optim.epochs=1")
    table = ablate.run(cfg, tmp_path / "abl", torch.device("cpu"), ["gap", "sr"])
    rows = json.loads((tmp_path / "abl" / "ablation.json").read_text())["rows"]
    assert [(r["pooling"], r["scl"], r["knn"]) for r in rows] == [
        (p, s, k) for p in ("gap", "sr") for s in (False, True) for k in ("none", "fold")]  # one fold: no cross-fold
    assert table.count("\n") == 2 + 8
    ce = json.loads((tmp_path / "abl" / "gap-ce" / "train_config.json").read_text())
    scl = json.loads((tmp_path / "abl" / "sr-scl" / "train_config.json").read_text())
    assert ce["loss"]["scl_lambda"] == 0.0 and ce["model"]["pooling"] == "gap"
    assert scl["loss"]["scl_lambda"] == 0.1 and scl["model"]["pooling"] == "sr"
    # -kNN and +kNN of one trained fold come from the same weights
    result = json.loads((tmp_path / "abl" / "gap-ce" / "fold_0" / "result.json").read_text())
    assert result["test"]["n"] == result["test_knn"]["n"]


def test_freeze_encoder_trains_heads_only(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "optim.epochs=2", "run.freeze_encoder=true")
    fit.run(cfg, tmp_path / "frozen", torch.device("cpu"))
    torch.manual_seed(cfg.run.seed + 0)  # the fold's initialisation seed
    init = SERModel(cfg.model).state_dict()
    saved = load_file(str(tmp_path / "frozen" / "fold_0" / "model" / "model.safetensors"))
    enc = [k for k in saved if k.startswith("encoder.")]
    heads = [k for k in saved if k.startswith("classifier.")]
    assert enc and all(torch.equal(saved[k], init[k]) for k in enc)
    assert not all(torch.equal(saved[k], init[k]) for k in heads)


def test_fit_with_a_tiny_hf_encoder_and_gradient_checkpointing(tmp_path, tiny_wavlm_dir):
    from serlive.model import Predictor

    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "optim.epochs=1", "model.encoder.kind='hf'", f"model.encoder.name='{tiny_wavlm_dir}'",
                   "model.encoder.freeze='cnn'", "run.grad_checkpointing=true", "loss.scl_lambda=0.0")
    fit.run(cfg, tmp_path / "hf", torch.device("cpu"))
    predictor = Predictor.from_dir(tmp_path / "hf" / "fold_0" / "model")  # rebuilt offline from hf_config
    assert predictor.config.encoder.hf_config is not None
    assert predictor.predict(torch.zeros(8000).numpy() + 0.01).label in cfg.model.labels


def test_ablation_cells_pick_single_variants(tmp_path):
    cfg = tiny_cfg(tmp_path)
    picked = ablate.variants(cfg, ["gap", "sap", "sr"], ["sr-ce", "gap-scl"])
    assert [name for name, _ in picked] == ["gap-scl", "sr-ce"]
    assert picked[1][1].loss.scl_lambda == 0.0 and picked[0][1].model.pooling == "gap"
    with pytest.raises(ConfigError, match="gap-scl or sr-ce, not sr-x"):
        ablate.variants(cfg, ["gap"], ["sr-x"])
    with pytest.raises(ConfigError, match="not sr-scl-nostats"):  # the recipe has no branch to drop
        ablate.variants(cfg, ["sr"], ["sr-scl-nostats"])
    stats = tiny_cfg(tmp_path, "model.spectral_stats=true")
    picked = dict(ablate.variants(stats, ["sr"], ["sr-scl", "sr-scl-nostats"]))
    assert picked["sr-scl"].model.spectral_stats and not picked["sr-scl-nostats"].model.spectral_stats


def test_ablation_reports_the_cross_fold_knn_with_two_folds(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "optim.epochs=1", "protocol.max_folds=2")
    ablate.run(cfg, tmp_path / "abl", torch.device("cpu"), ["gap"], cells=["gap-ce"])
    rows = json.loads((tmp_path / "abl" / "ablation.json").read_text())["rows"]
    assert [r["knn"] for r in rows] == ["none", "fold", "cross-fold"] and rows[0]["folds"] == 2
    summary = json.loads((tmp_path / "abl" / "gap-ce" / "metrics.json").read_text())
    assert len(summary["test_knn_xfold"]["per_fold"]) == 2 and 1 <= summary["knn_final"]["k"] <= 4
