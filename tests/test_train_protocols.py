"""Fold construction: roles never overlap, every speaker is tested once, seeds are deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serlive.model import ConfigError
from serlive.train.config import ProtocolConfig
from serlive.train.data import Utterance
from serlive.train.protocols import make_folds


def utts(speakers: int, per: int = 3, sessions: bool = False) -> list[Utterance]:
    out = []
    for s in range(speakers):
        for j in range(per):
            spk = f"s{s:02d}"
            out.append(Utterance(Path(f"/x/{spk}_{j}.wav"), spk, f"sess{s // 2}" if sessions else spk, j % 4, "x"))
    return out


@pytest.mark.parametrize("speakers,folds", [(10, 0), (10, 10), (20, 5), (7, 3)])
def test_loso_roles_disjoint_and_each_speaker_tested_once(speakers, folds):
    data = utts(speakers)
    spk = np.array([u.speaker for u in data])
    result = make_folds(data, ProtocolConfig(kind="loso", folds=folds, seed=3))
    assert len(result) == (folds or speakers)
    tested = []
    for f in result:
        train, val, test = set(spk[f.train]), set(spk[f.val]), set(spk[f.test])
        assert not train & val and not train & test and not val & test
        assert train | val | test == set(spk)
        assert len(f.train) + len(f.val) + len(f.test) == len(data)
        assert set(f.test_groups) == test and set(f.val_groups) == val
        tested += sorted(test)
    assert sorted(tested) == sorted(set(spk))


def test_loso_is_deterministic_by_seed():
    data = utts(10)
    a = make_folds(data, ProtocolConfig(folds=10, seed=1))
    b = make_folds(data, ProtocolConfig(folds=10, seed=1))
    c = make_folds(data, ProtocolConfig(folds=10, seed=2))
    assert [f.test_groups for f in a] == [f.test_groups for f in b]
    assert [f.test_groups for f in a] != [f.test_groups for f in c]


def test_leave_one_session_out_keeps_sessions_whole():
    data = utts(10, sessions=True)  # five sessions of two speakers
    sess = np.array([u.session for u in data])
    folds = make_folds(data, ProtocolConfig(kind="loso_session"))
    assert len(folds) == 5
    for f in folds:
        assert len(set(sess[f.test])) == 1 and len(set(sess[f.val])) == 1
        assert not set(sess[f.train]) & (set(sess[f.test]) | set(sess[f.val]))


def test_fixed_split_from_speaker_lists_and_max_folds():
    data = utts(5)
    f, = make_folds(data, ProtocolConfig(kind="fixed", val_speakers=("s01",), test_speakers=("s02", "s03")))
    spk = np.array([u.speaker for u in data])
    assert set(spk[f.val]) == {"s01"} and set(spk[f.test]) == {"s02", "s03"} and set(spk[f.train]) == {"s00", "s04"}
    assert len(make_folds(utts(6), ProtocolConfig(folds=3, max_folds=2))) == 2


def test_too_few_speakers_is_a_clear_error():
    with pytest.raises(ConfigError, match="at least 3"):
        make_folds(utts(2), ProtocolConfig())
    with pytest.raises(ConfigError, match="only 4"):
        make_folds(utts(4), ProtocolConfig(folds=5))


def test_all_trains_on_every_speaker_and_needs_a_fixed_epoch_count():
    from serlive.train import config

    (fold,) = make_folds(utts(4), ProtocolConfig(kind="all"))
    assert fold.train.tolist() == fold.val.tolist() == fold.test.tolist() == list(range(12))
    with pytest.raises(ConfigError, match='optim.select = "last"'):
        config.load(None, ["protocol.kind='all'"])
    assert config.load(None, ["protocol.kind='all'", "optim.select='last'"]).protocol.kind == "all"
