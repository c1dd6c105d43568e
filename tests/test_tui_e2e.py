"""``ser-live --input demo.flac`` in tmux, read back with capture-pane (tui/e2e_tmux.sh; see tui/README.md).

Needs the streaming engine, the bundled model, the demo file and tmux; skips, saying which is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tui" / "e2e_tmux.sh"
DEMO = ROOT / "stream" / "demo" / "demo.flac"


def _missing() -> str | None:
    if shutil.which("tmux") is None:
        return "tmux is not installed"
    if not DEMO.is_file():
        return f"the demo audio {DEMO} is not present"
    try:
        from serlive.stream import cli
    except ImportError as exc:
        return f"the streaming engine's CLI is not importable yet ({exc})"
    if not hasattr(cli, "build_engine") or not hasattr(cli, "bundled_model_dir"):
        return "serlive.stream.cli has no build_engine / bundled_model_dir yet"
    if not (cli.bundled_model_dir() / "config.json").is_file():
        return f"the bundled model is not installed ({cli.bundled_model_dir()})"
    if not (ROOT / ".venv" / "bin" / "ser-live").exists():
        return "no .venv/bin/ser-live console script"
    return None


@pytest.mark.slow
def test_ser_live_on_the_demo_in_tmux(tmp_path):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        ["bash", str(SCRIPT), str(DEMO), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**os.environ, "E2E_OUT": str(tmp_path), "E2E_MIN_SEGMENTS": "3"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    screen = (tmp_path / "screen-final.txt").read_text()
    assert "segments" in screen and "engine" in screen
