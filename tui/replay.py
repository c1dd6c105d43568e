"""``python -m serlive.tui.replay EVENTS.jsonl``: the monitor fed from a recorded event file.

For trying the screen without audio, a model or an engine (and for the README's screenshots); the file
holds one wire-format event per line, as the WebSocket feed or ``--no-tui`` JSON lines would give them.
"""

from __future__ import annotations

import argparse
import sys

from .app import MonitorApp
from .source import ReplayError, ReplaySource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serlive.tui.replay", description=__doc__.splitlines()[0])
    parser.add_argument("events", help="a JSON-lines file of events")
    parser.add_argument("--delay-s", type=float, default=0.05, help="pause between events (default 0.05)")
    args = parser.parse_args(argv)
    try:
        source = ReplaySource.from_jsonl(args.events, delay_s=args.delay_s)
    except ReplayError as exc:
        sys.stderr.write(f"replay: error: {exc}\n")
        return 2
    return int(MonitorApp(source).run() or 0)


if __name__ == "__main__":
    sys.exit(main())
