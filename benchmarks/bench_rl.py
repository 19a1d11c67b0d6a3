"""Training throughput of jaxalign.rl and the wall time of the frontier data.

Run:  .venv/bin/python benchmarks/bench_rl.py [--quick]

Timings exclude compilation (a warm-up call with the same shapes first, then
``jax.block_until_ready``), except the "frontier, cold" row, which is what a user
waits for the first time (compile included).  Float32, default threefry keys.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
from _timing import best_time

import jaxalign
from jaxalign import rl

_time = best_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()

    num_tokens, length, batch = (8, 16, 32) if args.quick else (16, 32, 64)
    num_steps = 100 if args.quick else 500
    key = jax.random.key(0)
    lm = jaxalign.MemorylessLM.zipf(num_tokens, 1.0, length=length)
    reward = jaxalign.LinearReward(jnp.linspace(0.0, 1.0, num_tokens))
    rows = []

    for algorithm in rl.ALGORITHMS:
        for num_betas, num_seeds in ((1, 1), (4, 4)):
            betas = jnp.linspace(0.1, 1.0, num_betas)
            kw = dict(num_seeds=num_seeds, algorithm=algorithm, num_steps=num_steps,
                      batch_size=batch, group_size=8, learning_rate=0.05)
            t0 = time.perf_counter()
            jax.block_until_ready(rl.train_sweep(key, lm, reward, betas, **kw))
            compile_s = time.perf_counter() - t0
            run_s = _time(
                lambda b=betas, kw=kw: rl.train_sweep(key, lm, reward, b, **kw))
            runs = num_betas * num_seeds
            rows.append(dict(
                what=f"train {algorithm}", runs=runs, batch=batch, length=length,
                K=num_tokens, num_steps=num_steps,
                epochs=1 if algorithm in ("exact", "reinforce") else 4,
                steps_per_s=num_steps * runs / run_s,
                tokens_per_s=(0 if algorithm == "exact"
                              else num_steps * runs * batch * length / run_s),
                first_call_s=compile_s, run_s=run_s))

    # Frontier figure data: 3 algorithms x 4 betas x 2 seeds, tilt curve, exact BoN.
    fk, fn_len = (6, 8) if args.quick else (8, 16)
    flm = jaxalign.MemorylessLM.zipf(fk, 1.0, length=fn_len)
    frew = jaxalign.LinearReward(jnp.linspace(0.0, 1.0, fk))
    fbetas = jnp.array([0.05, 0.1, 0.3, 1.0])
    fkw = dict(num_seeds=2, num_steps=300, batch_size=32, group_size=8,
               learning_rate=0.05, num_candidates=[2**i for i in range(11)])

    def frontier():
        return rl.frontier_data(key, flm, frew, fbetas, **fkw)

    t0 = time.perf_counter()
    jax.block_until_ready(frontier().algorithm_kl)
    cold = time.perf_counter() - t0
    warm = _time(lambda: frontier().algorithm_kl, repeats=2)
    rows.append(dict(what="frontier_data cold (compile included)", K=fk,
                     length=fn_len, run_s=cold))
    rows.append(dict(what="frontier_data warm", K=fk, length=fn_len, run_s=warm))

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'what':40s} {'runs':>4s} {'steps/s':>10s} {'Mtok/s':>8s} "
          f"{'first(s)':>9s} {'run(s)':>8s}")
    for r in rows:
        print(f"{r['what']:40s} {r.get('runs', ''):>4} "
              f"{r.get('steps_per_s', float('nan')):10.0f} "
              f"{r.get('tokens_per_s', float('nan')) / 1e6:8.2f} "
              f"{r.get('first_call_s', float('nan')):9.2f} {r['run_s']:8.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
