"""How ``ser-live`` ends on a signal: the first SIGINT, SIGTERM or SIGHUP (terminal closed) drains the
engine within ``--drain-s``; a second exits at once with one line; Ctrl-C before the engine runs is one line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger("serlive.stream.cli")

EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (SIGINT), during start-up or after the drain: 128 + 2, as shells report it.
SIGTERM and SIGHUP drain the same way and keep the run's own code (0, or 1 when a source failed or the
drain ran out of time); a second signal exits at once with 128 + its number."""



def interrupted(when: str) -> int:
    """One line on stderr for a Ctrl-C that came before the engine ran (nothing to drain)."""
    sys.stderr.write(f"ser-live: interrupted {when}\n")
    return EXIT_INTERRUPTED


class Drain:
    """SIGINT, SIGTERM and SIGHUP (terminal closed) all drain: the first stops the engine, which
    predicts what it owes within ``--drain-s``; a second exits at once, with one line."""

    def __init__(self, engine) -> None:
        self.engine, self.first = engine, None

    def __call__(self, signum: int) -> None:
        if self.first is None:
            self.first = signum
            log.info("%s: stopping", signal.Signals(signum).name)
            self.engine.stop()
            return
        sys.stderr.write(f"ser-live: {signal.Signals(signum).name} again: exiting now, without the "
                         f"{'drain' if self.engine.ready.is_set() else 'start-up'} finishing\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop, engine) -> "Drain":
        """Handle SIGINT, SIGTERM and SIGHUP on ``loop`` (where the platform allows it)."""
        handler = cls(engine)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, handler, sig)
            except (NotImplementedError, RuntimeError, AttributeError):
                pass  # not the main thread, or Windows: Ctrl-C still raises KeyboardInterrupt
        return handler

    def exit_code(self, code: int) -> int:
        """The run's code, or :data:`EXIT_INTERRUPTED` when it ended on Ctrl-C."""
        return EXIT_INTERRUPTED if self.first == signal.SIGINT else code


def exit_on_late_signals(code: int) -> None:
    """Everything is flushed: a signal during interpreter teardown just exits with ``code``."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: os._exit(code))
