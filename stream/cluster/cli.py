"""``ser-live worker``, ``ser-live feed`` and ``ser-live cluster-bench``: parsing and the runs. The
gateway is ``ser-live --nats URL ...`` (see :func:`serlive.stream.cli.build_engine`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ..argcheck import EXIT_USAGE, CliError, Parser, number
from .options import add_nats_options, connect_options, names_of, process_name

COMMANDS = ("worker", "feed", "cluster-bench")


def build_parser(command: str) -> argparse.ArgumentParser:
    from .. import cli as stream_cli

    if command == "cluster-bench":
        from .bench import build_parser as bench_parser

        return bench_parser()
    if command == "worker":
        ap = Parser(prog="ser-live worker", description="A model worker of a ser-live cluster: predicts the "
                    "requests of every gateway on the broker.")
        stream_cli._common(ap)
        ap.add_argument("--no-knn", action="store_true", help="do not apply the model's kNN datastore")
        ap.add_argument("--ack-wait-s", type=number(float, 0.5, 3600, "from 0.5 to 3600 s"), default=30.0,
                        help="a request a worker took and did not answer within this goes to another worker "
                             "(set when the shared consumer is first created)")
    else:
        ap = Parser(prog="ser-live feed", description="The WebSocket feed and dashboard of a ser-live cluster.")
        ap.add_argument("--ws", default="127.0.0.1:8765", metavar="HOST:PORT",
                        help="WebSocket server (a host beyond loopback needs --ws-token)")
        ap.add_argument("--ws-token", help="token clients must send (?token= or Authorization: Bearer)")
        ap.add_argument("--ws-max-clients", type=number(int, 1, 10_000, "from 1 to 10000"), default=32)
        ap.add_argument("--ws-allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="a web page origin allowed besides the server's own; repeatable")
        ap.add_argument("--tls-cert", metavar="PEM", help="certificate: serve https/wss (needs --tls-key)")
        ap.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
        ap.add_argument("--jsonl", metavar="PATH", help="also write every event as JSON lines (- for stdout)")
        ap.add_argument("--replay-s", type=number(float, 0, 3600, "from 0 to 3600 s"), default=60.0,
                        help="recent window replayed to late clients (and read back from the broker at start)")
        ap.add_argument("--gateway-ttl-s", type=number(float, 1, 3600, "from 1 to 3600 s"), default=5.0,
                        help="a gateway silent this long has its streams ended (reason connection_lost)")
        ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_nats_options(ap, required=True)
    return ap


def parse(argv: list[str]) -> argparse.Namespace:
    args = build_parser(argv[0]).parse_args(argv[1:])
    args.command = argv[0]
    return args


def run(args: argparse.Namespace) -> int:
    from .. import cli as stream_cli

    stream_cli.setup_logging(args.log_level)
    try:
        if args.command == "cluster-bench":
            from .bench import run_bench

            return run_bench(args)
        options, names = connect_options(args), names_of(args)
        name = process_name(args, args.command)
        from .broker import check_broker

        check_broker(options, names)
        runner = _worker(args, options, names, name) if args.command == "worker" else _feed(args, options, names, name)
    except CliError as exc:
        print(f"ser-live: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return asyncio.run(runner)


def _worker(args, options, names, name):
    from .. import cli as stream_cli
    from ..worker import InferenceWorker
    from .modelworker import ModelWorker

    predictor, _ = stream_cli.load_predictor(args, use_knn=not args.no_knn)
    worker = ModelWorker(InferenceWorker(predictor, args.max_batch, args.max_wait_ms), options, names, name,
                         args.ack_wait_s)
    return _until_signal(worker)


def _feed(args, options, names, name):
    from .. import cli as stream_cli
    from ..dashboard import dashboard_url
    from ..sinks import JsonlSink
    from .feed import Feed

    args.accept_audio = False
    ws_config = stream_cli.parse_ws(args)
    feed = Feed(options, names, name, args.replay_s, args.gateway_ttl_s)
    if args.jsonl:
        try:
            feed.add_sink(JsonlSink(args.jsonl))
        except OSError as exc:
            raise CliError(f"cannot write --jsonl {args.jsonl}: {exc.strerror}") from exc

    async def announce() -> None:
        await feed.ready.wait()
        if url := dashboard_url(feed.ws):
            print(f"ser-live: dashboard at {url}", file=sys.stderr, flush=True)

    return _until_signal(feed, lambda: feed.run(ws_config), announce)


async def _until_signal(service, run=None, *extra) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, service.stop)
    others = [asyncio.create_task(e()) for e in extra]
    try:
        return await (run() if run is not None else service.run())
    finally:
        for task in others:
            task.cancel()
