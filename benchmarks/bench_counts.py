"""Count level against token level: best-of-N rewards at K = 16 over lengths.

Run:  .venv/bin/python benchmarks/bench_counts.py [--repeats 3] [--quick]
      [--prng philox4x32]

For n = 64, 256, ..., 65536 (powers of 4) prints sequences/s and
token-equivalents/s (sequences/s times n) of ``sample.best_of_n`` at
``level="token"`` (every token drawn through the alias table) and
``level="counts"`` (the token counts ``c ~ Multinomial(n, p)`` by K - 1
conditional binomials in one loop, ``R = sum_k c_k r_k``), their ratio, and the
crossover length (where the count level starts to win, interpolated in log-log
between the grid points).  Then, as baselines, binomial draws/s of jax.random.binomial
(one flat call) and of the count stage's own binomial (vmapped over keys, as in
the sampler: the counts of K = 2 tokens), at ``n = 65536``, ``p = 1/16``.
Timings exclude compilation (warm-up call first), use block_until_ready and take
the best of a few repeats.  The machine is shared: re-run to gauge noise.
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
from _timing import best_time

import jaxalign
from jaxalign import sample
from jaxalign._types import classic_threefry
from jaxalign.sample._counts import _multinomial_counts, _split_probs
from jaxalign.sample._kernels import _step_scale

K = 16
LENGTHS = [4**k for k in range(3, 9)]  # 64 .. 65536
NUM_SAMPLES = 16


def model(n):
    rng = np.random.default_rng(0)
    lm = jaxalign.MemorylessLM.from_probs(rng.dirichlet(np.ones(K)), length=n)
    return lm, jaxalign.LinearReward(rng.integers(0, 5, K).astype(np.float32))


def sequences_per_second(key, n, level, sequences, repeats):
    lm, r = model(n)
    num_candidates = max(1, sequences // NUM_SAMPLES)
    seconds = best_time(lambda: sample.best_of_n(
        key, lm, r, num_candidates, NUM_SAMPLES, level=level).reward, repeats)
    return NUM_SAMPLES * num_candidates / seconds


def crossover(lengths, ratios):
    for i in range(len(lengths) - 1):
        (n0, n1), (r0, r1) = lengths[i:i + 2], ratios[i:i + 2]
        if r0 < 1 <= r1:
            t = (0 - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    return lengths[0] if ratios[0] >= 1 else None


def binomial_rates(key, draws, repeats):
    count, prob = jnp.float32(65536), jnp.float32(1 / 16)
    flat = jax.jit(classic_threefry(lambda k: jax.random.binomial(
        k, jnp.full(draws, count), jnp.full(draws, prob))))
    q, flip = _split_probs(jnp.log(jnp.stack([prob, 1 - prob])))
    ours = jax.jit(classic_threefry(lambda k: jax.vmap(
        lambda i: _multinomial_counts(jax.random.fold_in(k, i), 65536, q, flip))(
            jnp.arange(draws, dtype=jnp.uint32))))
    return (draws / best_time(lambda: flat(key), repeats),
            draws / best_time(lambda: ours(key), repeats))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prng", default="philox4x32",
                        help="PRNG impl of the key (philox4x32 compiles fastest)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    # Sizes scale with the device: an accelerator takes 64x more work per call
    # (as the samplers' own steps do), or it times launch overhead.
    scale = _step_scale()
    token_words = scale << (21 if args.quick else 23)  # tokens per token-level call
    count_sequences = scale << (11 if args.quick else 14)
    key = jax.random.key(0, impl=args.prng)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}; JAX {jax.__version__}; "
          f"PRNG impl: {jax.random.key_impl(key)}")
    print(f"best-of-N rewards at K = {K}, num_samples = {NUM_SAMPLES}; sequences/s "
          "and token-equivalents/s (sequences/s x n)")
    print(f"{'n':>6s} | {'token seq/s':>12s} {'tok/s':>9s} | {'counts seq/s':>12s} "
          f"{'tok-eq/s':>9s} | {'counts/token':>12s}")
    ratios = []
    for n in LENGTHS:
        token = sequences_per_second(key, n, "token", max(64, token_words // n),
                                     repeats)
        counts = sequences_per_second(key, n, "counts", count_sequences, repeats)
        ratios.append(counts / token)
        print(f"{n:6d} | {token:12.4g} {token * n:9.3g} | {counts:12.4g} "
              f"{counts * n:9.3g} | {counts / token:12.3g}")
    cross = crossover(LENGTHS, ratios)
    print("crossover: " + ("none in range" if cross is None else
                           f"the count level wins from n ~ {cross:.0f}"))
    flat, ours = binomial_rates(key, scale << (16 if args.quick else 18), repeats)
    print(f"binomial draws/s at n = 65536, p = 1/16: jax.random.binomial (flat) "
          f"{flat:.3g}; count stage's binomial (vmapped keys) {ours:.3g}")


if __name__ == "__main__":
    main()
