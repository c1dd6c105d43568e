"""Losses and metrics against direct transcriptions and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from serlive.train.losses import class_weights, combined_loss, supervised_contrastive
from serlive.train.metrics import ccc, classification, confusion, mean_ci
from serlive.train.config import LossConfig
from serlive.model import SEROutput


def scl_loop(x: torch.Tensor, y: torch.Tensor, tau: float) -> float:
    """Eq. 1 of Wang et al. (2023), one term at a time, on L2-normalised embeddings."""
    x = [[c / math.sqrt(sum(e ** 2 for e in v)) for c in v] for v in x.tolist()]
    dot = lambda a, b: sum(p * q for p, q in zip(a, b))  # noqa: E731
    total = 0.0
    for i in range(len(x)):
        positives = [p for p in range(len(x)) if p != i and int(y[p]) == int(y[i])]
        denom = sum(math.exp(dot(x[i], x[a]) / tau) for a in range(len(x)) if a != i)
        total += -1.0 / len(positives) * sum(math.log(math.exp(dot(x[i], x[p]) / tau) / denom) for p in positives)
    return total


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_scl_matches_loop_transcription_of_eq1(tau):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0])  # each anchor has at least one positive
    expected = scl_loop(x, y, tau)
    got_sum = supervised_contrastive(x, y, tau, reduction="sum")
    got_mean = supervised_contrastive(x, y, tau, reduction="mean")
    assert float(got_sum) == pytest.approx(expected, rel=1e-9)
    assert float(got_mean) == pytest.approx(expected / 8, rel=1e-9)


def test_scl_skips_anchors_without_positives_and_has_gradients():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 2])
    loss = supervised_contrastive(x, y, 0.07, reduction="sum")
    x_all = x.detach().double()
    # anchors 0 and 1 only; their denominators still run over all four instances
    n = torch.nn.functional.normalize(x_all, dim=1)
    sim = n @ n.T / 0.07
    ref = 0.0
    for i, p in ((0, 1), (1, 0)):
        others = [a for a in range(4) if a != i]
        ref += -(sim[i, p] - torch.logsumexp(sim[i, others], 0))
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-9)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    # N / (C_present * n_c) = 6 / (3 * n_c); class 3 absent -> 0
    assert w.tolist() == pytest.approx([6 / 9, 6 / 3, 6 / 6, 0.0])


def test_weighted_ce_and_dropped_mae_in_combined_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([3.0, 0.5])
    out = SEROutput(logits, torch.randn(3, 4), torch.zeros(3, 2), torch.ones(3))
    dims = torch.full((3, 2), float("nan"))  # no valence/arousal targets: MAE terms drop out
    cfg = LossConfig(ce=0.5, valence=0.25, arousal=0.25, scl_lambda=0.0)
    parts = combined_loss(out, labels, dims, cfg, w, use_scl=False)
    logp = torch.log_softmax(logits, 1)
    ce = -(3.0 * logp[0, 0] + 0.5 * logp[1, 1] + 0.5 * logp[2, 1]) / (3.0 + 0.5 + 0.5)
    assert float(parts.total) == pytest.approx(0.5 * float(ce), rel=1e-6)
    assert math.isnan(parts.valence) and math.isnan(parts.scl)
    dims = torch.tensor([[1.0, float("nan")], [0.0, float("nan")], [float("nan"), float("nan")]])
    parts = combined_loss(out, labels, dims, cfg, w, use_scl=False)
    assert parts.valence == pytest.approx(0.5) and math.isnan(parts.arousal)
    assert float(parts.total) == pytest.approx(0.5 * float(ce) + 0.25 * 0.5, rel=1e-6)


def test_combined_loss_with_scl_is_eq2():
    torch.manual_seed(0)
    out = SEROutput(torch.randn(4, 3), torch.randn(4, 8), None, torch.ones(4))
    labels = torch.tensor([0, 1, 0, 1])
    cfg = LossConfig(scl_lambda=0.1, scl_temperature=0.07)
    parts = combined_loss(out, labels, torch.zeros(4, 2), cfg, None, use_scl=True)
    expected = 0.9 * torch.nn.functional.cross_entropy(out.logits, labels) + 0.1 * supervised_contrastive(out.embedding, labels)
    assert float(parts.total) == pytest.approx(float(expected), rel=1e-6)


def test_consistency_pulls_perturbed_embeddings_to_their_clean_anchors_only():
    torch.manual_seed(0)
    logits, emb = torch.randn(6, 3, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    out = SEROutput(logits, emb, None, torch.ones(6))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # rows 3-5 are the clean forms of rows 0-2
    cfg = LossConfig(scl_lambda=0.1, consistency=2.0)
    parts = combined_loss(out, labels, torch.zeros(6, 2), cfg, None, use_scl=True, anchors=3)
    cos = torch.nn.functional.cosine_similarity(emb[:3], emb[3:], dim=1)
    cons = (1 - cos).mean()
    assert parts.consistency == pytest.approx(float(cons), rel=1e-5)
    # the anchors take no part in CE or SCL: those are the loss of the first three rows alone
    rest = 0.9 * torch.nn.functional.cross_entropy(logits[:3], labels[:3]) + 0.1 * supervised_contrastive(emb[:3], labels[:3])
    assert float(parts.total) == pytest.approx(float(rest + 2.0 * cons), rel=1e-5)
    parts.total.backward()
    assert logits.grad[3:].abs().sum() == 0 and emb.grad[3:].abs().sum() == 0, "the clean side is a fixed target"
    assert emb.grad[:3].abs().sum() > 0
    same = SEROutput(logits.detach(), torch.cat([emb[:3], emb[:3]]).detach(), None, torch.ones(6))
    parts = combined_loss(same, labels, torch.zeros(6, 2), cfg, None, use_scl=True, anchors=3)
    assert parts.consistency == pytest.approx(0.0, abs=1e-6), "a draw that embeds like its clean form costs nothing"


def test_ua_wa_recall_confusion_by_hand():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0, 2])
    m = classification(y_true, y_pred, ("a", "b", "c", "d"))
    assert m["confusion"] == [[3, 1, 0, 0], [0, 1, 1, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    assert m["wa"] == pytest.approx(7 / 10)
    assert m["recall"] == {"a": 0.75, "b": 0.5, "c": 0.75, "d": None}
    assert m["ua"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)  # absent class d not averaged
    assert m["n"] == 10
    assert confusion([1], [0], 2).tolist() == [[0, 0], [1, 0]]


def test_mean_ci_uses_t_distribution():
    r = mean_ci([0.70, 0.74, 0.72, 0.68])
    mean, s = 0.71, math.sqrt(((0.01) ** 2 + 0.03 ** 2 + 0.01 ** 2 + 0.03 ** 2) / 3)
    t975_df3 = 3.182446305284263  # scipy.stats.t.ppf(0.975, 3), from tables: 3.182
    assert r["mean"] == pytest.approx(mean)
    assert r["std"] == pytest.approx(s)
    assert r["ci95"] == pytest.approx(t975_df3 * s / 2)
    assert mean_ci([0.5])["ci95"] is None and mean_ci([])["mean"] is None


def test_ccc_by_hand():
    assert ccc(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    # pred = target + 1: cov = var = 2/3, bias^2 = 1 -> 2*(2/3) / (2/3 + 2/3 + 1) = 4/7
    assert ccc(np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(4 / 7)
