"""The kNN datastore of SCL-kNN (Wang et al., Interspeech 2023, eq. 3-4).

Keys are L2-normalised 32-d embeddings of the training and validation utterances, values their labels.
For a query, the k nearest keys by Euclidean distance vote with weights ``softmax(-d / T)``;
``p = alpha * p_knn + (1 - alpha) * p_model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EPS = 1e-12
"""Guards the L2 normalisation of an all-zero embedding."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


def interpolate(p_model: np.ndarray, p_knn: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * p_knn + (1 - alpha) * p_model``."""
    return alpha * np.asarray(p_knn) + (1.0 - alpha) * np.asarray(p_model)


def vote(dist: np.ndarray, key_labels: np.ndarray, temperature: float, num_classes: int) -> np.ndarray:
    """Class probabilities ``(Q, num_classes)`` from the distances ``(Q, k)`` and labels ``(Q, k)`` of
    each query's neighbours: weights ``softmax(-d / T)`` summed per label (eq. 3)."""
    logits = -dist / temperature
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    out = np.zeros((len(dist), num_classes), np.float64)
    np.add.at(out, (np.arange(len(dist))[:, None], key_labels), w)
    return out.astype(np.float32)


class KnnDatastore:
    """An exact faiss index over normalised embeddings ``(N, D)`` with integer labels ``(N,)``."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, num_classes: int, normalise: bool = True) -> None:
        import faiss

        # Re-normalising stored keys would move them by an ulp; loading passes normalise=False.
        keys = l2_normalise(embeddings) if normalise else np.ascontiguousarray(embeddings, np.float32)
        labels = np.asarray(labels, np.int64)
        if keys.ndim != 2 or len(keys) != len(labels) or len(keys) == 0:
            raise ValueError("a kNN datastore needs a non-empty (N, D) array and N labels")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"kNN labels must lie in 0..{num_classes - 1}")
        self.keys, self.labels, self.num_classes = keys, labels, num_classes
        self.index = faiss.IndexFlatL2(keys.shape[1])
        self.index.add(keys)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return self.keys.shape[1]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances ``(Q, k)`` and indices ``(Q, k)`` of the k nearest keys, nearest first."""
        k = min(k, len(self))
        sq, idx = self.index.search(l2_normalise(queries), k)
        return np.sqrt(np.maximum(sq, 0.0)), idx

    def probs(self, queries: np.ndarray, k: int, temperature: float) -> np.ndarray:
        """``p_knn`` for each query, ``(Q, num_classes)``: distance-weighted vote of the k nearest."""
        dist, idx = self.search(queries, k)
        return self.vote(dist, idx, temperature)

    def vote(self, dist: np.ndarray, idx: np.ndarray, temperature: float) -> np.ndarray:
        """Turn neighbour distances/indices (from :meth:`search`) into class probabilities."""
        return vote(dist, self.labels[idx], temperature, self.num_classes)

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file({"keys": self.keys, "labels": self.labels}, str(path), metadata={"num_classes": str(self.num_classes)})

    @classmethod
    def load(cls, path: str | Path) -> "KnnDatastore":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            return cls(fh.get_tensor("keys"), fh.get_tensor("labels"), int(meta["num_classes"]), normalise=False)
