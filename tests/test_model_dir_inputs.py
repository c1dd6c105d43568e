"""Model directories a careless or hostile hand has edited: the loader refuses each with one sentence (a real
``ser-live`` exits 2 without a traceback and leaves the directory as it was), except a bad ``metrics.json``,
which is optional: a one-line warning, and the model runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from serlive.model import (CheckpointError, EncoderConfig, KnnConfig, KnnDatastore, ModelConfig, SERModel,
                           load_model_dir, save_model_dir)

DATA = Path(__file__).parent / "data" / "ravdess"
SPEECH = DATA / "03-01-05-01-01-01-01.flac"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(dim=16, heads=2, n_mels=32, conv_layers=1, transformer_layers=1),
                      embed_dim=8, knn=KnnConfig(k=3, alpha=0.5))
    rng = np.random.default_rng(0)
    store = KnnDatastore(rng.standard_normal((10, 8)), rng.integers(0, 4, 10), 4)
    return save_model_dir(tmp_path_factory.mktemp("good") / "m", SERModel(cfg).eval(), store, metrics={"ua": 0.5})


def edit_config(change):
    def mutate(d: Path) -> None:
        data = json.loads((d / "config.json").read_text())
        change(data)
        (d / "config.json").write_text(json.dumps(data))
    return mutate


def set_model(key: str, value):
    def change(data):
        node = data["model"]
        *heads, last = key.split(".")
        for head in heads:
            node = node[head]
        node[last] = value
    return edit_config(change)


def edit_weights(change):
    def mutate(d: Path) -> None:
        state = load_file(str(d / "model.safetensors"))
        change(state)
        save_file(state, str(d / "model.safetensors"))
    return mutate


ISSUE_CASES = {
    "format_version as a string": (edit_config(lambda c: c.update(format_version="1")),
                                   "has format_version '1'; it must be an integer"),
    "model as a list": (edit_config(lambda c: c.update(model=["sr"])), "model must be a table, not list"),
    "labels as numbers": (set_model("labels", [0, 1, 2, 3]), "labels must be names of 1 to 40 printable characters, not 0"),
    "knn.k beyond the datastore": (set_model("knn.k", 1000), "knn.k is 1000 but"),
    "max_duration_s tiny": (set_model("max_duration_s", 0.001), "max_duration_s must lie in [0.5, 600] seconds, not 0.001"),
}
"""The cases issue 14 lists, each run through a real ``ser-live``; their variants below go to the loader alone."""

FURTHER_CASES = {
    "model as a string": (edit_config(lambda c: c.update(model="sr")), "model must be a table, not str"),
    "max_duration_s zero": (set_model("max_duration_s", 0), "max_duration_s must lie in [0.5, 600] seconds"),
    "max_duration_s negative": (set_model("max_duration_s", -3), "max_duration_s must lie in [0.5, 600] seconds"),
    "max_duration_s NaN": (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"max_duration_s": 19.0', '"max_duration_s": NaN')),
        "model.max_duration_s must be a finite number, not nan"),
    "NaN weights": (edit_weights(lambda s: s["classifier.weight"].fill_(float("nan"))),
                    "holds NaN or infinite weights (classifier.weight)"),
    "a tensor of the wrong shape": (edit_weights(lambda s: s.update({"classifier.weight": torch.zeros(5, 8)})),
                                    "classifier.weight is [5, 8], the config needs [4, 8]"),
    "an extra tensor": (edit_weights(lambda s: s.update(extra=torch.zeros(1))), "1 unexpected tensors, e.g. extra"),
    "a missing tensor": (edit_weights(lambda s: s.pop("classifier.bias")), "1 missing, 0 unexpected tensors"),
    # a 10^5-wide encoder (10^5 x 10^5 x 5 float32 convolution weights: 200 GB) is compared, never built
    "a huge encoder in config.json": (set_model("encoder.dim", 10**5), "encoder.in_proj.weight is [16, 32], the config needs [100000, 32]"),
    "a Hugging Face config of no known model": (
        set_model("encoder", {"kind": "hf", "hf_config": {"model_type": "nope"}}), "describes a model this ser-live cannot build"),
    "hf_config as a string": (set_model("encoder.hf_config", "wavlm"), "encoder.hf_config must be a table or null"),
    "dropout beyond 1": (set_model("encoder.dropout", 5), "encoder.dropout must lie in [0, 1)"),
    "a label with a terminal escape": (set_model("labels", ["\x1b[2Jangry", "b"]), "printable characters"),
    "a NaN kNN temperature": (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"temperature": 0.1', '"temperature": NaN')), "knn.temperature must be a finite"),
    "a VAD mode as a string": (set_model("vad.mode", "3"), "vad.mode must be a finite number, not '3'"),
    "an empty config.json": (lambda d: (d / "config.json").write_text(""), "is not valid JSON (truncated, or not UTF-8?)"),
    "a config.json of 17 MiB": (lambda d: (d / "config.json").write_text(" " * (17 * 2**20) + "{}"), "larger than 16 MiB"),
    "a config.json nested 100000 deep": (lambda d: (d / "config.json").write_text("[" * 100_000 + "]" * 100_000),
                                         "nested too deeply"),
    "NaN kNN keys": (lambda d: save_file({"keys": torch.full((10, 8), float("nan")), "labels": torch.zeros(10, dtype=torch.int64)},
                                         str(d / "knn.safetensors"), metadata={"num_classes": "4"}), "holds NaN or infinite keys"),
    "a file instead of a directory": (lambda d: (shutil.rmtree(d), d.write_text("x")), "is not a directory"),
    "a symbolic link loop": (lambda d: (shutil.rmtree(d), os.symlink(d, d)), "is a broken or looping symbolic link"),
}


def broken_copy(good: Path, tmp_path: Path, mutate) -> Path:
    d = tmp_path / "m"
    shutil.copytree(good, d)
    mutate(d)
    return d


def ser_live(model_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "serlive.stream", "--no-tui", "--ws", "off", "--threads", "1",
                             "--model", str(model_dir), "--input", str(SPEECH), "--fast", "--jsonl", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_each_issue_case_is_one_sentence_and_exit_2_from_a_real_ser_live(good_dir, tmp_path):
    dirs = {name: broken_copy(good_dir, tmp_path / str(i), mutate) for i, (name, (mutate, _)) in enumerate(ISSUE_CASES.items())}
    before = {name: files_of(d) for name, d in dirs.items()}
    procs = {name: ser_live(d) for name, d in dirs.items()}  # all at once: each waits mostly on imports
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("ser-live: error: "), (name, err)
        assert ISSUE_CASES[name][1] in err, (name, err)
        assert out == "" and files_of(dirs[name]) == before[name]


def test_a_metrics_json_that_is_not_utf8_is_a_warning_and_the_model_runs(good_dir, tmp_path):
    d = broken_copy(good_dir, tmp_path, lambda d: (d / "metrics.json").write_bytes(b'{"note": "caf\xe9"}'))
    proc = ser_live(d)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "metrics.json is not valid JSON (truncated, or not UTF-8?)" in err and "the model's metrics are not shown" in err
    finals = [e for e in map(json.loads, out.splitlines()) if e["type"] == "prediction" and e["final"]]
    assert len(finals) == 1 and finals[0]["label"] in ("angry", "happy", "neutral", "sad")


@pytest.mark.parametrize("name", FURTHER_CASES)
def test_further_bad_model_directories_are_refused_by_the_loader(good_dir, tmp_path, name):
    mutate, sentence = FURTHER_CASES[name]
    d = broken_copy(good_dir, tmp_path, mutate)
    with pytest.raises(CheckpointError) as info:
        load_model_dir(d)
    assert sentence in str(info.value) and "\n" not in str(info.value)


def test_metrics_that_are_not_an_object_are_ignored(good_dir, tmp_path, caplog):
    d = broken_copy(good_dir, tmp_path, lambda d: (d / "metrics.json").write_text("[1, 2]"))
    _, cfg, store, metrics = load_model_dir(d)
    assert metrics is None and store is not None and cfg.knn.k == 3
    assert "is not a JSON object" in caplog.text
