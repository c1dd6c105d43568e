"""The kNN datastore against a numpy brute-force reference."""

import numpy as np
import pytest

from serlive.model.knn import KnnDatastore, interpolate


def brute_force(keys, labels, queries, k, temperature, num_classes):
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = np.zeros((len(queries), num_classes))
    for qi, q in enumerate(queries):
        d = np.sqrt(((keys - q) ** 2).sum(1))
        nearest = np.argsort(d, kind="stable")[:k]
        w = np.exp(-d[nearest] / temperature)
        w /= w.sum()
        for j, wj in zip(nearest, w):
            out[qi, labels[j]] += wj
    return out


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (5, 0.07), (32, 1.0), (200, 0.5)])
def test_knn_probs_equal_brute_force(k, temperature):
    rng = np.random.default_rng(k)
    keys = rng.standard_normal((150, 32)).astype(np.float32)
    labels = rng.integers(0, 4, 150)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    store = KnnDatastore(keys, labels, 4)
    got = store.probs(queries, k, temperature)
    np.testing.assert_allclose(got, brute_force(keys, labels, queries, min(k, 150), temperature, 4), atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)


def test_query_equal_to_a_key_votes_its_label_at_k1():
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((10, 8)).astype(np.float32)
    store = KnnDatastore(keys, np.arange(10) % 3, 3)
    p = store.probs(keys[4:5] * 3.0, 1, 0.1)  # scale does not matter after L2 normalisation
    assert p.argmax() == 4 % 3 and p.max() == pytest.approx(1.0)


def test_interpolation_formula():
    p_model = np.array([[0.7, 0.2, 0.1]])
    p_knn = np.array([[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(interpolate(p_model, p_knn, 0.0), p_model)
    np.testing.assert_allclose(interpolate(p_model, p_knn, 1.0), p_knn)
    np.testing.assert_allclose(interpolate(p_model, p_knn, 0.25), [[0.525, 0.15, 0.325]])


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    store = KnnDatastore(rng.standard_normal((30, 32)), rng.integers(0, 4, 30), 4)
    store.save(tmp_path / "knn.safetensors")
    back = KnnDatastore.load(tmp_path / "knn.safetensors")
    q = rng.standard_normal((5, 32))
    np.testing.assert_array_equal(back.probs(q, 7, 0.1), store.probs(q, 7, 0.1))


def test_bad_datastore_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        KnnDatastore(np.zeros((0, 4)), np.zeros(0), 2)
    with pytest.raises(ValueError, match="labels must lie"):
        KnnDatastore(np.ones((3, 4)), [0, 1, 5], 2)
