"""Sampling throughput: fused token-level best-of-N against its baselines.

Run:  .venv/bin/python benchmarks/bench_sampling.py [--repeats 3] [--quick]
      [--breakdown]

For num_samples=256, N=64, n=256 at K=16 and K=1024, and for the default
threefry2x32 and philox4x32 PRNGs, prints tokens/s of
  * jaxalign.sample.best_of_n (alias table, fused reward sum, streaming max),
  * (a) the fastest vectorised NumPy version we have (inverse CDF by
    searchsorted, or an alias table; np.random.default_rng, cache-sized chunks;
    timed on 256 samples and scaled when more are asked for),
  * (b) a naive jax.random.categorical version (Gumbel-max over K per token;
    timed on a slice of the samples at K=1024 and scaled),
  * (c) the sampler's own PRNG work alone (``sample._best_of_n_draws_only``: the
    same compiled pipeline, keys and 32-bit words, one per token, with the
    alias-table consumer replaced by one XOR per candidate), so "/ draws" is the
    share of the time spent drawing random bits and cannot exceed about 1;
  * (d) for reference, raw jax.random.uniform of the same count in one flat call
    (classic threefry layout, and the partitionable layout): float conversion
    and a different key layout make it a different workload,
and the ratios; then reward-law best-of-N against token level at n = 1024.
With --breakdown it also times the alias-table consumer alone in place (same
program, the PRNG replaced by a multiplicative hash) beside the PRNG alone; when
the two halves do not overlap, their times add up to the fused time.
Timings exclude compilation (warm-up call first), use block_until_ready and take
the best of a few repeats.  The machine is shared: re-run to gauge noise.  On a
GPU or TPU the number of samples is scaled up (``--scale``, default 64 there) so
the device is busy; the device kind is printed first.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _timing import best_time

import jaxalign
from jaxalign import exact, sample
from jaxalign._types import classic_threefry

S, N, LENGTH = 256, 64, 256
S_NUMPY = 256  # NumPy baselines: this many samples, timed and scaled to S


def numpy_searchsorted(rng, cdf, rewards, chunk=8):
    out = np.empty(S_NUMPY, np.float32)
    for i in range(0, S_NUMPY, chunk):
        u = rng.random((chunk, N, LENGTH), dtype=np.float32)
        tok = np.searchsorted(cdf, u, side="right")
        out[i : i + chunk] = rewards[tok].sum(-1).max(-1)
    return out


def numpy_alias(rng, threshold, shift, reward_keep, reward_alias, chunk=8):
    out = np.empty(S_NUMPY, np.float32)
    mask = np.uint32((1 << shift) - 1)
    for i in range(0, S_NUMPY, chunk):
        w = rng.integers(0, 2**32, size=(chunk, N, LENGTH), dtype=np.uint32)
        col = w >> np.uint32(shift)
        r = np.where((w & mask) < threshold[col], reward_keep[col], reward_alias[col])
        out[i : i + chunk] = r.sum(-1).max(-1)
    return out


def bench_k(num_tokens, impl, repeats, quick):
    key = jax.random.key(0, impl=impl)
    lm = jaxalign.MemorylessLM.dirichlet(jax.random.key(1), num_tokens, length=LENGTH)
    rng = np.random.default_rng(0)
    token_rewards = rng.normal(size=num_tokens).astype(np.float32)
    reward = jaxalign.LinearReward(token_rewards)
    tokens_total = S * N * LENGTH

    t_fused = best_time(lambda: sample.best_of_n(key, lm, reward, N, S).reward, repeats)
    t_draws = best_time(
        lambda: sample._best_of_n_draws_only(key, lm, reward, N, S), repeats)

    def uniform(k):
        return jax.random.uniform(k, (S, N, LENGTH))

    raw, raw_part = jax.jit(classic_threefry(uniform)), jax.jit(uniform)
    t_raw = best_time(lambda: raw(key), repeats)
    with jax.threefry_partitionable(True):
        t_raw_part = best_time(lambda: raw_part(key), repeats)

    slice_samples = S if (num_tokens <= 16 and not quick) else 16
    logits = lm.log_probs

    @jax.jit
    def categorical(k):
        tok = jax.random.categorical(k, logits, shape=(slice_samples, N, LENGTH))
        return reward.token_rewards[tok].sum(-1).max(-1)

    t_cat = best_time(lambda: categorical(key), 1 if num_tokens > 16 else repeats)
    t_cat *= S / slice_samples

    probs = np.asarray(lm.probs, np.float64)
    cdf = np.cumsum(probs)[:-1].astype(np.float32)
    table = sample._alias_table(lm.probs)
    threshold = np.asarray(table.threshold)
    alias = np.asarray(table.alias)
    keep = np.zeros(threshold.size, np.float32)
    keep[:num_tokens] = token_rewards
    np_rng = np.random.default_rng(1)
    t_np_ss = best_time(lambda: numpy_searchsorted(np_rng, cdf, token_rewards),
                        repeats) * S / S_NUMPY
    t_np_alias = best_time(
        lambda: numpy_alias(np_rng, threshold, table.shift, keep, keep[alias]), repeats
    ) * S / S_NUMPY
    t_np = min(t_np_ss, t_np_alias)

    def rate(t):
        return tokens_total / t / 1e6

    partitionable = (
        f" (partitionable layout {rate(t_raw_part):.0f})" if "threefry" in impl else ""
    )
    print(
        f"{impl:13s} K={num_tokens:5d} | fused {rate(t_fused):6.1f} | numpy "
        f"searchsorted {rate(t_np_ss):5.1f}, alias {rate(t_np_alias):5.1f} | "
        f"categorical {rate(t_cat):6.2f} | draws only {rate(t_draws):6.1f} | raw "
        f"uniform {rate(t_raw):6.1f}{partitionable}\n{'':13s} {'':7s} | x best numpy "
        f"{t_np / t_fused:4.1f} | x categorical {t_cat / t_fused:7.1f} | / draws "
        f"{t_draws / t_fused:4.2f}"
    )
    if t_draws / t_fused > 1.05:
        print(f"{'':13s} note: faster than its own draws alone; timing noise or a "
              "partly overlapped PRNG (re-run with more --repeats)")


def breakdown(num_tokens, impl, repeats):
    key = jax.random.key(0, impl=impl)
    lm = jaxalign.MemorylessLM.dirichlet(jax.random.key(1), num_tokens, length=LENGTH)
    rng = np.random.default_rng(0)
    reward = jaxalign.LinearReward(rng.normal(size=num_tokens).astype(np.float32))
    # best_of_n asks the model for its stage (MemorylessLM.sampler_stage), which
    # resolves jaxalign.sample._token_stage at call time: patch that name.
    real_stage = sample._token_stage

    def consumer_only(lm, reward):  # PRNG replaced by a multiplicative hash
        stage = real_stage(lm, reward)

        def draw(k):
            seed = jax.random.key_data(k).ravel()[0].astype(np.uint32)
            return np.arange(LENGTH, dtype=np.uint32) * np.uint32(2654435761) ^ seed

        return sample._Stage(draw, stage.consume)

    def fused():
        return sample.best_of_n(key, lm, reward, N, S).reward

    rates = {"fused": best_time(fused, repeats), "draws only": best_time(
        lambda: sample._best_of_n_draws_only(key, lm, reward, N, S), repeats)}
    sample._token_stage = consumer_only
    jax.clear_caches()
    try:
        rates["consumer only"] = best_time(fused, repeats)
    finally:
        sample._token_stage = real_stage
        jax.clear_caches()
    print(f"{impl:13s} K={num_tokens:5d} | " + " | ".join(
        f"{name} {S * N * LENGTH / t / 1e6:6.1f}" for name, t in rates.items())
        + " M tokens/s")


def bench_table(repeats):
    """Alias-table build (inside every token-level call) at vocabulary sizes."""
    build = jax.jit(sample._alias_table)
    parts = []
    for bits in (10, 15, 18):
        probs = np.random.default_rng(bits).dirichlet(np.ones(1 << bits))
        probs = jax.numpy.asarray(probs, np.float32)
        seconds = best_time(lambda p=probs: build(p), repeats)
        parts.append(f"K=2^{bits} {seconds * 1e3:.2f} ms")
    print("alias table build: " + ", ".join(parts))


def bench_law(impl, repeats):
    length, num_tokens = 1024, 16
    key = jax.random.key(0, impl=impl)
    lm = jaxalign.MemorylessLM.dirichlet(jax.random.key(1), num_tokens, length=length)
    reward = jaxalign.LinearReward(np.arange(num_tokens, dtype=np.float32) % 5)
    t_token = best_time(lambda: sample.best_of_n(key, lm, reward, N, S).reward, repeats)
    t0 = time.perf_counter()
    law = exact.reward_law(lm, reward)
    t_law_build = time.perf_counter() - t0
    t_law = best_time(
        lambda: sample.best_of_n_from_law(key, law.values, law.log_pmf, N, S), repeats
    )
    t_law_full = best_time(
        lambda: sample.best_of_n(key, lm, reward, N, S, level="law").reward, 1
    )
    print(
        f"{impl:13s} n=1024 K=16 best-of-{N}, {S} samples | token {t_token * 1e3:8.2f}"
        f" ms | law sampler {t_law * 1e3:7.3f} ms (x{t_token / t_law:7.0f}) | law "
        f"incl. exact.reward_law {t_law_full * 1e3:7.2f} ms "
        f"(x{t_token / t_law_full:5.1f})"
        f" | reward_law alone {t_law_build * 1e3:.1f} ms"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--scale", type=int, default=None,
                        help="multiply the number of samples (default: 1 on CPU, "
                        "64 on GPU/TPU)")
    args = parser.parse_args()
    global S
    platform = jax.devices()[0].platform
    S *= args.scale if args.scale is not None else (1 if platform == "cpu" else 64)
    print(
        f"jax {jax.__version__}, device {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}, {jax.device_count()} device(s)), "
        f"threefry_partitionable={jax.config.jax_threefry_partitionable}"
    )
    print(f"best-of-N: num_samples={S}, N={N}, n={LENGTH}; M tokens/s")
    for impl in ("threefry2x32", "philox4x32"):
        print("PRNG impl:", jax.random.key_impl(jax.random.key(0, impl=impl)))
        for num_tokens in (16, 1024):
            bench_k(num_tokens, impl, args.repeats, args.quick)
    for impl in ("threefry2x32", "philox4x32"):
        bench_law(impl, args.repeats)
    bench_table(args.repeats)
    if args.breakdown:
        print("in-place breakdown of the fused sampler (M tokens/s):")
        for impl in ("threefry2x32", "philox4x32"):
            for num_tokens in (16, 1024):
                breakdown(num_tokens, impl, args.repeats)


if __name__ == "__main__":
    main()
