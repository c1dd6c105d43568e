"""Command line of ``ser-live``: argument parsing, the device string resolved here (and only here), and
the headless run. ``serlive.tui.cli`` calls :func:`parse_args`, :func:`wants_tui` and then either the
TUI (which uses :func:`build_engine`) or :func:`run`. Bad input is one sentence on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .argcheck import EXIT_USAGE, TOKEN_ENV, CliError, Parser, check_bindable, number, ws_token, ws_url
from . import redact
from .dashboard import announcement
from .report import ReportSink, check_report_path
from .signals import EXIT_INTERRUPTED, Drain, exit_on_late_signals, interrupted  # noqa: F401 - EXIT_INTERRUPTED re-exported

log = logging.getLogger(__name__)

def bundled_model_dir() -> Path:
    """The default ``--model`` (imported lazily: ``ser-live --help`` should not load torch)."""
    from serlive.model import bundled_model_dir as installed

    return installed()


def demo_file() -> Path:
    """The bundled demo recording (four acted utterances with silences; see stream/demo/README.md)."""
    return Path(__file__).parent / "demo" / "demo.flac"


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", metavar="DIR", help="model directory (default: the bundled model)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                    help="autocast dtype on CUDA (auto: bfloat16 where supported); the CPU runs float32")
    ap.add_argument("--threads", type=number(int, 1, 1024, "from 1 to 1024"),
                    help="CPU threads in all (default: every core; the model owner's two lanes get half each)")
    ap.add_argument("--max-batch", type=number(int, 1, 1024, "from 1 to 1024"), default=16,
                    help="most requests in one forward pass")
    ap.add_argument("--max-wait-ms", type=number(float, 0, 10_000, "from 0 to 10000 ms"), default=10.0,
                    help="longest wait to fill a batch")
    ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="ser-live", description="Real-time speech emotion monitor (run `ser-live bench -h` for the benchmark).")
    ap.add_argument("--input", action="append", metavar="SRC",
                    help="mic (default; the bundled demo file when there is no microphone), an audio FILE, "
                         "demo (the bundled demo file), - for s16le 16 kHz mono PCM on stdin, or none "
                         "(only WebSocket audio); repeat for several streams")
    ap.add_argument("--mic", metavar="NAME|INDEX", help="input device for --input mic")
    ap.add_argument("--fast", action="store_true", help="read files as fast as possible, not in real time")
    _common(ap)
    ap.add_argument("--no-knn", action="store_true", help="do not apply the model's kNN datastore")
    ap.add_argument("--no-adapt", action="store_true",
                    help="judge every utterance alone (default: relative to how this stream's voice usually sounds)")
    ap.add_argument("--vad-mode", type=int, default=2, choices=[0, 1, 2, 3], help="WebRTC VAD aggressiveness")
    ap.add_argument("--vad-frame-ms", type=int, default=30, choices=[10, 20, 30])
    ap.add_argument("--end-silence-ms", type=number(int, 10, 60_000, "from 10 to 60000 ms"), default=300,
                    help="non-speech that closes a segment")
    ap.add_argument("--min-speech-ms", type=number(int, 0, 60_000, "from 0 to 60000 ms"), default=250,
                    help="shorter segments are dropped")
    ap.add_argument("--max-segment-s", type=number(float, 0.1, 600, "from 0.1 to 600 s"), default=19.0,
                    help="longer speech is force-closed")
    ap.add_argument("--interim-ms", type=number(int, 0, 60_000, "from 0 to 60000 ms"), default=500,
                    help="interim prediction period (0: none)")
    ap.add_argument("--model-process", action="store_true",
                    help="run the model in a process of its own (many streams on a CPU: the audio's and the "
                         "model's Python then stop taking turns; costs a second copy of the model in memory)")
    ap.add_argument("--ws", default="127.0.0.1:8765", metavar="HOST:PORT|off",
                    help="WebSocket server (a host beyond loopback needs a token)")
    ap.add_argument("--ws-token", help="token clients must send (?token= or Authorization: Bearer); clients "
                                       "with it may also send audio. Other local users can read a command "
                                       f"line: prefer --ws-token-file or the {TOKEN_ENV} environment variable")
    ap.add_argument("--ws-token-file", metavar="PATH",
                    help="read the token from the first line of PATH (instead of --ws-token); the token, however "
                         "given, is also what --connect sends")
    ap.add_argument("--ws-max-clients", type=number(int, 1, 10_000, "from 1 to 10000"), default=32)
    ap.add_argument("--ws-allow-origin", action="append", default=[], metavar="ORIGIN",
                    help="a web page origin (https://host[:port]) allowed besides the server's own; repeatable")
    ap.add_argument("--accept-audio", action="store_true",
                    help="let every WebSocket client send audio (without it: only clients with --ws-token's token)")
    ap.add_argument("--tls-cert", metavar="PEM", help="certificate: serve https/wss (needs --tls-key)")
    ap.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    ap.add_argument("--jsonl", metavar="PATH", help="write every event as JSON lines (- for stdout)")
    ap.add_argument("--report", metavar="PATH", help="at the end, write the segments and their labels over "
                                                     "time as a self-contained page (.html) or a picture (.png)")
    ap.add_argument("--no-tui", action="store_true", help="run headless")
    ap.add_argument("--drain-s", type=number(float, 0, 600, "from 0 to 600 s"), default=5.0, metavar="S",
                    help="on Ctrl-C/SIGTERM/SIGHUP, time allowed to predict what is owed before exiting")
    ap.add_argument("--connect", metavar="URL", type=ws_url, help="show a running engine's WebSocket feed in the TUI")
    from .cluster.options import add_nats_options

    add_nats_options(ap)  # --nats: run as a gateway of a cluster (`ser-live worker -h`, `ser-live feed -h`)
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``ser-live`` arguments; ``ser-live bench ...`` gives ``command == "bench"``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import build_parser as bench_parser

        args = bench_parser().parse_args(argv[1:])
        args.command = "bench"
        return args
    from .cluster.cli import COMMANDS as CLUSTER_COMMANDS

    if argv[:1] and argv[0] in CLUSTER_COMMANDS:
        from .cluster.cli import parse

        return parse(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = "run"
    try:
        args.ws_token = ws_token(args.ws_token, args.ws_token_file, os.environ)
    except CliError as exc:
        parser.error(str(exc))
    redact.install((args.ws_token, *parse_qs(urlsplit(args.connect or "").query).get("token", [])))
    args.input_defaulted = not args.input
    args.input = args.input or ["mic"]
    return args


def wants_tui(args: argparse.Namespace) -> bool:
    """True for ``--connect``, or for a run on a terminal without ``--no-tui``."""
    if args.command != "run":
        return False
    if args.connect:
        return True
    return not args.no_tui and sys.stdout.isatty()


def resolve_device(spec: str):
    """``auto|cpu|cuda|cuda:N`` -> ``torch.device``, or :class:`CliError` with one sentence."""
    from serlive.model.devices import DeviceError, resolve_device as resolve

    try:
        return resolve(spec)
    except DeviceError as exc:
        raise CliError(str(exc)) from exc


def resolve_dtype(name: str, device):
    import torch

    if device.type != "cuda":
        return torch.float32
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def load_predictor(args: argparse.Namespace, use_knn: bool = True):
    """The Predictor for ``--model`` (or the bundled model) on ``--device``."""
    from serlive.model import CheckpointError, Predictor

    device = resolve_device(args.device)
    if device.type == "cpu":
        from .worker import set_cpu_threads

        set_cpu_threads(args.threads)  # --threads in all, shared by the model owner's two lanes
    elif args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else bundled_model_dir()
    if not args.model and not (model_dir / "config.json").is_file():
        raise CliError("no --model given and the bundled model is not installed")
    log.info("loading the model from %s", model_dir)
    try:
        return Predictor.from_dir(model_dir, device, resolve_dtype(args.dtype, device), use_knn), model_dir
    except CheckpointError as exc:
        raise CliError(str(exc)) from exc


def parse_ws(args: argparse.Namespace):
    """``--ws`` and its companions -> ``WsConfig`` (None for ``off``), checked before anything starts: the
    port can be bound, a host beyond loopback has a token, the TLS files load."""
    from .access import is_loopback, tls_context
    from .config import WsConfig

    if args.ws.strip().lower() == "off":
        if args.tls_cert or args.tls_key:
            raise CliError("--tls-cert and --tls-key need the WebSocket server, not --ws off")
        return None
    if args.ws_token is not None and not args.ws_token.strip():
        raise CliError("--ws-token must not be empty")
    for origin in args.ws_allow_origin:
        if not re.fullmatch(r"https?://[^/?#\s]+/?", origin.strip()):
            raise CliError(f"--ws-allow-origin takes a page origin such as https://host:port, not {origin!r}")
    host, sep, port = args.ws.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise CliError(f"--ws must be HOST:PORT or off, not {args.ws!r}")
    host, port = host.strip("[]"), int(port)
    if port > 65535:
        raise CliError(f"--ws port must be from 0 to 65535, not {port}")
    if not is_loopback(host) and not args.ws_token:
        raise CliError(f"--ws {host} is reachable from other machines: give --ws-token TOKEN, --ws-token-file "
                       f"PATH or {TOKEN_ENV} (or use 127.0.0.1)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together")
    config = WsConfig(host=host, port=port, max_clients=args.ws_max_clients, token=args.ws_token or None,
                      accept_audio=args.accept_audio, allow_origins=tuple(args.ws_allow_origin),
                      tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        tls_context(config)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise CliError(f"cannot use --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: "
                       f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}") from exc
    check_bindable(host, port)
    return config


def build_sources(args: argparse.Namespace) -> list:
    from .sources import FileSource, SourceError, StdinSource

    sources = []
    try:
        for spec in args.input:
            if spec == "none":
                continue
            if spec == "mic":
                sources.append(_mic_or_demo(args))
            elif spec == "-":
                sources.append(StdinSource())
            else:
                path = demo_file() if spec == "demo" else spec
                sources.append(FileSource(path, realtime=not args.fast))
    except SourceError as exc:
        raise CliError(str(exc)) from exc
    return sources


def _mic_or_demo(args: argparse.Namespace):
    """The microphone; when none was asked for explicitly and none works, the bundled demo file."""
    from .mic import MicSource
    from .sources import FileSource, SourceError

    try:
        return MicSource(args.mic)
    except SourceError as exc:
        if not getattr(args, "input_defaulted", False) or args.mic:
            raise
        log.warning("%s; playing the bundled demo file instead", str(exc).split(";")[0])
        return FileSource(demo_file(), realtime=not args.fast)


def engine_config(args: argparse.Namespace):
    from .config import EngineConfig, InferenceConfig, SegmenterConfig, StreamConfigError

    if args.input.count("-") > 1:
        raise CliError("--input - (stdin) can be given only once: one stdin cannot feed two streams")
    try:
        return EngineConfig(
            segmenter=SegmenterConfig(vad_mode=args.vad_mode, frame_ms=args.vad_frame_ms,
                                      end_silence_ms=args.end_silence_ms, min_speech_ms=args.min_speech_ms,
                                      max_segment_ms=int(args.max_segment_s * 1000)),
            inference=InferenceConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                      interim_ms=args.interim_ms, model_process=args.model_process),
            ws=parse_ws(args),
            drain_s=getattr(args, "drain_s", 5.0), adapt=not getattr(args, "no_adapt", False),
        )
    except StreamConfigError as exc:
        raise CliError(str(exc)) from exc


def build_engine(args: argparse.Namespace):
    """The :class:`Engine` the arguments describe (sources opened, model loaded, ``--jsonl`` attached);
    raises :class:`CliError` with one sentence on bad input."""
    config = engine_config(args)  # before importing the engine (torch): bad arguments fail in a blink
    if args.nats:
        from .cluster.gateway import attach_gateway, check_gateway_args

        cluster = check_gateway_args(args)  # the broker is up and takes our credentials, before the model loads
    report = check_report_path(args.report) if args.report else None
    sources = build_sources(args)
    from .engine import Engine
    from .sinks import JsonlSink

    predictor, model_dir = load_predictor(args, use_knn=not args.no_knn)
    engine = Engine(predictor, config, sources, model_name=predictor.config.description or model_dir.name)
    if args.nats:
        attach_gateway(engine, cluster)
    if args.jsonl:
        try:
            sink = JsonlSink(args.jsonl)
        except OSError as exc:
            raise CliError(f"cannot write --jsonl {args.jsonl}: {exc.strerror}") from exc
        sink.put(engine.hello())  # a JSON lines file reads like a connection: hello first
        engine.add_sink(sink)
    if report is not None:
        args.report_sink = ReportSink(report, predictor.labels, engine.model_name)
        engine.add_sink(args.report_sink)
    return engine


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr, format="ser-live: %(message)s")


def run(args: argparse.Namespace) -> int:
    """Run headless (or the benchmark); returns the process exit code."""
    from .cluster.cli import COMMANDS as CLUSTER_COMMANDS

    if args.command in CLUSTER_COMMANDS:
        from .cluster.cli import run as run_cluster

        return run_cluster(args)
    setup_logging(getattr(args, "log_level", "warning"))
    try:
        if args.command == "bench":
            from .bench import run_bench

            return run_bench(args)
        if args.connect:
            raise CliError("--connect shows a remote feed in the terminal UI; drop --no-tui")
        engine = build_engine(args)
    except CliError as exc:
        print(f"ser-live: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return interrupted("while starting")
    if args.jsonl != "-":
        from .sinks import TextSink

        engine.add_sink(TextSink())
    try:
        code = asyncio.run(_serve(engine))
    except KeyboardInterrupt:  # before the handlers were installed
        return interrupted("while starting")
    if getattr(args, "report_sink", None) is not None and args.report_sink.written:
        print(f"ser-live: report written to {args.report_sink.path}", file=sys.stderr)
    exit_on_late_signals(code)
    return code


async def _serve(engine) -> int:
    loop = asyncio.get_running_loop()
    announce = asyncio.create_task(_announce_dashboard(engine))  # noqa: F841 - ends by itself
    handler = Drain.install(loop, engine)
    return handler.exit_code(await engine.run())


async def _announce_dashboard(engine) -> None:
    await engine.ready.wait()  # the server listens: one line with the page's address
    if line := announcement(engine.ws, terminal=sys.stderr.isatty()):
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    code = run(parse_args(argv))
    gc.freeze()  # exiting: the interpreter's last collection of a long run's objects took seconds after a drain
    return code
