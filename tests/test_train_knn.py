"""The kNN (k, alpha) search against a numpy brute force over the same grid."""

from __future__ import annotations

import numpy as np

from serlive.train.config import KnnSearchConfig
from serlive.train.knn_tune import Outputs, alpha_grid, build_datastore, tune
from serlive.train.metrics import classification

LABELS = ("a", "b", "c")


def outputs(rng, n, centres):
    y = rng.integers(0, 3, n)
    emb = centres[y] + rng.normal(0, 0.8, (n, 4))
    p = rng.dirichlet(np.ones(3), n).astype(np.float32)
    return Outputs(np.arange(n), p, emb.astype(np.float32), None, y, np.full((n, 2), np.nan, np.float32))


def brute_force(train: Outputs, val: Outputs, cfg: KnnSearchConfig):
    keys = train.embedding / np.linalg.norm(train.embedding, axis=1, keepdims=True)
    q = val.embedding / np.linalg.norm(val.embedding, axis=1, keepdims=True)
    d = np.sqrt(((q[:, None, :] - keys[None]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")
    best = (-1.0, None, None)
    for k in range(1, cfg.k_max + 1):
        p_knn = np.zeros((len(q), 3))
        for i in range(len(q)):
            nn = order[i, :k]
            w = np.exp(-d[i, nn] / cfg.temperature)
            w /= w.sum()
            for j, weight in zip(nn, w):
                p_knn[i, train.labels[j]] += weight
        for alpha in alpha_grid(cfg.alpha_steps):
            ua = classification(val.labels, (alpha * p_knn + (1 - alpha) * val.p_model).argmax(1), LABELS)["ua"]
            if ua > best[0] + 1e-12:
                best = (ua, k, alpha)
    return best


def test_tune_matches_brute_force():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 4))
    train, val = outputs(rng, 60, centres), outputs(rng, 30, centres)
    cfg = KnnSearchConfig(k_max=8, alpha_steps=9, temperature=0.1)
    got = tune(build_datastore([train], 3), val, cfg, LABELS)
    ua, k, alpha = brute_force(train, val, cfg)
    assert (got["k"], got["alpha"]) == (k, round(float(alpha), 6))
    assert got["val_ua"] == ua and got["val_ua"] >= got["val_ua_model"]
