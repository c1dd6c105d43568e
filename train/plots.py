"""Figures for a fold directory: loss / UA curves per epoch and the test confusion matrix (Agg backend)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fold_plots(fold_dir: Path, result: dict) -> None:
    try:
        save_curves(Path(fold_dir) / "curves.png", result.get("history", []))
        m = result["test_knn"]
        save_confusion(Path(fold_dir) / "confusion.png", np.asarray(m["confusion"]), m["labels"],
                       f"fold {result['fold']} test (UA {m['ua']:.3f}, WA {m['wa']:.3f})")
    except Exception as exc:  # noqa: BLE001 - a figure must never fail a finished fold
        log.warning("could not draw figures in %s: %s", fold_dir, exc)


def save_curves(path: Path, history: list[dict]) -> None:
    if not history:
        return
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ep, [h["train_loss"] for h in history], label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(ep, [h["val_ua"] for h in history], color="tab:green")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("validation UA")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_confusion(path: Path, cm: np.ndarray, labels: list[str], title: str) -> None:
    plt = _plt()
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{rows[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
