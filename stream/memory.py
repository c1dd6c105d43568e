"""Hand memory that the C allocator keeps after a burst back to the system (glibc's ``malloc_trim``).

A long-running engine allocates audio buffers, numpy arrays and socket buffers on several threads; glibc
keeps what they freed in per-thread arenas, so RSS creeps up under client churn although the Python heap is
flat (the soak script shows both). Trimming now and then returns those pages. Elsewhere than glibc it is a
no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

TRIM_EVERY_S = 30.0
"""How often the engine trims (it takes a few milliseconds)."""

_libc = None


def trim_heap() -> bool:
    """Return free heap memory to the system; False where the C library has no ``malloc_trim``."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True
