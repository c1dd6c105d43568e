"""Arguments are checked where they enter, in real ``ser-live`` processes: one sentence on stderr and exit 2
before anything starts (the model is not loaded), and text output into a closed pipe ends cleanly."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "ravdess"
CLIP = DATA / "03-01-01-01-01-01-01.flac"
SER_LIVE = [sys.executable, "-m", "serlive.stream"]


def ser_live(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*SER_LIVE, "--no-tui", "--threads", "1", *argv], capture_output=True, text=True,
                          timeout=120, **kw)


def assert_one_sentence(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("ser-live: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for fragment in fragments:
        assert fragment in proc.stderr


@pytest.mark.parametrize("argv, fragment", [
    (["--max-segment-s", "nan"], "argument --max-segment-s: must be from 0.1 to 600 s, not nan"),
    (["--max-segment-s", "inf"], "not inf"),
    (["--max-segment-s", "0"], "not 0"),
    (["--threads", "-1"], "argument --threads: must be from 1 to 1024, not -1"),
    (["--threads", "two"], "'two' is not a whole number"),
    (["--ws-max-clients", "0"], "argument --ws-max-clients: must be from 1 to 10000, not 0"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-wait-ms", "-1"], "--max-wait-ms"),
    (["--interim-ms", "-5"], "--interim-ms"),
    (["--end-silence-ms", "0"], "--end-silence-ms"),
    (["--min-speech-ms", "1e9"], "--min-speech-ms"),
    (["--ws", "127.0.0.1:99999"], "--ws port must be from 0 to 65535, not 99999"),
    (["--ws", "0.0.0.0:0"], "--ws 0.0.0.0 is reachable from other machines: give --ws-token"),
    (["--ws", "no-such-host.invalid:0", "--ws-token", "t"], "--ws host no-such-host.invalid cannot be resolved"),
    (["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "cannot use --tls-cert"),
    (["--ws", "off", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "need the WebSocket server"),
    (["--ws-token", " "], "--ws-token must not be empty"),
    (["--ws-allow-origin", "evil.example"], "--ws-allow-origin takes a page origin"),
    (["--input", "-", "--input", "-"], "--input - (stdin) can be given only once"),
    (["--connect", "127.0.0.1:8765"], "argument --connect: must be a ws:// or wss:// URL"),
    (["--vad-mode", "7"], "argument --vad-mode: invalid choice"),
])
def test_out_of_range_arguments_are_one_sentence_and_exit_2(argv, fragment):
    assert_one_sentence(ser_live("--input", "none", "--model", "/nonexistent/model", *argv), fragment)


def test_a_port_in_use_is_one_sentence_before_the_model_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # --model points nowhere: the port is checked first, so the message is about the port.
        proc = ser_live("--input", "none", "--model", "/nonexistent/model", "--ws", f"127.0.0.1:{port}")
    assert_one_sentence(proc, f"cannot listen on 127.0.0.1:{port}", "--ws off")


def test_text_output_into_a_closed_pipe_exits_cleanly():
    proc = subprocess.Popen([*SER_LIVE, "--no-tui", "--threads", "1", "--ws", "off", "--fast", "--input",
                             str(CLIP), "--input", str(CLIP)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, as after `| head -0`
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert err == "ser-live: text output stopped: Broken pipe\n"


def test_head_keeps_the_first_line():
    command = (f"{sys.executable} -m serlive.stream --no-tui --threads 1 --ws off --fast --input {CLIP} "
               f"--jsonl - | head -1")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["type"] == "hello"  # and a JSON lines stream begins with hello


def test_text_output_escapes_control_characters_in_names(tmp_path):
    hostile = tmp_path / "clip\x1b[2J\x1b[31m\nfake: ended.flac"
    hostile.write_bytes(CLIP.read_bytes())
    proc = ser_live("--ws", "off", "--fast", "--input", str(hostile))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 3  # started, one final, ended: the newline in the name made no extra line
    assert lines[0] == "clip\\x1b[2J\\x1b[31m\\nfake: ended.flac: started"
