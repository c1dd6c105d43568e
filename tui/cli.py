"""``ser-live``: the composition root. The TUI is the outermost room, so the command lives here and
hands everything but the screen to :mod:`serlive.stream.cli`."""

from __future__ import annotations

import gc
import sys

from serlive.stream.signals import interrupted


def main(argv: list[str] | None = None) -> int:
    try:
        from serlive.stream import cli as stream_cli

        args = stream_cli.parse_args(argv)
        if stream_cli.wants_tui(args):
            from .app import run_tui

            return run_tui(args)
    except KeyboardInterrupt:  # Ctrl-C while importing or loading the model: one line, no traceback
        return interrupted("while starting")
    code = stream_cli.run(args)
    gc.freeze()  # exiting: the interpreter's last collection of a long run's objects took seconds after a drain
    return code


if __name__ == "__main__":
    sys.exit(main())
