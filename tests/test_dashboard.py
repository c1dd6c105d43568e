"""The dashboard's HTTP side and ``--report``, without a browser: real HTTP requests to a real engine's
server on 127.0.0.1 port 0, real ``ser-live`` processes. Also the helpers the browser tests share."""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from serlive.model import ModelConfig, Predictor, SERModel, save_model_dir
from serlive.stream import cli
from serlive.stream.config import EngineConfig, WsConfig
from serlive.stream.dashboard import ASSETS, WEB_DIR, dashboard_url
from serlive.stream.engine import Engine
from serlive.stream.events import from_dict
from serlive.stream.report import ReportSink

START_TIMEOUT_S = 90.0


class EngineProcess:
    """``python -m serlive.stream --no-tui ... --ws 127.0.0.1:PORT`` until the ``with`` block ends (SIGINT);
    ``url`` is the dashboard address it prints on start, with ``--ws-token``'s token added."""

    def __init__(self, model_dir: Path, *args: str, port: int = 0, accept_audio: bool = True) -> None:
        self.argv = [sys.executable, "-m", "serlive.stream", "--no-tui", "--model", str(model_dir), "--threads", "1",
                     "--ws", f"127.0.0.1:{port}", *(["--accept-audio"] if accept_audio else []), *args]
        self.stderr_lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()

    def __enter__(self) -> EngineProcess:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        while True:
            line = self._lines.get(timeout=START_TIMEOUT_S)
            if line is None:
                raise RuntimeError("ser-live ended before serving: " + "".join(self.stderr_lines))
            match = re.search(r"dashboard at (\S+)", line)
            if match:  # stderr is a pipe: the printed link leaves the token out
                token = self.argv[self.argv.index("--ws-token") + 1] if "--ws-token" in self.argv else None
                self.url = match.group(1) + (f"?token={token}" if token else "")
                self.port = urlsplit(match.group(1)).port
                return self

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_jsonl(model_dir: Path, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "serlive.stream", "--no-tui", "--model", str(model_dir), "--threads",
                           "1", "--ws", "off", "--jsonl", "-", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def reference_finals(model_dir: Path, audio: Path) -> list[dict]:
    """The final predictions of ``ser-live --input AUDIO --fast``: what a page must show for that audio."""
    return [e for e in run_jsonl(model_dir, "--input", str(audio), "--fast") if e["type"] == "prediction" and e["final"]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("model"), SERModel(ModelConfig()).eval())


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return result


def test_page_and_assets_are_served_with_their_headers_and_access_rules():
    torch.manual_seed(0)
    engine = Engine(Predictor(SERModel(ModelConfig()).eval()),
                    EngineConfig(ws=WsConfig(host="127.0.0.1", port=0, token="tok en")))

    async def main():
        await engine.start()
        port = engine.ws.port
        get = lambda path, **headers: asyncio.to_thread(_get, port, path, headers)  # noqa: E731
        try:
            for path, (name, content_type) in ASSETS.items():
                status, headers, body = await get(path + "?token=tok%20en")
                expected = (WEB_DIR / name).read_bytes()
                if name == "index.html":  # its links carry the token: the server asks it of every file
                    expected = re.sub(rb'="([a-z]+)\.(js|css)"', rb'="\1.\2?token=tok%20en"', expected)
                    assert b'src="app.js?token=tok%20en"' in expected
                assert status == 200 and body == expected
                assert headers["content-type"] == content_type and headers["cache-control"] == "no-store"
                csp = headers["content-security-policy"]
                assert f"connect-src 'self' ws://127.0.0.1:{port} wss://127.0.0.1:{port};" in csp
                assert "default-src 'none'" in csp and "unsafe" not in csp
            assert (await get("/", Authorization="Bearer tok en"))[0] == 200
            assert (await get("/nope?token=tok%20en"))[0] == 404
            assert (await get("/../cli.py?token=tok%20en"))[0] == 404
            assert (await get("/"))[0] == 401
            assert (await get("/?token=tok"))[0] == 401
            assert (await get("/?token=tok%20en", Origin="http://evil.example"))[0] == 403
            assert (await get("/?token=tok%20en", Origin=f"http://127.0.0.1:{port}"))[0] == 200
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}/?token=tok%20en", origin="http://evil.example"):
                    pass
            assert refused.value.response.status_code == 403
            async with connect(f"ws://127.0.0.1:{port}/?token=tok%20en", origin=f"http://127.0.0.1:{port}") as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
            assert dashboard_url(engine.ws) == f"http://127.0.0.1:{port}/?token=tok%20en"
        finally:
            engine.stop()
            await engine._shutdown()

    asyncio.run(main())


