"""``ser-live cluster-bench`` runs end to end (its own nats-server, a worker in-process) and the broker hop it
measures is milliseconds, not a poll interval: a pull that waited for its timeout would add hundreds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("nats")


def test_the_hop_benchmark_measures_a_few_milliseconds(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "serlive.stream", "cluster-bench", "--device", "cpu", "--threads", "1",
                           "--parts", "hop", "--segments", "12", "--json", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    for part in ("hop", "hop_transport"):
        assert figures[part]["finals"] == 10
        assert 0 < figures[part]["nats_p50_ms"] and figures[part]["in_process_p50_ms"] > 0
    assert figures["hop_transport"]["added_p50_ms"] < 100  # loopback; a pull waiting out its timeout adds ≥ 500
