"""Timing shared by the benchmarks (run as ``python benchmarks/<name>.py``, so this
folder is on ``sys.path``)."""

from __future__ import annotations

import time

import jax


def best_time(fn, repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` after one warm-up call
    (which compiles), each waited for with ``jax.block_until_ready``."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best
