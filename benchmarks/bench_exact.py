"""Benchmark the exact laws of ``jaxalign.exact`` (not run by the tests).

Usage: ``.venv/bin/python benchmarks/bench_exact.py [--repeats 5]``

Times are wall-clock medians after one warm-up call, with
``jax.block_until_ready`` (the exact laws are NumPy float64, so nothing compiles).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np

import jaxalign
from jaxalign import exact


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with jax.enable_x64(True):
        probs4 = np.array([0.4, 0.3, 0.2, 0.1])

        def model(probs, n):
            return jaxalign.MemorylessLM.from_probs(np.asarray(probs), length=n)

        lm = model(probs4, 10_000)
        r = jaxalign.LinearReward(np.array([0.0, 1.0, 2.0, 3.0]))
        law = exact.reward_law(lm, r)
        rows.append(("best_of_n_from_law n=1e4 K=4 logN=1000 (M=30001)",
                     _median_time(lambda: exact.best_of_n_from_law(
                         law, log_num_candidates=1000.0), args.repeats)))
        grid = np.linspace(0.0, 1000.0, 100)
        rows.append(("best_of_n_from_law n=1e4 K=4, grid of 100 log N",
                     _median_time(lambda: exact.best_of_n_from_law(
                         law, log_num_candidates=grid), args.repeats)))
        rows.append(("best_of_n (law + BoN) n=1e4 K=4 logN=1000",
                     _median_time(lambda: exact.best_of_n(
                         lm, r, log_num_candidates=1000.0), args.repeats)))
        rows.append(("reward_law n=1e4 K=4 {0,1,2,3} (M=30001)",
                     _median_time(lambda: exact.reward_law(lm, r), args.repeats)))
        lm5 = model(probs4, 100_000)
        rows.append(("reward_law n=1e5 K=4 {0,1,2,3} (M=300001)",
                     _median_time(lambda: exact.reward_law(lm5, r), args.repeats)))
        r_sparse = jaxalign.LinearReward(np.array([0.0, 1.0, 5.0, 10.0]))
        rows.append(("reward_law n=1e5 K=4 {0,1,5,10} (M=1000001)",
                     _median_time(lambda: exact.reward_law(lm5, r_sparse),
                                  max(1, args.repeats // 2))))
        lm10 = model(np.full(10, 0.1), 111_111)
        r10 = jaxalign.LinearReward(np.arange(10.0))
        rows.append(("reward_law n=111111 K=10 {0..9} (M=999991)",
                     _median_time(lambda: exact.reward_law(lm10, r10),
                                  max(1, args.repeats // 2))))
    info = {"jax": jax.__version__, "device": str(jax.devices()[0]),
            "machine": platform.processor() or platform.machine()}
    print(json.dumps(info))
    for name, seconds in rows:
        print(f"{name:58s} {seconds * 1e3:10.1f} ms")


if __name__ == "__main__":
    main()
