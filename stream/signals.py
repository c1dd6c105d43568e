"""How ``ser-live`` ends on a signal: the first SIGINT, SIGTERM or SIGHUP (terminal closed) drains the
engine within ``--drain-s``; a second exits at once with one line; Ctrl-C before the engine runs is one line.
A signal that was ignored when the process started (SIGHUP under ``nohup``, SIGINT for a background job of a
script) stays ignored: whoever started us asked for that."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger("serlive.stream.cli")

DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop the engine (each unless ignored at start)."""


IGNORED_AT_START = frozenset(s for s in DRAIN_SIGNALS if signal.getsignal(s) == signal.SIG_IGN)
"""Signals whose disposition was SIG_IGN when this module was first imported (before ser-live installed any
handler): ``nohup`` sets it for SIGHUP, a non-interactive shell's ``&`` for SIGINT."""


def handled_signals() -> tuple:
    """The signals ser-live handles: :data:`DRAIN_SIGNALS` less those ignored at start."""
    return tuple(s for s in DRAIN_SIGNALS if s not in IGNORED_AT_START)


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
        """Handle SIGINT, SIGTERM and SIGHUP on ``loop`` (where the platform allows it), except those
        ignored at start."""
        handler = cls(engine)
        for sig in handled_signals():
            try:
                loop.add_signal_handler(sig, handler, sig)
            except (NotImplementedError, RuntimeError, AttributeError):
                pass  # not the main thread, or Windows: Ctrl-C still raises KeyboardInterrupt
        return handler

    def exit_code(self, code: int) -> int:
        """The run's code, or :data:`EXIT_INTERRUPTED` when it ended on Ctrl-C."""
        return EXIT_INTERRUPTED if self.first == signal.SIGINT else code


def exit_on_late_signals(code: int) -> None:
    """Everything is flushed: a signal during interpreter teardown just exits with ``code`` (one ignored
    at start stays ignored)."""
    for sig in handled_signals():
        signal.signal(sig, lambda *_: os._exit(code))