def test_web_files_load_nothing_from_elsewhere():
    for name in sorted({name for name, _ in ASSETS.values()}):
        text = (WEB_DIR / name).read_text()
        assert "://" not in text and "@import" not in text, name
    index = (WEB_DIR / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', index)) - {"data:,"}
    assert {"/" + name for name in referenced} <= set(ASSETS)
    assert not re.search(r"<script(?![^>]*\bsrc=)", index) and not re.search(r"\son[a-z]+=", index)


def test_report_html_holds_every_final_and_png_is_written(model_dir, tmp_path):
    report = tmp_path / "talk.html"
    events = run_jsonl(model_dir, "--input", "demo", "--fast", "--report", str(report))
    finals = [e for e in events if e["type"] == "prediction" and e["final"]]
    page = report.read_text()
    shown = re.findall(r'<g class="seg" data-start-s="([\d.]+)" data-end-s="([\d.]+)" data-label="([^"]*)"', page)
    assert len(finals) == 4
    assert [(float(a), float(b), label) for a, b, label in shown] == [
        (pytest.approx(e["start_s"], abs=1e-3), pytest.approx(e["end_s"], abs=1e-3), e["label"]) for e in finals]
    assert "<script" not in page and "://" not in page
    png = tmp_path / "talk.png"
    sink = ReportSink(png, tuple(finals[0]["probs"]), "random model")
    for event in events:
        sink.put(from_dict(event))
    sink.close()
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert sink.written and image.shape[1] > 1000 and np.ptp(image) > 0


def test_report_keeps_what_was_predicted_when_interrupted(model_dir, tmp_path):
    report = tmp_path / "partial.html"
    proc = subprocess.Popen([sys.executable, "-m", "serlive.stream", "--no-tui", "--model", str(model_dir), "--threads",
                             "1", "--ws", "off", "--input", "demo", "--jsonl", "-", "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finals = []
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "prediction" and event["final"]:
            finals.append(event)
            proc.send_signal(signal.SIGTERM)  # a service stopped: drains, keeps the run's own exit code
            break
    finals += [e for e in map(json.loads, proc.stdout) if e["type"] == "prediction" and e["final"]]
    assert proc.wait(timeout=60) == 0
    assert "report written to" in proc.stderr.read()
    shown = re.findall(r'<g class="seg" data-start-s="([\d.]+)"', report.read_text())
    assert 1 <= len(shown) == len(finals) < 4


@pytest.mark.parametrize("path, message", [("talk.txt", "must end in .html or .png"),
                                           ("missing/talk.html", "does not exist")])
def test_report_bad_path_is_one_sentence_and_exit_2(tmp_path, capsys, path, message):
    code = cli.run(cli.parse_args(["--no-tui", "--input", "demo", "--ws", "off", "--report", str(tmp_path / path)]))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_report_marks_a_remote_stream_named_like_a_local_one(tmp_path):
    from serlive.stream.events import PredictionEvent, StreamStatus

    report, lookalike = tmp_path / "both.html", "\u0455peech.wav"
    sink = ReportSink(report, ("angry", "sad"), "random model")
    for name, remote in (("speech.wav", False), (lookalike, True)):
        sink.put(StreamStatus(name, "started", "", None, remote=remote))
        sink.put(PredictionEvent(name, 0, 0, 16_000, final=True, label="sad", probs={"angry": 0.2, "sad": 0.8},
                                 confidence=0.8))
        sink.put(StreamStatus(name, "ended", "done", "end_of_input", remote=remote))
    sink.close()
    assert [log_.title for log_ in sink.streams] == ["speech.wav", f"{lookalike} (remote)"]  # the PNG's headings
    titles = re.findall(r"<h2>(.*?)</h2>", report.read_text())
    assert titles == ["speech.wav", f'{lookalike} <span class="remote" title="audio and name from a WebSocket '
                                    f'client">⇄ remote</span>']


def test_report_keeps_two_runs_of_one_name_apart(model_dir, tmp_path):
    """A client may reuse a name once its stream ended: the report shows each run on its own, with the finals
    that run's client received (before, both runs were one section: segments 0-3 then 0-1 on one axis)."""
    import soundfile

    audio, rate_hz = soundfile.read(cli.demo_file(), dtype="int16")
    assert rate_hz == 16_000
    report = tmp_path / "runs.html"

    async def one_run(address: str, pcm: bytes) -> list[tuple[float, float]]:
        async with connect(address, max_size=None) as ws:
            await ws.send(json.dumps({"type": "start_stream", "stream": "re", "format": {
                "sample_rate_hz": 16_000, "encoding": "s16le", "channels": 1}}))
            for start in range(0, len(pcm), 32_000):
                await ws.send(pcm[start:start + 32_000])
            await ws.send(json.dumps({"type": "end_stream"}))
            finals = []
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "prediction" and event["final"] and event["stream"] == "re":
                    finals.append((event["start_s"], event["end_s"]))
                if event["type"] == "stream" and event["stream"] == "re" and event["state"] == "ended":
                    return finals

    with EngineProcess(model_dir, "--input", "none", "--report", str(report)) as engine:
        address = f"ws://127.0.0.1:{engine.port}/"
        runs = [asyncio.run(one_run(address, audio.tobytes())), asyncio.run(one_run(address, audio[:160_000].tobytes()))]
    assert len(runs[0]) > len(runs[1]) > 0
    sections = re.findall(r"<section class=\"stream\"><h2>(.*?)</h2>(.*?)</section>", report.read_text(), re.S)
    assert [title.split(" <span")[0] for title, _ in sections] == ["re", "re"]
    shown = [[(float(a), float(b)) for a, b in re.findall(r'data-start-s="([\d.]+)" data-end-s="([\d.]+)"', body)]
             for _, body in sections]
    assert shown == [[(pytest.approx(a, abs=1e-3), pytest.approx(b, abs=1e-3)) for a, b in run] for run in runs]
