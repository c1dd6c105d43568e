"""The engine hands freed heap memory back (stream/memory.py)."""

from __future__ import annotations

import threading

from serlive.stream.loadgen import rss_mb
from serlive.stream.memory import trim_heap


def test_trim_returns_what_a_thread_freed_to_the_system():
    kept = []

    def burst():  # 180 MB in 60 kB buffers (below malloc's mmap threshold: they live in the thread's arena)
        buffers = [bytearray(60_000) for _ in range(3000)]
        kept.append(buffers[-1])  # the last one pins the top of the heap, as a live buffer would

    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()
    before = rss_mb()
    assert trim_heap() is True  # glibc, as on every machine this project runs on
    assert before - rss_mb() > 100
