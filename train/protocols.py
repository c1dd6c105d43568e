"""Evaluation protocols: speaker-independent folds with train / validation / test roles.

``loso``: the speakers, shuffled by the seed, are dealt into k groups (k = ``folds``, or one group per
speaker when 0); fold i tests group i, validates on group (i + 1) mod k and trains on the rest, so no
speaker holds two roles in a fold and every speaker is tested exactly once (the 8/1/1 split of the
papers on IEMOCAP's 10 speakers). ``loso_session``: the same over sessions. ``fixed``: one fold from a
``split`` column (train/val/test) or from the configured speaker lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serlive.model import ConfigError

from .config import ProtocolConfig
from .data import Utterance


@dataclass(frozen=True, slots=True)
class Fold:
    """Indices into the utterance list, and the speakers (or sessions) held out."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_groups: tuple[str, ...]
    test_groups: tuple[str, ...]


def make_folds(utts: list[Utterance], cfg: ProtocolConfig) -> list[Fold]:
    if cfg.kind == "all":
        every = np.arange(len(utts))
        folds = [Fold(0, every, every, every, (), ())]
    elif cfg.kind == "fixed":
        folds = [_fixed(utts, cfg)]
    else:
        key = (lambda u: u.speaker) if cfg.kind == "loso" else (lambda u: u.session)
        folds = _grouped([key(u) for u in utts], cfg.folds, cfg.seed)
    return folds[: cfg.max_folds] if cfg.max_folds else folds


def check_classes(utts: list[Utterance], folds: list[Fold], labels: tuple[str, ...]) -> None:
    """Refuse, before any training, data that cannot teach every class: fewer than two classes in the
    manifest, a model label with no utterance, or a fold whose training speakers have none of a class
    (its speakers all held out for validation or testing)."""
    present = sorted({u.label for u in utts})
    if len(present) < 2:
        only = labels[present[0]] if present else "none"
        raise ConfigError(f"the manifest has utterances of one class only ({only}); training needs at least two")
    absent = [labels[c] for c in range(len(labels)) if c not in present]
    if absent:
        raise ConfigError(f"the manifest has no utterance of {', '.join(absent)}: add some, or remove "
                          f"{'it' if len(absent) == 1 else 'them'} from model.labels")
    for fold in folds:
        trained = {utts[i].label for i in fold.train}
        missing = [labels[c] for c in present if c not in trained]
        if missing:
            raise ConfigError(f"fold {fold.index} has no training speaker of {', '.join(missing)} (every speaker "
                              f"with it is held out for validation or test): use fewer folds or more speakers")


def deal_groups(names: list[str], k: int, seed: int) -> list[list[str]]:
    """Shuffle the distinct ``names`` with ``seed`` and deal them round-robin into ``k`` groups."""
    unique = sorted(set(names))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    return [sorted(order[g::k]) for g in range(k)]


def _grouped(keys: list[str], folds: int, seed: int) -> list[Fold]:
    n_groups = len(set(keys))
    k = folds or n_groups
    if n_groups < 3:
        raise ConfigError(f"a speaker-independent protocol needs at least 3 speakers/sessions, the data has {n_groups}")
    if k > n_groups:
        raise ConfigError(f"protocol.folds is {k} but the data has only {n_groups} speakers/sessions")
    groups = deal_groups(keys, k, seed)
    arr = np.asarray(keys)
    out = []
    for i in range(k):
        test, val = groups[i], groups[(i + 1) % k]
        is_test, is_val = np.isin(arr, test), np.isin(arr, val)
        train = np.flatnonzero(~is_test & ~is_val)
        out.append(Fold(i, train, np.flatnonzero(is_val), np.flatnonzero(is_test), tuple(val), tuple(test)))
    return out


def _fixed(utts: list[Utterance], cfg: ProtocolConfig) -> Fold:
    if any(u.split for u in utts):
        role = np.array([u.split for u in utts])
    elif cfg.val_speakers:
        spk = np.array([u.speaker for u in utts])
        role = np.where(np.isin(spk, cfg.test_speakers), "test", np.where(np.isin(spk, cfg.val_speakers), "val", ""))
        train = np.isin(spk, cfg.train_speakers) if cfg.train_speakers else role == ""
        role = np.where((role == "") & train, "train", role)
    else:
        raise ConfigError("protocol.kind 'fixed' needs a split column in the manifest or protocol.val_speakers")
    parts = {r: np.flatnonzero(role == r) for r in ("train", "val", "test")}
    if not cfg.test_speakers and not any(u.split for u in utts):
        # A final model trained on every speaker: nothing is held out, so the "test" metrics it
        # reports are its validation speakers' (early stopping and the kNN search saw them).
        parts["test"] = parts["val"]
    empty = [r for r, ix in parts.items() if len(ix) == 0]
    if empty:
        raise ConfigError(f"the fixed split has no {', '.join(empty)} utterances")
    return Fold(0, parts["train"], parts["val"], parts["test"], tuple(cfg.val_speakers), tuple(cfg.test_speakers))
