"""Silencing C libraries that write to file descriptor 2 directly (process-wide, so behind a lock)."""

from __future__ import annotations

import contextlib
import os
import threading

_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Send file descriptor 2 to /dev/null for the duration: libsndfile's MP3 decoder (mpg123) writes
    hundreds of diagnostic lines straight to it, which no Python setting silences."""
    if not enabled:
        yield
        return
    with _STDERR_LOCK:
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
