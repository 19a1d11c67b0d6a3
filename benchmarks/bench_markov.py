"""Markov-chain sampling throughput: the token-level chain sampler against its
baselines, and the law level.

Run:  .venv/bin/python benchmarks/bench_markov.py [--repeats 3] [--quick]

For Dirichlet(1) chains with K=16 and K=256 tokens, n=256 and S sequences
(16384 on a CPU, 64x more on a GPU/TPU; --quick: 4096), prints tokens/s of
  * jaxalign.sample.rewards on the MarkovLM (token level: the chain's own
    sampler stage, a scan over t drawing one token per step per sequence from
    one 32-bit word, through alias tables per row of P (built in every call),
    and summing its reward),
  * (a) a vectorised NumPy chain sampler written here: per step, inverse CDF by
    one np.searchsorted of ``state + u`` in the row-offset cumulative table
    ``a + cumsum(P[a])`` (all rows in one sorted array), vectorised over the
    sequences (timed on min(S, 4096) sequences and scaled),
  * (b) the raw PRNG: jax.random.uniform of the same number of 32-bit words in
    one flat call (classic threefry layout), an upper bound for any sampler that
    draws its words with JAX,
and the ratios; then the law level: ``sample.policy(level="law")`` draws/s of
best-of-64 on the K=16 chain with an integer reward (0..4), whose exact law of R
(a DP over (state, reward), computed inside every call) dominates at this size,
and the law sampler alone on a precomputed law (``sample.best_of_n_from_law``);
then the exact law of R at K=16, n=1024 with the integer reward 0..4
(``MarkovLM.reward_law``: a float64 DP over (state, S), 4097 values), cold (first
call: compiles) and warm, against a NumPy float64 forward DP of the same recursion
(linear scale, rescaled per step: the same products without log-space
tail-accuracy), and exact best-of-N with ``log_num_candidates=1000`` on that law
(``exact.best_of_n_from_law``) against one float64 FFT of the law's size.
Timings exclude compilation (warm-up call first), use block_until_ready and take
the best of a few repeats.  The machine may be shared: re-run to gauge noise.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _timing import best_time

import jaxalign
from jaxalign import policies, sample
from jaxalign._types import classic_threefry

LENGTH = 256
S_NUMPY = 4096  # NumPy baseline: at most this many sequences, timed and scaled


def numpy_chain(rng, init_cdf, offset_cdf, token_rewards, num):
    """Rewards of ``num`` chain sequences, vectorised over the sequences.

    ``offset_cdf[a * K + b] = a + P(a, 0) + ... + P(a, b)``: the next token from
    state ``a`` and a uniform ``u`` is the number of entries ``<= a + u`` minus
    ``a K`` (inverse CDF of row ``a``), one searchsorted for all sequences.
    """
    k = init_cdf.size
    u = rng.random((LENGTH, num))
    y = np.minimum(np.searchsorted(init_cdf, u[0], side="right"), k - 1)
    total = token_rewards[y].astype(np.float64)
    for t in range(1, LENGTH):
        y = np.searchsorted(offset_cdf, y + u[t], side="right") - y * k
        y = np.clip(y, 0, k - 1)
        total += token_rewards[y]
    return total.astype(np.float32)


def bench_chain(num_tokens, num, repeats):
    key = jax.random.key(0)
    lm = jaxalign.MarkovLM.dirichlet(jax.random.key(1), num_tokens, 1.0,
                                     length=LENGTH)
    token_rewards = np.random.default_rng(0).normal(size=num_tokens).astype(
        np.float32)
    reward = jaxalign.LinearReward(token_rewards)
    tokens_total = num * LENGTH

    t_chain = best_time(lambda: sample.rewards(key, lm, reward, num), repeats)

    def uniform(k):
        return jax.random.uniform(k, (num, LENGTH))

    raw = jax.jit(classic_threefry(uniform))
    t_raw = best_time(lambda: raw(key), repeats)

    trans = np.exp(np.asarray(lm.log_trans, np.float64))
    init_cdf = np.cumsum(np.exp(np.asarray(lm.log_init, np.float64)))
    offset_cdf = (np.cumsum(trans, axis=1)
                  + np.arange(num_tokens)[:, None]).ravel()
    rng = np.random.default_rng(1)
    num_np = min(num, S_NUMPY)
    t_np = best_time(lambda: numpy_chain(rng, init_cdf, offset_cdf, token_rewards,
                                         num_np), repeats) * num / num_np

    def rate(t):
        return tokens_total / t / 1e6

    print(f"K={num_tokens:4d} | chain sampler {rate(t_chain):7.1f} | numpy "
          f"{rate(t_np):6.1f} | raw uniform {rate(t_raw):7.1f} M tokens/s | "
          f"x numpy {t_np / t_chain:5.1f} | / raw PRNG {t_raw / t_chain:4.2f}")


def bench_law(num, repeats):
    key = jax.random.key(0)
    num_tokens, num_candidates = 16, 64
    lm = jaxalign.MarkovLM.dirichlet(jax.random.key(1), num_tokens, 1.0,
                                     length=LENGTH)
    reward = jaxalign.LinearReward(np.arange(num_tokens, dtype=np.float32) % 5)
    bon = policies.BestOfN(num_candidates)
    t_policy = best_time(
        lambda: sample.policy(key, lm, reward, bon, num, level="law"), repeats)
    t0 = time.perf_counter()
    law = lm.reward_law(reward)
    t_build = time.perf_counter() - t0
    t_law = best_time(lambda: sample.best_of_n_from_law(
        key, law.values, law.log_pmf, num_candidates, num), repeats)
    t_token = best_time(
        lambda: sample.best_of_n(key, lm, reward, num_candidates, 64).reward, 1
    ) * num / 64
    print(f"law level, K={num_tokens} n={LENGTH} best-of-{num_candidates}, {num} "
          f"draws | sample.policy(level='law') {num / t_policy / 1e6:6.3f} M draws/s "
          f"(incl. the law, {t_build * 1e3:.0f} ms alone) | law sampler alone "
          f"{num / t_law / 1e6:6.1f} M draws/s | token-level best_of_n "
          f"{num / t_token / 1e6:8.5f} M draws/s (x{t_token / t_policy:.0f} slower "
          "than the law level)")


def numpy_law(init, trans, k_tok, length):
    """P(S = s) by the forward DP in float64, linear scale, one matrix product per
    step, rescaled per step, entries below 1e-200 of the largest dropped (the
    baseline of bench_exact_law; no tail accuracy)."""
    d = int(k_tok.max())
    size = length * d + 1
    f = np.zeros((init.size, size))
    f[np.arange(init.size), k_tok] = init
    log_scale = 0.0
    for t in range(1, length):
        width = min(size, (t + 1) * d + 1)
        g = trans.T @ f[:, :width]
        f = np.zeros_like(f)
        for b in range(init.size):  # shift row b by its reward
            f[b, k_tok[b]:width] = g[b, :width - k_tok[b]]
        m = f.max()
        f /= m
        f[f < 1e-200] = 0.0  # no subnormals (10-100x slower arithmetic)
        log_scale += np.log(m)
    return np.log(f.sum(0)) + log_scale


def bench_exact_law(repeats):
    from jaxalign import exact

    num_tokens, length = 16, 1024
    lm = jaxalign.MarkovLM.dirichlet(jax.random.key(1), num_tokens, 1.0,
                                     length=length)
    k_tok = np.arange(num_tokens) % 5
    reward = jaxalign.LinearReward(k_tok.astype(np.float32))
    t0 = time.perf_counter()
    law = jax.block_until_ready(lm.reward_law(reward))
    t_cold = time.perf_counter() - t0
    t_warm = best_time(lambda: lm.reward_law(reward).log_pmf, repeats)
    init = np.exp(np.asarray(lm.log_init, np.float64))
    trans = np.exp(np.asarray(lm.log_trans, np.float64))
    with np.errstate(divide="ignore"):
        t_np = best_time(lambda: numpy_law(init, trans, k_tok, length), 1)
    size = law.values.shape[0]
    x = np.random.default_rng(0).normal(size=size)
    t_fft = best_time(lambda: np.fft.rfft(x), repeats)
    t_bon = best_time(lambda: exact.best_of_n_from_law(
        law, log_num_candidates=1000.0).expected_reward, repeats)
    print(f"exact law K={num_tokens} n={length} ({size} values) | reward_law cold "
          f"{t_cold:6.3f} s, warm {t_warm:6.3f} s | NumPy float64 forward DP "
          f"{t_np:6.3f} s (x{t_np / t_warm:.1f} of warm)")
    print(f"exact best-of-N, log N = 1000, on that law | {t_bon * 1e3:7.2f} ms | one "
          f"float64 FFT of size {size}: {t_fft * 1e3:6.3f} ms (x{t_bon / t_fft:.0f})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scale", type=int, default=None,
                        help="multiply the number of sequences (default: 1 on CPU, "
                        "64 on GPU/TPU)")
    args = parser.parse_args()
    platform = jax.devices()[0].platform
    num = 4096 if args.quick else 16384
    num *= args.scale if args.scale is not None else (1 if platform == "cpu" else 64)
    print(
        f"jax {jax.__version__}, device {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}, {jax.device_count()} device(s)), PRNG "
        f"{jax.random.key_impl(jax.random.key(0))}, "
        f"threefry_partitionable={jax.config.jax_threefry_partitionable}"
    )
    print(f"chain rewards: {num} sequences of n={LENGTH} (Dirichlet(1) chains)")
    for num_tokens in (16, 256):
        bench_chain(num_tokens, num, args.repeats)
    bench_law(num * 16, args.repeats)
    bench_exact_law(args.repeats)


if __name__ == "__main__":
    main()
