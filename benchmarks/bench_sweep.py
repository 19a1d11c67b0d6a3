"""Sweep throughput on 1 vs 4 simulated CPU devices, and the cost of the store and
the progress bar.

Run:  .venv/bin/python benchmarks/bench_sweep.py [--replicates 16384]

Each device count runs in its own subprocess (XLA_FLAGS must be set before JAX is
imported).  Every measurement runs the sweep twice and times the second run (the first
compiles).  Simulated host devices share the same 2 cores, so they measure overhead and
correctness of sharding, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIG = """
name = "bench"
seed = 0
replicates = {replicates}
chunk_size = 65536
methods = ["tilted", "best_of_n"]
sampling = "{sampling}"

[[model]]
name = "four"
probs = [0.4, 0.3, 0.2, 0.1]
rewards = [0.0, 1.0, 2.0, 3.0]

[grid]
length = [32]
kl_budget = [0.5, 1.0, 2.0, 4.0]
num_candidates = [4, 16]
"""


def child(replicates: int, sampling: str) -> dict:
    import tomllib

    import jax

    from jaxalign import config as cfg
    from jaxalign import store, sweep

    config = cfg.parse_config(
        tomllib.loads(CONFIG.format(replicates=replicates, sampling=sampling))
    )
    points = len(cfg.grid_points(config))
    # Time spent in the store (appends) and the progress bar, measured in-process.
    spent = {"store": 0.0, "progress": 0.0}

    def timed(fn, bucket):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[bucket] += time.perf_counter() - t

        return wrapper

    store.RunStore.append = timed(store.RunStore.append, "store")
    make_bar = sweep._progress

    def timed_bar(*args, **kwargs):  # the tqdm bar's updates, in-process
        bar = make_bar(*args, **kwargs)
        bar.update = timed(bar.update, "progress")
        bar.set_postfix_str = timed(bar.set_postfix_str, "progress")
        return bar

    sweep._progress = timed_bar
    with tempfile.TemporaryDirectory() as tmp:
        sweep.run_sweep(config, f"{tmp}/warm")  # compile
        spent.update(store=0.0, progress=0.0)
        t = time.perf_counter()
        summary = sweep.run_sweep(config, f"{tmp}/run", progress=True)
        seconds = time.perf_counter() - t
    return {
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "points": points,
        "samples": summary.num_samples,
        "seconds": seconds,
        "points_per_s": points / seconds,
        "samples_per_s": summary.num_samples / seconds,
        "store_fraction": spent["store"] / seconds,
        "progress_fraction": spent["progress"] / seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=16384)
    parser.add_argument("--sampling", choices=["token", "law"], default="token")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # The progress bar writes to stderr; keep stdout for the JSON result.
        print(json.dumps(child(args.replicates, args.sampling)))
        return
    rows = []
    for devices in (1, 4):
        env = dict(
            os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
        )
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--replicates", str(args.replicates),
             "--sampling", args.sampling],
            capture_output=True, text=True, env=env, check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"# sweep benchmark: jax {r0['jax']}, backend {r0['backend']}, PRNG "
          f"threefry2x32, sampling={args.sampling}, {r0['points']} points x "
          f"{args.replicates} replicates (n=32, K=4)")
    print(f"{'devices':>7} {'seconds':>8} {'points/s':>9} {'samples/s':>11} "
          f"{'store %':>8} {'progress %':>10} {'vs 1 device':>11}")
    for r in rows:
        print(f"{r['devices']:>7} {r['seconds']:>8.2f} {r['points_per_s']:>9.2f} "
              f"{r['samples_per_s']:>11.3g} {100 * r['store_fraction']:>8.2f} "
              f"{100 * r['progress_fraction']:>10.2f} "
              f"{r0['seconds'] / r['seconds']:>11.2f}")


if __name__ == "__main__":
    main()
