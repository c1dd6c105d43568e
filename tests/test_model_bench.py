"""``python -m serlive.model.bench --models``: the whole Predictor's real-time factor, model against model."""

from __future__ import annotations

import torch

from serlive.model import ModelConfig, SERModel, save_model_dir
from serlive.model import bench

SMALL = {"kind": "builtin", "dim": 16, "n_mels": 16, "transformer_layers": 1, "heads": 2}


def test_models_mode_times_each_directory_on_the_demo_file(tmp_path, capsys):
    torch.manual_seed(0)
    plain = save_model_dir(tmp_path / "plain", SERModel(ModelConfig.from_dict({"encoder": SMALL})).eval())
    pitch = save_model_dir(tmp_path / "pitch", SERModel(ModelConfig.from_dict(
        {"encoder": SMALL, "spectral_stats": True, "pitch_stats": True})).eval())
    assert bench.main(["--models", str(plain), str(pitch), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "pieces of 3 s" in out and "demo" in out
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith(f"| {tmp_path}")]
    assert [r[0].strip() for r in rows] == [str(plain), str(pitch)]
    rtf = [float(r[1]) for r in rows]
    assert all(0 < x < 1 for x in rtf) and rows[0][2].strip() == "1.00x"
    ratio = float(rows[1][2].strip()[:-1])  # from unrounded times: near, not equal to, the rounded RTFs' ratio
    assert ratio > 0 and abs(ratio - rtf[1] / rtf[0]) <= 0.1 * ratio + 0.01
