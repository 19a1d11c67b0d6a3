"""Token-level best-of-N at the CPU's and at the accelerators' scan-step sizes.

Run:  .venv/bin/python benchmarks/bench_steps.py   (meant for a GPU or TPU)

``jaxalign.sample`` takes 64x larger scan steps on an accelerator than on a CPU
(``_kernels._step_scale``).  This times best-of-N and its own PRNG draws
(``sample._best_of_n_draws_only``) with both step sizes in one run, and checks
that the draws are identical.  Timings exclude compilation (best of 3).
"""

from __future__ import annotations

import time

import jax
import numpy as np

import jaxalign
from jaxalign import sample
from jaxalign.sample import _kernels

S, N, LENGTH = 16384, 64, 256


def best(fn, repeats=3):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def one_scale(key, lm, reward, scale):
    """(seconds of best-of-N, seconds of its draws alone, the rewards) at a scale."""
    _kernels._step_scale = lambda: scale
    jax.clear_caches()
    t = best(lambda: sample.best_of_n(key, lm, reward, N, S).reward)
    d = best(lambda: sample._best_of_n_draws_only(key, lm, reward, N, S))
    return t, d, np.asarray(sample.best_of_n(key, lm, reward, N, S).reward)


def main():
    print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind}; "
          f"best-of-{N}, {S} samples, n = {LENGTH}")
    real = _kernels._step_scale
    tokens = S * N * LENGTH
    try:
        for num_tokens in (16, 1024):
            lm = jaxalign.MemorylessLM.dirichlet(jax.random.key(1), num_tokens,
                                                 length=LENGTH)
            rewards = np.random.default_rng(0).normal(size=num_tokens)
            reward = jaxalign.LinearReward(rewards.astype(np.float32))
            out = {s: one_scale(jax.random.key(0), lm, reward, s) for s in (1, 64)}
            for scale, (t, d, _) in out.items():
                print(f"K={num_tokens:5d} step scale {scale:2d}: best-of-N "
                      f"{tokens / t / 1e9:6.2f} G tokens/s, its draws "
                      f"{tokens / d / 1e9:6.2f} G words/s")
            same = np.array_equal(out[1][2], out[64][2])
            print(f"K={num_tokens:5d}: x{out[1][0] / out[64][0]:.1f} with the larger "
                  f"steps; identical draws: {same}")
    finally:
        _kernels._step_scale = real


if __name__ == "__main__":
    main()
