"""Losses: weighted cross-entropy, masked MAE for valence/arousal, supervised contrastive loss (eq. 1
of Wang et al., Interspeech 2023), and their combination (see :class:`~serlive.train.config.LossConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from .config import LossConfig


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from the training label distribution, ``N / (C * n_c)`` (mean 1 over
    samples); a class absent from training gets weight 0."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                           reduction: str = "mean", normalise: bool = True) -> torch.Tensor:
    """Eq. 1: ``sum_i -1/|P(i)| sum_{p in P(i)} log(exp(x_i.x_p/t) / sum_{a != i} exp(x_i.x_a/t))``.

    ``embeddings`` (2N, D) (both views in one batch), ``labels`` (2N,). Embeddings are L2-normalised
    first (Khosla et al.; the paper's dot product is on the unit sphere). Anchors with no positive are
    skipped. ``reduction="sum"`` is eq. 1 as written; ``"mean"`` divides by the anchors counted.
    """
    x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
    x = F.normalize(x, dim=1) if normalise else x
    n = x.shape[0]
    sim = x @ x.T / temperature  # (2N, 2N)
    self_mask = torch.eye(n, dtype=torch.bool, device=x.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # A(i) = everything but i
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    has = n_pos > 0
    per_anchor = -pos_log_prob[has] / n_pos[has]
    if per_anchor.numel() == 0:
        return embeddings.sum() * 0.0
    return per_anchor.sum() if reduction == "sum" else per_anchor.mean()


def masked_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Mean absolute error over the finite targets; None when there are none."""
    ok = torch.isfinite(target)
    if not ok.any():
        return None
    return (pred[ok].float() - target[ok]).abs().mean()


@dataclass
class LossParts:
    """The total and its parts as floats, for logging."""

    total: torch.Tensor
    ce: float
    scl: float
    valence: float
    arousal: float
    consistency: float = float("nan")


def clean_consistency(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance from each perturbed draw's embedding to its clean utterance's. The clean side is
    the target, without gradient: the perturbed embedding is pulled to where clean speech puts it, not both to
    a midpoint, so what the classifier and the kNN datastore (built from clean audio) learned stays put."""
    return (1.0 - F.cosine_similarity(perturbed.float(), clean.detach().float(), dim=1)).mean()


def combined_loss(out, labels: torch.Tensor, dims: torch.Tensor, cfg: LossConfig,
                  weights: torch.Tensor | None, use_scl: bool, anchors: int = 0) -> LossParts:
    """``(1 - lam) * (ce * wCE + v * MAE_v + a * MAE_a) + lam * SCL``; lam = 0 when ``use_scl`` is False.
    MAE terms are dropped when the model has no regressor or the batch has no targets. With ``anchors`` = n,
    the batch's last n rows are the clean forms of its first n (the perturbed draws): they only anchor
    ``cfg.consistency`` * :func:`clean_consistency` and are left out of every other term."""
    cons = None
    if anchors:
        keep = len(labels) - anchors
        cons = clean_consistency(out.embedding[:anchors], out.embedding[keep:])
        out = replace(out, **{f.name: None if getattr(out, f.name) is None else getattr(out, f.name)[:keep]
                              for f in fields(out)})
        labels, dims = labels[:keep], dims[:keep]
    w = weights.to(out.logits.device) if weights is not None else None
    ce = F.cross_entropy(out.logits.float(), labels, weight=w)
    task = cfg.ce * ce
    mae = [None, None]
    if out.dims is not None:
        for j, weight in enumerate((cfg.valence, cfg.arousal)):
            mae[j] = masked_mae(out.dims[:, j], dims[:, j]) if weight > 0 else None
            if mae[j] is not None:
                task = task + weight * mae[j]
    lam = cfg.scl_lambda if use_scl else 0.0
    scl = None
    if lam > 0:
        scl = supervised_contrastive(out.embedding, labels, cfg.scl_temperature, cfg.scl_reduction)
        total = (1 - lam) * task + lam * scl
    else:
        total = task
    if cons is not None:
        total = total + cfg.consistency * cons
    return LossParts(total, float(ce.detach()), _f(scl), _f(mae[0]), _f(mae[1]), _f(cons))


def _f(x) -> float:
    return float("nan") if x is None else float(x.detach())
