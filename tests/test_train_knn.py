"""The kNN (k, alpha) search against a numpy brute force over the same grid."""

from __future__ import annotations

import numpy as np

from serlive.train.config import KnnSearchConfig
from serlive.model.knn import interpolate
from serlive.train.knn_tune import (Neighbours, Outputs, alpha_grid, build_datastore, cross_fold, load_neighbours,
                                    save_neighbours, search, tune)
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


def test_neighbours_give_the_datastore_probabilities_and_survive_a_file(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 4))
    train, val = outputs(rng, 50, centres), outputs(rng, 20, centres)
    store = build_datastore([train], 3)
    nb = Neighbours.of(store, val, 10)
    for k, alpha in ((1, 0.3), (7, 0.8), (10, 0.0)):
        ref = interpolate(val.p_model, store.probs(val.embedding, k, 0.1), alpha) if alpha else val.p_model
        np.testing.assert_allclose(nb.probs(k, alpha, 0.1, 3), ref, rtol=1e-6)
    save_neighbours(tmp_path / "nb.npz", nb, nb)
    back, _ = load_neighbours(tmp_path / "nb.npz")
    for field in ("p_model", "labels", "dist", "key_labels"):
        np.testing.assert_array_equal(getattr(back, field), getattr(nb, field))


def test_cross_fold_search_never_sees_a_folds_test_speakers():
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 1, (3, 4))
    speakers = ["s0", "s1", "s2", "s3"]
    # A LOSO ring: fold i tests speaker i and validates on speaker i + 1.
    results = [{"fold": i, "test_groups": [speakers[i]], "val_groups": [speakers[(i + 1) % 4]]} for i in range(4)]
    cfg = KnnSearchConfig(k_max=6, alpha_steps=5, temperature=0.1)
    neighbours = []
    for i in range(4):
        store = build_datastore([outputs(rng, 40, centres)], 3)
        neighbours.append((Neighbours.of(store, outputs(rng, 15 + i, centres), 6),
                           Neighbours.of(store, outputs(rng, 12, centres), 6)))
    got = cross_fold(results, neighbours, cfg, LABELS)
    for i, row in enumerate(got["per_fold"]):
        # Fold i - 1 validated on speaker i, fold i's test speaker: it is left out of fold i's pool.
        pool = [neighbours[j][0] for j in range(4) if j != (i - 1) % 4]
        ref = search(Neighbours.concat(pool), cfg, LABELS)
        assert row["pooled_val"] == sum(len(p.labels) for p in pool) == (15 + 16 + 17 + 18) - (15 + (i - 1) % 4)
        assert (row["k"], row["alpha"]) == (ref["k"], ref["alpha"])
        test = neighbours[i][1]
        assert row["ua"] == classification(test.labels, test.probs(ref["k"], ref["alpha"], 0.1, 3).argmax(1), LABELS)["ua"]
    assert got["final"] == search(Neighbours.concat([v for v, _ in neighbours]), cfg, LABELS)
