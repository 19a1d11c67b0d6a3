"""Benchmark the exact laws of ``jaxalign.exact`` (not run by the tests).

Usage: ``.venv/bin/python benchmarks/bench_exact.py [--repeats 5] [--baseline REF]``

Times are wall-clock medians after one warm-up call, with
``jax.block_until_ready`` (the exact laws are NumPy float64, so nothing compiles);
peak memory is the largest NumPy/Python allocation during one call
(``tracemalloc``).  ``--baseline REF`` also times ``reward_law`` as it was at git
revision ``REF`` (default: the code before issue 14, O(K M)) on the rows it can run,
in the same process, and prints the ratio; ``--baseline none`` skips it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import jax
import numpy as np

import jaxalign
from jaxalign import exact

# The last revision with the O(K M) lattice law (issue 14, target 1).
_BEFORE_ISSUE_14 = "9941ad1a7646917db9477e0a69ccfe9547bee90b"


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        jax.block_until_ready(fn())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _baseline_module(ref):
    """``jaxalign.exact._lattice`` as it was at git revision ``ref`` (or None)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{ref}:jaxalign/exact/_lattice.py"],
            check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"baseline {ref!r} unavailable: {err}", file=sys.stderr)
        return None
    path = pathlib.Path(tempfile.mkdtemp()) / "baseline_lattice.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_lattice", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(probs, n):
    return jaxalign.MemorylessLM.from_probs(np.asarray(probs), length=n)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=_BEFORE_ISSUE_14)
    args = parser.parse_args()
    baseline = None if args.baseline == "none" else _baseline_module(args.baseline)
    rows = []

    def row(name, fn, repeats=args.repeats, old_fn=None, memory=False):
        seconds = _median_time(fn, repeats)
        peak = _peak_bytes(fn) if memory else None
        old = None
        if old_fn is not None and baseline is not None:
            old = _median_time(old_fn, 1)
        rows.append((name, seconds, peak, old))

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        probs4 = np.array([0.4, 0.3, 0.2, 0.1])
        lm = _model(probs4, 10_000)
        r = jaxalign.LinearReward(np.array([0.0, 1.0, 2.0, 3.0]))
        law = exact.reward_law(lm, r)
        row("best_of_n_from_law n=1e4 K=4 logN=1000 (M=30001)",
            lambda: exact.best_of_n_from_law(law, log_num_candidates=1000.0))
        grid = np.linspace(0.0, 1000.0, 100)
        row("best_of_n_from_law n=1e4 K=4, grid of 100 log N",
            lambda: exact.best_of_n_from_law(law, log_num_candidates=grid))
        row("best_of_n (law + BoN) n=1e4 K=4 logN=1000",
            lambda: exact.best_of_n(lm, r, log_num_candidates=1000.0))
        row("reward_law n=1e4 K=4 {0,1,2,3} (M=30001)",
            lambda: exact.reward_law(lm, r),
            old_fn=lambda: baseline.reward_law(lm, r))
        lm5 = _model(probs4, 100_000)
        row("reward_law n=1e5 K=4 {0,1,2,3} (M=300001)",
            lambda: exact.reward_law(lm5, r))
        r_sparse = jaxalign.LinearReward(np.array([0.0, 1.0, 5.0, 10.0]))
        row("reward_law n=1e5 K=4 {0,1,5,10} (M=1000001)",
            lambda: exact.reward_law(lm5, r_sparse), max(1, args.repeats // 2))
        lm10 = _model(np.full(10, 0.1), 111_111)
        r10 = jaxalign.LinearReward(np.arange(10.0))
        row("reward_law n=111111 K=10 {0..9} (M=999991)",
            lambda: exact.reward_law(lm10, r10), max(1, args.repeats // 2))
        # Issue 14, target 1: real vocabularies.
        k = 1000
        lm_k = _model(rng.dirichlet(np.ones(k)), 256)
        r_k = jaxalign.LinearReward(rng.standard_normal(k))
        law_k = exact.reward_law(lm_k, r_k, span=0.03)
        row(f"reward_law K=1000 Dirichlet, Gaussian span 0.03, n=256 "
            f"(M={law_k.values.shape[0]})",
            lambda: exact.reward_law(lm_k, r_k, span=0.03), memory=True,
            old_fn=lambda: baseline.reward_law(lm_k, r_k, span=0.03))
        k = 20_000
        lm_one = _model(rng.dirichlet(np.ones(k)), 1)
        r_one = jaxalign.LinearReward(1.0 + 0.25 * rng.permutation(k))
        row("reward_law one token, K=20000 distinct rewards (M=20000)",
            lambda: exact.reward_law(lm_one, r_one), memory=True)
        lm_two = _model(np.asarray(lm_one.probs), 2)
        row("reward_law n=2, K=20000 distinct rewards (M=39999)",
            lambda: exact.reward_law(lm_two, r_one), memory=True)
        k = 2**17
        zipf = 1.0 / np.arange(1, k + 1) ** 1.1
        lm_z = _model(zipf / zipf.sum(), 1024)
        r_z = jaxalign.LinearReward(rng.standard_normal(k))
        law_z = exact.reward_law(lm_z, r_z, span=0.01)
        row(f"reward_law Zipf K=131072, Gaussian span 0.01, n=1024 "
            f"(M={law_z.values.shape[0]})",
            lambda: exact.reward_law(lm_z, r_z, span=0.01),
            max(1, args.repeats // 2), memory=True)
    info = {"jax": jax.__version__, "device": str(jax.devices()[0]),
            "machine": platform.processor() or platform.machine(),
            "baseline": args.baseline if baseline is not None else None}
    print(json.dumps(info))
    print(f"{'':74s} {'time':>10s} {'peak MB':>8s} {'baseline':>10s} {'ratio':>7s}")
    for name, seconds, peak, old in rows:
        peak_text = f"{peak / 1e6:8.1f}" if peak is not None else f"{'':8s}"
        old_text = (f"{old * 1e3:8.0f}ms {old / seconds:6.2f}x" if old is not None
                    else "")
        print(f"{name:74s} {seconds * 1e3:8.1f}ms {peak_text} {old_text}")


if __name__ == "__main__":
    main()
