"""``ser-train fit --resume`` on checkpoints it did not write, or that were damaged: a real ``ser-train``
process refuses with one sentence and exit 2, runs no code from the file, and what the run had
produced before (finished folds, their models, train.log) is left as it was."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serlive.model import CheckpointError, ConfigError
from serlive.train import cli, fit
from serlive.train.resume import PREVIOUS_FILE, load_checkpoint, save_checkpoint

from .test_train_fit import TINY, crash_at_epoch, tiny_cfg


class Planted:
    """Unpickling this creates ``marker``: the code a hostile checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def ser_train(tmp_path: Path, *args: str) -> subprocess.Popen:
    sets = [a for s in TINY + [f"data.cache_dir='{tmp_path / 'vad'}'"] for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "serlive.train.cli", "fit", *sets, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def finished(proc: subprocess.Popen) -> subprocess.Popen:
    """``proc`` after it exits, with ``stderr`` read into a string."""
    _, proc.stderr = proc.communicate(timeout=300)
    return proc


def error_line(err: str) -> str:
    """The one ``ser-train: ...`` line that ends stderr (log lines and progress bars come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("ser-train: ")]
    assert "Traceback" not in err and len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    return lines[0]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_planted_checkpoint_is_refused_without_running_its_code(tmp_path):
    """fold 0 finished; someone planted fold_1/checkpoint.pt (written by torch.save in one copy of the run,
    as a bare pickle in another). The resumed runs must not unpickle it."""
    torch.set_num_threads(1)
    args = ["--set", "protocol.max_folds=2", "--set", "optim.epochs=1"]
    sets = [a for s in TINY + [f"data.cache_dir='{tmp_path / 'vad'}'"] for a in ("--set", s)]
    assert cli.main(["fit", *sets, *args, "--folds", "0", "--out", str(tmp_path / "run")]) == 0
    shutil.copytree(tmp_path / "run", tmp_path / "run-b")
    plants = {"run": lambda marker, path: torch.save({"model": Planted(marker)}, path),
              "run-b": lambda marker, path: path.write_bytes(pickle.dumps(Planted(marker), protocol=2))}
    before, procs = {}, {}
    for name, plant in plants.items():
        planted = tmp_path / name / "fold_1" / "checkpoint.pt"
        planted.parent.mkdir()
        plant(tmp_path / f"pwned-{name}", planted)
        with pytest.raises(pickle.UnpicklingError):  # the refusal is torch's weights_only unpickler, not luck
            torch.load(planted, weights_only=True)
        before[name] = snapshot(tmp_path / name)
        procs[name] = ser_train(tmp_path, "--out", str(tmp_path / name), *args, "--resume")
    for name, proc in procs.items():
        proc = finished(proc)
        line = error_line(proc.stderr)
        assert proc.returncode == 2
        assert line.startswith(f"ser-train: {tmp_path / name / 'fold_1' / 'checkpoint.pt'} is not a ser-train checkpoint")
        assert "no earlier epoch's checkpoint is kept" in line
        assert not (tmp_path / f"pwned-{name}").exists()
        after = snapshot(tmp_path / name)
        assert {k: v for k, v in after.items() if k != "train.log"} == {k: v for k, v in before[name].items()
                                                                          if k != "train.log"}
        assert after["train.log"].startswith(before[name]["train.log"])
        assert b"fold 0 already finished; skipping" in after["train.log"][len(before[name]["train.log"]):]
        assert json.loads(after["fold_0/result.json"])["epochs_run"] == 1


def _interrupted(tmp_path: Path, monkeypatch) -> Path:
    """A 3-epoch run stopped during epoch 3 (as by SIGKILL): checkpoint.pt of epoch 2, the previous of epoch 1."""
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, "optim.epochs=3")
    crash_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fit.run(cfg, tmp_path / "run", torch.device("cpu"))
    return tmp_path / "run" / "fold_0"


def test_a_truncated_checkpoint_names_itself_and_the_previous_epoch_resumes(tmp_path, monkeypatch):
    fold = _interrupted(tmp_path, monkeypatch)
    assert load_checkpoint(fold / PREVIOUS_FILE)["state"]["epoch"] == 1
    data = (fold / "checkpoint.pt").read_bytes()
    (fold / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    proc = finished(ser_train(tmp_path, "--out", str(tmp_path / "run"), "--set", "optim.epochs=3", "--resume"))
    line = error_line(proc.stderr)
    assert proc.returncode == 2
    assert line.startswith(f"ser-train: {fold / 'checkpoint.pt'} is damaged (truncated or corrupt")
    assert f"previous epoch's checkpoint is intact (epoch 1): move {fold / PREVIOUS_FILE} onto" in line
    assert (fold / "checkpoint.pt").read_bytes() == data[: len(data) // 2]  # nothing overwritten
    (fold / PREVIOUS_FILE).replace(fold / "checkpoint.pt")  # what the message says to do
    proc = finished(ser_train(tmp_path, "--out", str(tmp_path / "run"), "--set", "optim.epochs=3", "--resume"))
    assert proc.returncode == 0, proc.stderr
    assert "resumed after epoch 1" in proc.stderr
    result = json.loads((fold / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert not (fold / PREVIOUS_FILE).exists()  # the finished fold keeps one checkpoint
    # A damaged result.json of the finished fold: named, and deleting it redoes only the evaluation.
    (fold / "result.json").write_text('{"fold": 0, "hist')
    cfg = tiny_cfg(tmp_path, "optim.epochs=3")
    with pytest.raises(ConfigError, match=r"result.json cannot be read as a finished fold's result.*delete it and rerun"):
        fit.run(cfg, tmp_path / "run", torch.device("cpu"), resume=True)
    (fold / "result.json").unlink()
    fit.run(cfg, tmp_path / "run", torch.device("cpu"), resume=True)
    assert json.loads((fold / "result.json").read_text())["history"] == result["history"]


def _payload(epoch: int) -> dict:
    return {"model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "state": {"epoch": epoch},
            "best_state": None, "ema": None}


def test_checkpoints_keep_the_previous_epoch_and_read_back_weights_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _payload(1))
    assert not (tmp_path / PREVIOUS_FILE).exists()
    save_checkpoint(path, _payload(2))
    assert load_checkpoint(path)["state"]["epoch"] == 2
    assert load_checkpoint(tmp_path / PREVIOUS_FILE)["state"]["epoch"] == 1
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is damaged .*previous epoch's checkpoint is intact \(epoch 1\)"):
        load_checkpoint(path)
    (tmp_path / PREVIOUS_FILE).write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="previous epoch's checkpoint.prev.pt is damaged too"):
        load_checkpoint(path)


def test_a_tensor_file_that_is_not_a_training_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="is not a ser-train checkpoint .*no earlier epoch's"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_a_checkpoint_of_another_model_is_named_not_loaded(tmp_path):
    """Tensors and plain values only, but not this run's: the model, optimiser or epoch state do not fit."""
    from serlive.train.fold import build_model, make_source
    from serlive.train.protocols import make_folds
    from serlive.train.trainer import Trainer

    cfg = tiny_cfg(tmp_path, "optim.epochs=1")
    data = fit.load_data(cfg, progress=False)
    model = build_model(cfg, torch.device("cpu"))
    trainer = Trainer(model, cfg, make_source(cfg, model, data, torch.device("cpu")),
                      make_folds(data.utts, cfg.protocol)[0], tmp_path / "fold", torch.device("cpu"), None)
    own = {"model": model.state_dict(), "optimizer": trainer.opt.state_dict(), "scheduler": trainer.sched.state_dict()}
    trainer.dir.mkdir()
    for payload in (_payload(1), _payload(1) | own | {"state": {"epoch": "one"}}):
        save_checkpoint(trainer.checkpoint_path, payload)
        with pytest.raises(CheckpointError, match="does not match this run's model or optimiser \\(written by another configuration\\?\\); "):
            trainer.fit(resume=True)
