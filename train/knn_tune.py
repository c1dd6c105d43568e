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
from serlive.model.knn import interpolate

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


def tune(store: KnnDatastore, val: Outputs, cfg: KnnSearchConfig, labels: tuple[str, ...]) -> dict:
    """Best (k, alpha) by validation UA with ``store`` (the training keys). Ties go to the smaller k,
    then the smaller alpha. Returns k, alpha, val_ua and val_ua_model (alpha = 0)."""
    k_max = min(cfg.k_max, len(store))
    dist, idx = store.search(val.embedding, k_max)
    base = classification(val.labels, val.p_model.argmax(1), labels)["ua"]
    best = {"k": 1, "alpha": round(float(alpha_grid(cfg.alpha_steps)[0]), 6), "val_ua": -1.0}
    for k in range(1, k_max + 1):
        p_knn = store.vote(dist[:, :k], idx[:, :k], cfg.temperature)
        for alpha in alpha_grid(cfg.alpha_steps):
            ua = classification(val.labels, interpolate(val.p_model, p_knn, alpha).argmax(1), labels)["ua"]
            if ua > best["val_ua"] + 1e-12:
                best = {"k": k, "alpha": round(float(alpha), 6), "val_ua": float(ua)}
    best["val_ua_model"] = float(base)
    log.info("kNN search: k=%d alpha=%.2f val UA %.4f (model alone %.4f)", best["k"], best["alpha"], best["val_ua"], base)
    return best


def knn_probs(store: KnnDatastore, out: Outputs, k: int, alpha: float, temperature: float) -> np.ndarray:
    """Interpolated probabilities ``alpha * p_knn + (1 - alpha) * p_model`` (alpha 0: the model alone)."""
    if alpha <= 0:
        return out.p_model
    return interpolate(out.p_model, store.probs(out.embedding, k, temperature), alpha)
