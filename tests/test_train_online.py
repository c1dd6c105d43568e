"""The online per-speaker protocol of ``ser-train evaluate`` / ``calibrate``: causal, order by order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from serlive.model import Predictor, bundled_model_dir
from serlive.train import cli
from serlive.train.calibrate import online_labels

DATA = Path(__file__).parent / "data" / "ravdess"


def adaptable_copy(tmp_path: Path, prior: float) -> Path:
    """The bundled model with a reference mean embedding and prior written in (as ``calibrate --apply`` does)."""
    model = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), model)
    config = json.loads((model / "config.json").read_text())
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 0.3, config["model"]["embed_dim"]).round(4).tolist()
    config["model"]["calibration"] = {"embedding_mean": mean, "adapt_prior": prior}
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_online_labels_use_only_earlier_utterances(tmp_path):
    predictor = Predictor.from_dir(adaptable_copy(tmp_path, prior=0.0))
    preds = [predictor.predict(*sf.read(p, dtype="float32")) for p in sorted(DATA.glob("*.flac"))[:10]]
    alone = [predictor.labels.index(p.label) for p in preds]
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(preds))
        got = online_labels(predictor, preds, np.random.default_rng(seed), prior=0.0)
        assert got[order[0]] == alone[order[0]]  # nothing heard before the first: unadapted
        # The k-th utterance's label is the one adapted on exactly the k before it, recomputed by hand.
        for k in (1, 5, 9):
            seen = np.mean([preds[i].embedding for i in order[:k]], axis=0)
            shift = seen - np.array(predictor.config.calibration.embedding_mean, np.float32)
            p = preds[order[k]]
            expected = predictor.finish(p.embedding[None], np.array([p.atypicality]), np.array([p.speech_frames]),
                                        [p.frames], shift=shift)[0]
            assert predictor.labels[got[order[k]]] == expected.label


def test_evaluate_reports_the_online_protocol_and_uncertainty(tmp_path, capsys):
    model = adaptable_copy(tmp_path, prior=2.0)
    out_csv = tmp_path / "pred.csv"
    assert cli.main(["evaluate", "--model", str(model), "--data", str(DATA / "manifest.csv"), "--label-map", "ravdess",
                     "--orders", "3", "--predictions", str(out_csv), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["online"]["orders"] == 3 and result["online"]["speakers"] >= 1
    assert 0 <= result["online"]["ua"] <= 1 and 0 <= result["uncertain"] <= 1
    header = out_csv.read_text().splitlines()[0].split(",")
    assert header[-2:] == ["ood", "uncertain"]
    assert cli.main(["evaluate", "--model", str(model), "--data", str(DATA / "manifest.csv"), "--label-map", "ravdess",
                     "--orders", "0", "--device", "cpu"]) == 0
    assert "online" not in json.loads(capsys.readouterr().out)
