"""Inference over a split, and the kNN search of the SCL paper (sec. 3.2): a datastore of the
training + validation embeddings, k in 1..32 and alpha in (0, 1) chosen by validation UA.

During the search the validation queries look only at the training keys: with validation keys in the
store, a query finds itself at distance 0 and, on RAVDESS, its own speaker's repetition of the same
sentence, so the search sees a speaker-dependent kNN and picks k = 1 and a large alpha that the unseen
test speakers do not reward. Searching against training keys mimics the test condition (speakers absent
from the store). The saved datastore then holds every training and validation key, as in the paper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from serlive.model import KnnDatastore
from serlive.model.knn import interpolate, vote

from .config import KnnSearchConfig
from .metrics import classification

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outputs:
    """Model outputs over a split, in the order of ``index``: ``p_model`` (N, C), ``embedding`` (N, D),
    ``dims`` (N, 2) or None, ``labels`` (N,), ``targets`` (N, 2) with NaN where absent."""

    index: np.ndarray
    p_model: np.ndarray
    embedding: np.ndarray
    dims: np.ndarray | None
    labels: np.ndarray
    targets: np.ndarray


@torch.no_grad()
def infer(model, source, index: np.ndarray, device: torch.device, batch_size: int, autocast: bool = False) -> Outputs:
    """Run the model (eval mode, no augmentation) over ``index`` of ``source``."""
    model.eval()
    pos = {int(i): r for r, i in enumerate(index)}
    n, c = len(index), len(model.config.labels)
    p = np.zeros((n, c), np.float32)
    emb = np.zeros((n, model.config.embed_dim), np.float32)
    dims = np.zeros((n, 2), np.float32) if model.config.dimensional else None
    labels, targets = np.zeros(n, np.int64), np.zeros((n, 2), np.float32)
    for batch in source.eval_batches(index, batch_size):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = source.forward(model, batch)
        rows = [pos[int(i)] for i in batch.index.cpu()]
        p[rows] = torch.softmax(out.logits.float(), -1).cpu().numpy()
        emb[rows] = out.embedding.float().cpu().numpy()
        if dims is not None:
            dims[rows] = out.dims.float().cpu().numpy()
        labels[rows] = batch.labels.cpu().numpy()
        targets[rows] = batch.dims.cpu().numpy()
    return Outputs(np.asarray(index), p, emb, dims, labels, targets)


def build_datastore(parts: list[Outputs], num_classes: int) -> KnnDatastore:
    return KnnDatastore(np.concatenate([o.embedding for o in parts]), np.concatenate([o.labels for o in parts]), num_classes)


def alpha_grid(steps: int) -> np.ndarray:
    """``steps`` points evenly inside (0, 1): 19 gives 0.05, 0.10, ..., 0.95."""
    return np.linspace(0.0, 1.0, steps + 2)[1:-1]


@dataclass(frozen=True, slots=True)
class Neighbours:
    """What the kNN search needs of one split: ``p_model`` (N, C), ``labels`` (N,), and the ``k_max``
    nearest keys of each query as ``dist`` (N, K) and their labels ``key_labels`` (N, K)."""

    p_model: np.ndarray
    labels: np.ndarray
    dist: np.ndarray
    key_labels: np.ndarray

    @classmethod
    def of(cls, store: KnnDatastore, out: Outputs, k_max: int) -> "Neighbours":
        dist, idx = store.search(out.embedding, min(k_max, len(store)))
        return cls(out.p_model, out.labels, dist, store.labels[idx])

    @classmethod
    def concat(cls, parts: list["Neighbours"]) -> "Neighbours":
        k = min(p.dist.shape[1] for p in parts)
        return cls(*(np.concatenate([getattr(p, f)[:, :k] if f in ("dist", "key_labels") else getattr(p, f)
                                     for p in parts]) for f in ("p_model", "labels", "dist", "key_labels")))

    def probs(self, k: int, alpha: float, temperature: float, num_classes: int) -> np.ndarray:
        if alpha <= 0:
            return self.p_model
        return interpolate(self.p_model, vote(self.dist[:, :k], self.key_labels[:, :k], temperature, num_classes), alpha)


def tune(store: KnnDatastore, val: Outputs, cfg: KnnSearchConfig, labels: tuple[str, ...]) -> dict:
    """Best (k, alpha) by validation UA with ``store`` (the training keys); see :func:`search`."""
    return search(Neighbours.of(store, val, cfg.k_max), cfg, labels)


def search(nb: Neighbours, cfg: KnnSearchConfig, labels: tuple[str, ...]) -> dict:
    """Best (k, alpha) by UA over the queries of ``nb``. Ties go to the smaller k, then the smaller
    alpha. Returns k, alpha, val_ua and val_ua_model (alpha = 0)."""
    base = classification(nb.labels, nb.p_model.argmax(1), labels)["ua"]
    best = {"k": 1, "alpha": round(float(alpha_grid(cfg.alpha_steps)[0]), 6), "val_ua": -1.0}
    for k in range(1, nb.dist.shape[1] + 1):
        p_knn = vote(nb.dist[:, :k], nb.key_labels[:, :k], cfg.temperature, len(labels))
        for alpha in alpha_grid(cfg.alpha_steps):
            ua = classification(nb.labels, interpolate(nb.p_model, p_knn, alpha).argmax(1), labels)["ua"]
            if ua > best["val_ua"] + 1e-12:
                best = {"k": k, "alpha": round(float(alpha), 6), "val_ua": float(ua)}
    best["val_ua_model"] = float(base)
    log.info("kNN search over %d queries: k=%d alpha=%.2f UA %.4f (model alone %.4f)", len(nb.labels), best["k"],
             best["alpha"], best["val_ua"], base)
    return best


NEIGHBOURS_FILE = "neighbours.npz"
"""Per fold: the validation queries against the training keys and the test queries against the saved
datastore, each as :class:`Neighbours` up to ``knn.k_max``, for the cross-fold search."""


def save_neighbours(path, val: Neighbours, test: Neighbours) -> None:
    from serlive.model.checkpoint import atomic_write

    arrays = {f"{split}_{f}": getattr(nb, f) for split, nb in (("val", val), ("test", test))
              for f in ("p_model", "labels", "dist", "key_labels")}
    atomic_write(path, lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))


def load_neighbours(path) -> tuple[Neighbours, Neighbours]:
    with np.load(path, allow_pickle=False) as z:
        return tuple(Neighbours(*(z[f"{split}_{f}"] for f in ("p_model", "labels", "dist", "key_labels")))
                     for split in ("val", "test"))


def cross_fold(results: list[dict], neighbours: list[tuple[Neighbours, Neighbours]], cfg: KnnSearchConfig,
               labels: tuple[str, ...]) -> dict:
    """kNN settings chosen across folds, where one fold's validation speakers are too few to choose them.

    Fold i's (k, alpha) is searched on the validation queries of every fold whose validation speakers do
    not include fold i's test speakers (so the test speakers stay unseen), and its test queries are
    scored with it. ``final`` is the search over every fold's validation queries: the setting for a
    model trained on all the speakers."""
    from .metrics import classification

    per_fold = []
    for r, (_, test) in zip(results, neighbours):
        pool = [val for q, (val, _) in zip(results, neighbours) if not set(q["val_groups"]) & set(r["test_groups"])]
        best = search(Neighbours.concat(pool), cfg, labels)
        m = classification(test.labels, test.probs(best["k"], best["alpha"], cfg.temperature, len(labels)).argmax(1),
                           labels)
        per_fold.append({"fold": r["fold"], "k": best["k"], "alpha": best["alpha"], "pooled_val": len(Neighbours.concat(pool).labels),
                         **m})
    final = search(Neighbours.concat([val for val, _ in neighbours]), cfg, labels)
    return {"per_fold": per_fold, "final": final}
