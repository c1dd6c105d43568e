"""How much a cross-validated recipe depends on the recording level: every fold's model on its own test
speakers, clean and with each utterance at a random gain within ±``gain_db`` (drawn with the protocol
seed), model alone. The classic baseline's counterpart is ``ser-train baseline --test-gain-db``.

    python -m serlive.train.gain_check runs/loso --gain-db 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from serlive.model import Predictor

from .baseline import test_gains
from .config import load_json
from .fit import CONFIG_FILE, load_data
from .metrics import classification, mean_ci
from .protocols import make_folds


def run(run_dir: str | Path, gain_db: float) -> dict:
    run_dir = Path(run_dir)
    cfg = load_json(run_dir / CONFIG_FILE)
    data = load_data(cfg, progress=False)
    gains = test_gains(cfg.protocol.seed, len(data), gain_db)
    labels, rows = cfg.model.labels, []
    for fold in make_folds(data.utts, cfg.protocol):
        predictor = Predictor.from_dir(run_dir / f"fold_{fold.index}" / "model", use_knn=False)
        y = data.labels[fold.test]
        ua = {}
        for name, waves in (("clean", [data.wave(i) for i in fold.test]),
                            ("gain", [data.wave(i) * gains[i] for i in fold.test])):
            preds = predictor.predict_batch(waves)
            ua[name] = classification(y, np.array([labels.index(p.label) for p in preds]), labels)["ua"]
        rows.append({"fold": fold.index, **ua})
    return {"gain_db": gain_db, "clean": mean_ci([r["clean"] for r in rows]),
            "gain": mean_ci([r["gain"] for r in rows]), "per_fold": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serlive.train.gain_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a finished ser-train fit run (its fold models are used)")
    ap.add_argument("--gain-db", type=float, default=10.0)
    args = ap.parse_args(argv)
    print(json.dumps(run(args.run_dir, args.gain_db), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
