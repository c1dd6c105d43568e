"""The server's memory does not grow with the number of segment lengths it has seen: importing serlive.model
bounds oneDNN's kernel cache (torch's CPU LSTM keeps one built kernel, with its buffers, per input shape)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, sys
import torch
import serlive.model  # noqa: F401 - sets the cache capacity before the first LSTM runs
torch.set_num_threads(1)
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
lstms = [torch.nn.LSTM(n, 256, batch_first=True).eval() for n in (40, 256, 256)]  # the GE2E encoder's layers
with torch.inference_mode():
    def run(frames):
        x = torch.randn(1, frames, 40)
        for lstm in lstms:
            x, _ = lstm(x)
    run(10)
    before = rss_mb()
    for frames in range(20, 420, 4):  # 100 segment lengths
        run(frames)
    print(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), round(rss_mb() - before, 1))
"""


def _growth(env: dict | None = None) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120,
                         env=env)
    capacity, growth = out.stdout.split()
    return capacity, float(growth)


def test_a_hundred_segment_lengths_cost_a_bounded_amount_of_memory():
    import os

    capacity, growth = _growth()
    assert capacity == "16"
    assert growth < 25, growth  # measured 11 MB; oneDNN's default cache (1024 kernels) grew 59 MB
    capacity, _ = _growth({**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"})
    assert capacity == "1024"  # a user's setting wins
