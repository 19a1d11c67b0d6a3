"""Tests for jaxalign.sample: every sampler against an exact law computed here.

Exact references are built in NumPy float64 by enumeration or convolution,
independently of jaxalign.sample and jaxalign.exact.  Monte Carlo checks use
z-scores with the estimator's own standard error (|z| < 5) and chi-square
goodness of fit (p-value > 1e-6), with fixed keys.
"""

import itertools
import math
import os
import subprocess
import sys
import textwrap
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxalign
from jaxalign import sample
from jaxalign.models import LinearReward, MemorylessLM

P_MIN = 1e-6  # chi-square p-value floor: a false failure about once in 10^6 runs
Z_MAX = 5.0


@pytest.fixture
def key(request):
    """One deterministic philox4x32 key per test (overrides conftest's threefry key).

    With this jaxlib, programs holding threefry2x32 take seconds to compile on
    CPU and philox4x32 ones a fraction of that; the default threefry path is
    covered by the determinism and device tests.
    """
    seed = zlib.crc32(request.node.nodeid.encode())
    return jax.random.key(seed, impl="philox4x32")


# ----------------------------------------------------------------------- references


def sum_law(probs, int_rewards, n):
    """Exact pmf of R = sum of n i.i.d. integer token rewards (offset, pmf)."""
    probs = np.asarray(probs, np.float64)
    k = np.asarray(int_rewards, np.int64)
    lo = k.min()
    one = np.zeros(k.max() - lo + 1)
    np.add.at(one, k - lo, probs)
    pmf = np.ones(1)
    for _ in range(n):
        pmf = np.convolve(pmf, one)
    return n * lo + np.arange(pmf.size), pmf


def bon_class_law(pmf, num_candidates):
    cdf = np.minimum(np.cumsum(pmf), 1.0)
    prev = np.concatenate([[0.0], cdf[:-1]])
    return cdf**num_candidates - prev**num_candidates


def chi2_pvalue(observed_values, support, expected_probs):
    """Chi-square GOF of draws against a pmf on `support`, pooling small cells."""
    observed_values = np.asarray(observed_values, np.float64)
    assert np.all(np.isin(observed_values, support)), "draw outside the support"
    counts = np.array([(observed_values == v).sum() for v in support], np.float64)
    expected = np.asarray(expected_probs) * observed_values.size
    assert np.all(counts[expected == 0] == 0), "draw with zero probability"
    keep = expected > 0
    counts, expected = counts[keep], expected[keep]
    order = np.argsort(expected)
    counts, expected = counts[order], expected[order]
    # pool the smallest cells until each pooled cell expects >= 5
    pooled_c, pooled_e, acc_c, acc_e = [], [], 0.0, 0.0
    for c, e in zip(counts, expected, strict=True):
        acc_c, acc_e = acc_c + c, acc_e + e
        if acc_e >= 5:
            pooled_c.append(acc_c)
            pooled_e.append(acc_e)
            acc_c = acc_e = 0.0
    if acc_e > 0:
        pooled_c[-1] += acc_c
        pooled_e[-1] += acc_e
    pooled_c, pooled_e = np.array(pooled_c), np.array(pooled_e)
    if pooled_c.size < 2:
        return 1.0
    stat = np.sum((pooled_c - pooled_e) ** 2 / pooled_e)
    return scipy.stats.chi2.sf(stat, pooled_c.size - 1)


def z_mean(x, exact_mean):
    x = np.asarray(x, np.float64)
    return (x.mean() - exact_mean) / (x.std(ddof=1) / np.sqrt(x.size))


# Shared small model: K = 4 with a zero-probability token, integer rewards.
PROBS = np.array([0.1, 0.0, 0.6, 0.3])
INT_REWARDS = np.array([0, 5, 1, 2])


def small(length, dtype=np.float32):
    lm = MemorylessLM.from_probs(PROBS.astype(dtype), length=length)
    return lm, LinearReward(INT_REWARDS.astype(dtype))


# ----------------------------------------------------------------------- alias table


@pytest.mark.parametrize(
    "probs",
    [
        [0.5, 0.5],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.1, 0.0, 0.6, 0.3],
        [1e-12, 0.25, 0.25, 0.5 - 1e-12, 0.0],
        list(np.random.default_rng(0).dirichlet(np.full(37, 0.3))),
    ],
)
def test_alias_table_represents_probs(probs, x64):
    """The table's implied token law equals p to within 2^-32 per column."""
    p = np.asarray(probs, np.float64)
    p = p / p.sum()
    table = sample._alias_table(jnp.asarray(p))
    threshold = np.asarray(table.threshold, np.float64)
    alias = np.asarray(table.alias)
    columns = threshold.size
    capacity = 2.0**table.shift
    assert columns * capacity == 2.0**32
    implied = np.zeros(columns)
    np.add.at(implied, np.arange(columns), threshold / capacity / columns)
    np.add.at(implied, alias, (1 - threshold / capacity) / columns)
    np.testing.assert_allclose(implied[: p.size], p, rtol=0, atol=columns * 2.0**-32)
    assert np.all(implied[p.size :] == 0)
    assert np.all(implied[: p.size][p == 0] == 0)


def test_alias_tables_of_rows_are_the_single_tables(x64):
    """A ``(..., K)`` input builds one table per row in lockstep: each equals, bit
    for bit, the table of that row alone (rows with zeros, a deterministic row, a
    uniform row), so the law check above covers every row."""
    rng = np.random.default_rng(8)
    rows = rng.dirichlet(np.full(37, 0.3), size=(2, 3))
    rows[0, 1, ::4] = 0.0
    rows[1, 0] = np.eye(37)[5]
    rows[1, 2] = 1 / 37
    rows /= rows.sum(-1, keepdims=True)
    batch = sample._alias_table(jnp.asarray(rows))
    assert batch.threshold.shape == batch.alias.shape == (2, 3, 64)
    for i in np.ndindex(2, 3):
        one = sample._alias_table(jnp.asarray(rows[i]))
        assert one.shift == batch.shift
        np.testing.assert_array_equal(batch.threshold[i], one.threshold)
        np.testing.assert_array_equal(batch.alias[i], one.alias)


# ----------------------------------------------------------------------- tokens


def test_tokens_chi_square_marginal_and_pairs(key):
    lm, _ = small(length=3)
    toks = np.asarray(sample.tokens(key, lm, 20_000))
    assert toks.shape == (20_000, 3) and toks.dtype == np.int32
    assert chi2_pvalue(toks.ravel(), np.arange(4), PROBS) > P_MIN
    pairs = toks[:, 0] * 4 + toks[:, 1]
    assert chi2_pvalue(pairs, np.arange(16), np.outer(PROBS, PROBS).ravel()) > P_MIN


def test_rewards_are_the_rewards_of_tokens(key):
    lm, reward = small(length=6)
    r = sample.rewards(key, lm, reward, 500)
    t = sample.tokens(jax.random.clone(key), lm, 500)
    np.testing.assert_array_equal(np.asarray(r), INT_REWARDS[np.asarray(t)].sum(-1))


@pytest.mark.parametrize("method", ["token", "law"])
def test_rewards_mean_variance_and_law(method, key, x64):
    n = 7
    lm, reward = small(length=n, dtype=np.float64)
    r = np.asarray(sample.rewards(key, lm, reward, 20_000, level=method))
    assert r.dtype == np.float64
    support, pmf = sum_law(PROBS, INT_REWARDS, n)
    mean = support @ pmf
    var = ((support - mean) ** 2) @ pmf
    mu4 = ((support - mean) ** 4) @ pmf
    assert abs(z_mean(r, mean)) < Z_MAX
    z_var = (r.var(ddof=1) - var) / np.sqrt((mu4 - var**2) / r.size)
    assert abs(z_var) < Z_MAX
    assert chi2_pvalue(r, support, pmf) > P_MIN


def test_tilted_matches_tilted_law_and_vmaps_over_lam(key, x64):
    n, lam = 5, 0.7
    lm, reward = small(length=n, dtype=np.float64)
    tilted_p = PROBS * np.exp(lam * INT_REWARDS)
    tilted_p /= tilted_p.sum()
    support, pmf = sum_law(tilted_p, INT_REWARDS, n)
    key_token, key_law = jax.random.split(key)
    r_token = sample.tilted(key_token, lm, reward, lam, 20_000)
    r_law = sample.tilted(key_law, lm, reward, lam, 20_000, level="law")
    assert chi2_pvalue(r_token, support, pmf) > P_MIN
    assert chi2_pvalue(r_law, support, pmf) > P_MIN
    lams = jnp.array([0.0, 0.7, 2.0])
    batched = jax.vmap(lambda l: sample.tilted(key_token, lm, reward, l, 64))(lams)
    for i, l in enumerate([0.0, 0.7, 2.0]):
        np.testing.assert_array_equal(
            batched[i], sample.tilted(key_token, lm, reward, l, 64)
        )


# ----------------------------------------------------------------------- best-of-N


@pytest.mark.parametrize("method", ["token", "law"])
def test_best_of_n_class_law(method, key):
    n, num_candidates = 6, 9
    lm, reward = small(length=n)
    r = sample.best_of_n(key, lm, reward, num_candidates, 20_000, level=method).reward
    support, pmf = sum_law(PROBS, INT_REWARDS, n)
    assert chi2_pvalue(r, support, bon_class_law(pmf, num_candidates)) > P_MIN


def test_best_of_n_uniform_ties_at_sequence_level(key):
    """Every candidate ties with many others: R takes 3 values, N = 16.

    Tokens 1 and 2 share a reward but not a probability, so uniform
    tie-breaking (pi(y) = P(y) b_c / q_c) differs from any tie-break by identity.
    """
    probs = np.array([0.5, 0.2, 0.3])
    int_rewards = np.array([0, 1, 1])
    n, num_candidates = 2, 16
    lm = MemorylessLM.from_probs(probs.astype(np.float32), length=n)
    reward = LinearReward(int_rewards.astype(np.float32))
    res = sample.best_of_n(key, lm, reward, num_candidates, 20_000, return_tokens=True)
    toks = np.asarray(res.tokens)
    np.testing.assert_array_equal(res.reward, int_rewards[toks].sum(-1))
    seqs = list(itertools.product(range(3), repeat=n))
    seq_prob = np.array([probs[list(s)].prod() for s in seqs])
    seq_reward = np.array([int_rewards[list(s)].sum() for s in seqs])
    q = np.array([seq_prob[seq_reward == c].sum() for c in range(3)])
    b = bon_class_law(q, num_candidates)
    expected = seq_prob * b[seq_reward] / q[seq_reward]
    observed = toks[:, 0] * 3 + toks[:, 1]
    assert chi2_pvalue(observed, np.arange(9), expected) > P_MIN
    # index is the first argmax: candidate `index` has the selected reward.
    assert np.all((np.asarray(res.index) >= 0) & (np.asarray(res.index) < 16))


def test_best_of_n_law_level_huge_n(key, x64):
    """N = 10^12 at n = 60: only the top few classes of a Binomial(60, 1/2)."""
    n, num_candidates = 60, 10**12
    lm = MemorylessLM.bernoulli(0.5, length=n)
    reward = LinearReward(np.array([0.0, 1.0]))
    r = sample.best_of_n(key, lm, reward, num_candidates, 20_000, level="law").reward
    support = np.arange(n + 1)
    pmf = scipy.stats.binom.pmf(support, n, 0.5)
    # F^N with relative accuracy near 1: log F = log1p(-sf).
    sf = scipy.stats.binom.sf(support, n, 0.5)
    log_cdf = np.where(
        sf < 0.5,
        np.log1p(-np.minimum(sf, 0.5)),
        scipy.stats.binom.logcdf(support, n, 0.5),
    )
    cdf_n = np.exp(num_candidates * log_cdf)
    expected = np.diff(np.concatenate([[0.0], cdf_n]))
    assert pmf[-1] * num_candidates < 1e-3  # the top class is not certain
    assert chi2_pvalue(r, support, expected) > P_MIN


def test_best_of_n_from_law_validates_and_samples(key):
    values = np.array([-1.0, 0.5, 2.0])
    probs = np.array([0.2, 0.5, 0.3])
    r = sample.best_of_n_from_law(key, values, np.log(probs), 3, 20_000)
    assert chi2_pvalue(r, values, bon_class_law(probs, 3)) > P_MIN
    r1 = sample.rewards_from_law(jax.random.clone(key), values, np.log(probs), 100)
    assert np.all(np.isin(np.asarray(r1), values))
    with pytest.raises(ValueError, match="ascending"):
        sample.best_of_n_from_law(key, values[::-1], np.log(probs), 3, 10)
    with pytest.raises(ValueError, match="same shape"):
        sample.best_of_n_from_law(key, values, np.log(probs[:2]), 3, 10)


def test_curve_is_running_max_and_matches_best_of_n(key):
    n, num_candidates = 6, 12
    lm, reward = small(length=n)
    curve = np.asarray(sample.best_of_n_curve(key, lm, reward, num_candidates, 8_000))
    assert curve.shape == (8_000, num_candidates)
    assert np.all(np.diff(curve, axis=1) >= 0)
    bon = sample.best_of_n(jax.random.clone(key), lm, reward, num_candidates, 8_000)
    np.testing.assert_array_equal(curve[:, -1], bon.reward)
    support, pmf = sum_law(PROBS, INT_REWARDS, n)
    for m in (1, 4, 12):
        exact_mean = support @ bon_class_law(pmf, m)
        assert abs(z_mean(curve[:, m - 1], exact_mean)) < Z_MAX
    law_curve = sample.best_of_n_curve(
        jax.random.clone(key), lm, reward, num_candidates, 8_000, level="law"
    )
    assert chi2_pvalue(law_curve[:, 3], support, bon_class_law(pmf, 4)) > P_MIN


def soft_class_law(values, q, num_candidates, temperature):
    """Exact soft-BoN class law by enumerating all class tuples."""
    weights = np.exp(values / temperature)
    out = np.zeros(values.size)
    for tup in itertools.product(range(values.size), repeat=num_candidates):
        prob = np.prod(q[list(tup)])
        w = weights[list(tup)]
        np.add.at(out, list(tup), prob * w / w.sum())
    return out


@pytest.mark.parametrize("method", ["token", "law"])
def test_soft_best_of_n_exact_law(method, key):
    n, num_candidates, temperature = 3, 4, 0.8
    lm, reward = small(length=n)
    r = sample.soft_best_of_n(
        key, lm, reward, num_candidates, temperature, 20_000, level=method
    ).reward
    support, pmf = sum_law(PROBS, INT_REWARDS, n)
    keep = pmf > 0
    expected = np.zeros_like(pmf)
    expected[keep] = soft_class_law(
        support[keep].astype(float), pmf[keep], num_candidates, temperature
    )
    assert chi2_pvalue(r, support, expected) > P_MIN


def test_soft_best_of_n_limits(key):
    lm, reward = small(length=5)
    cold = sample.soft_best_of_n(key, lm, reward, 8, 1e-6, 300)
    hard = sample.best_of_n(
        jax.random.split(jax.random.clone(key))[0], lm, reward, 8, 300
    )
    # Same candidates; among tied maxima the Gumbels pick uniformly, not first.
    np.testing.assert_array_equal(cold.reward, hard.reward)
    hot = sample.soft_best_of_n(jax.random.clone(key), lm, reward, 8, jnp.inf, 20_000)
    support, pmf = sum_law(PROBS, INT_REWARDS, 5)
    assert chi2_pvalue(hot.reward, support, pmf) > P_MIN


# ----------------------------------------------------------------------- rejection


@pytest.mark.parametrize("method", ["token", "law"])
def test_rejection_conditional_law_and_geometric_count(method, key):
    n, threshold = 5, 8.0
    lm, reward = small(length=n)
    res = sample.rejection(key, lm, reward, threshold, 10_000, level=method)
    assert bool(np.all(res.accepted))
    support, pmf = sum_law(PROBS, INT_REWARDS, n)
    accept = pmf[support >= threshold].sum()
    conditional = np.where(support >= threshold, pmf, 0.0) / accept
    assert chi2_pvalue(res.reward, support, conditional) > P_MIN
    count = np.asarray(res.num_proposals, np.float64)
    z = (count.mean() - 1 / accept) / np.sqrt((1 - accept) / accept**2 / count.size)
    assert abs(z) < Z_MAX


@pytest.mark.parametrize("method", ["token", "law"])
def test_rejection_never_accepts_above_max(method, key):
    lm, reward = small(length=3)
    res = sample.rejection(key, lm, reward, 100.0, 4, max_proposals=50, level=method)
    assert not np.any(res.accepted)
    assert np.all(np.isnan(res.reward))
    np.testing.assert_array_equal(res.num_proposals, 50)


# ----------------------------------------------------------------------- determinism


def test_determinism_across_chunk_and_batch_sizes(key):
    lm = MemorylessLM.dirichlet(jax.random.key(1), 7, length=37)
    reward = LinearReward(np.random.default_rng(0).normal(size=7).astype(np.float32))
    configs = [(7, 3), (50, 30)]
    for fn in (
        lambda c, b: sample.best_of_n(
            jax.random.clone(key), lm, reward, 50, 30, chunk_size=c, batch_size=b
        ),
        lambda c, b: sample.soft_best_of_n(
            jax.random.clone(key), lm, reward, 50, 0.3, 30, chunk_size=c, batch_size=b
        ),
        lambda c, b: sample.rejection(
            jax.random.clone(key), lm, reward, 3.0, 30, chunk_size=c, batch_size=b
        ),
        lambda c, b: sample.rewards(
            jax.random.clone(key), lm, reward, 30, batch_size=b
        ),
    ):
        ref = fn(*configs[0])
        for c, b in configs[1:]:
            chex.assert_trees_all_equal(fn(c, b), ref)
    full = sample.rewards(jax.random.clone(key), lm, reward, 30)
    part = sample.rewards(jax.random.clone(key), lm, reward, 12, first_index=18)
    np.testing.assert_array_equal(part, full[18:])


def test_results_do_not_depend_on_threefry_partitionable_flag():
    # The samplers pin the classic threefry layout; the user's global flag must
    # not change a single bit.  (The flag does change jax.random's own bits.)
    lm = MemorylessLM.dirichlet(jax.random.key(1), 5, length=9)
    reward = LinearReward(np.arange(5, dtype=np.float32))
    outs = []
    for flag in (True, False):
        with jax.threefry_partitionable(flag):
            key = jax.random.key(3)
            outs.append(
                (
                    jax.random.bits(key, (4,)),
                    sample.best_of_n(key, lm, reward, 6, 8, return_tokens=True),
                    sample.rewards(jax.random.clone(key), lm, reward, 8, level="law"),
                )
            )
    assert not np.array_equal(outs[0][0], outs[1][0])
    chex.assert_trees_all_equal(outs[0][1:], outs[1][1:])


_DEVICE_SCRIPT = textwrap.dedent(
    """
    import os, resource, sys
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=4")
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxalign
    from jaxalign import sample
    assert jax.device_count() == 4
    lm = jaxalign.MemorylessLM.dirichlet(jax.random.key(1), 7, length=37)
    reward = jaxalign.LinearReward(
        np.random.default_rng(0).normal(size=7).astype(np.float32))
    key = jax.random.key(5)
    mesh = Mesh(np.array(jax.devices()), ("d",))

    sharded = NamedSharding(mesh, P("d"))

    def run(key):
        bon = sample.best_of_n(key, lm, reward, 20, 32)
        return bon.reward, bon.index, sample.rewards(key, lm, reward, 32)

    out = jax.jit(run, out_shardings=(sharded, sharded, sharded))(key)
    assert len(out[0].sharding.device_set) == 4
    np.savez(sys.argv[1], *[np.asarray(o) for o in out])

    # Memory: best-of-N with N = 10^6, n = 4, 16 samples (256 MB if materialised).
    lm = jaxalign.MemorylessLM.bernoulli(0.5, length=4)
    reward = jaxalign.LinearReward(np.array([0.0, 1.0], np.float32))
    pkey = jax.random.key(0, impl="philox4x32")
    sample.best_of_n(pkey, lm, reward, 10, 16).reward.block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = sample.best_of_n(pkey, lm, reward, 10**6, 16).reward.block_until_ready()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert np.all(np.asarray(r) == 4.0)
    print("rss_growth", (after - before) * 1024)
    """
)


def test_four_devices_and_memory_in_subprocess(tmp_path):
    """Same numbers on 1 and 4 simulated devices; N = 10^6 in bounded memory."""
    path = tmp_path / "out.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT, str(path)],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    growth = int(out.stdout.split("rss_growth")[-1])
    materialised = 16 * 10**6 * 4 * 4
    assert growth < materialised / 8, (growth, materialised)
    four = np.load(path)
    lm = MemorylessLM.dirichlet(jax.random.key(1), 7, length=37)
    reward = LinearReward(np.random.default_rng(0).normal(size=7).astype(np.float32))
    key = jax.random.key(5)
    bon = sample.best_of_n(key, lm, reward, 20, 32)
    np.testing.assert_array_equal(four["arr_0"], bon.reward)
    np.testing.assert_array_equal(four["arr_1"], bon.index)
    np.testing.assert_array_equal(four["arr_2"], sample.rewards(key, lm, reward, 32))


# ----------------------------------------------------------------------- compilation


def test_one_compilation_per_shape(key):
    reward = LinearReward(np.arange(5, dtype=np.float32))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key, log_probs, lam):
        lm = MemorylessLM.tree_unflatten(4, (log_probs,))
        bon = sample.best_of_n(key, lm, reward, 8, 16).reward
        return bon, sample.tilted(key, lm, reward, lam, 16)

    for i in range(3):
        probs = np.random.default_rng(i).dirichlet(np.ones(5)).astype(np.float32)
        run(jax.random.fold_in(key, i), jnp.log(probs), float(i))
    # The public entry points cache their compiled core per shape too.
    before = sample._best_of_n_impl._cache_size()
    for i in range(3):
        lm = MemorylessLM.dirichlet(jax.random.key(i), 6, length=3)
        sample.best_of_n(
            jax.random.fold_in(key, 10 + i),
            lm,
            LinearReward(np.ones(6, np.float32)),
            8,
            16,
        )
    assert sample._best_of_n_impl._cache_size() - before <= 1


# ----------------------------------------------------------------------- dtypes, errors


def test_dtype_follows_reward(key, x64):
    lm64 = MemorylessLM.from_probs(PROBS, length=3)
    r64 = LinearReward(INT_REWARDS.astype(np.float64))
    assert sample.rewards(key, lm64, r64, 4).dtype == jnp.float64
    assert sample.best_of_n(key, lm64, r64, 3, 4).reward.dtype == jnp.float64
    lm32, r32 = small(length=3)
    assert sample.rewards(key, lm32, r32, 4).dtype == jnp.float32


def test_bad_inputs(key):
    lm, reward = small(length=3)
    cases = [
        (lambda: sample.best_of_n(key, lm, reward, 0, 4), "num_candidates"),
        (lambda: sample.best_of_n(key, lm, reward, 2, 0), "num_samples"),
        (lambda: sample.rewards(key, lm, reward, 0), "num_samples"),
        (lambda: sample.rewards(0, lm, reward, 4), "typed PRNG key"),
        (lambda: sample.rewards(jax.random.PRNGKey(0), lm, reward, 4), "typed PRNG"),
        (lambda: sample.tokens(jax.random.PRNGKey(0), lm, 4), "typed PRNG key"),
        (lambda: sample.tilted(key, lm, reward, float("nan"), 4), "lam"),
        (lambda: sample.tilted(key, lm, reward, -0.5, 4), "lam"),
        (lambda: sample.rewards(key, lm, reward, 4, level="exact"), "level"),
        (lambda: sample.best_of_n(key, lm, reward, 2, 4, chunk_size=0), "chunk_size"),
        (lambda: sample.rewards(key, lm, reward, 4, batch_size=-1), "batch_size"),
        (lambda: sample.soft_best_of_n(key, lm, reward, 2, 0.0, 4), "temperature"),
        (lambda: sample.soft_best_of_n(key, lm, reward, 2, -1.0, 4), "temperature"),
        (lambda: sample.soft_best_of_n(key, lm, reward, 2, np.nan, 4), "temperature"),
        (lambda: sample.rejection(key, lm, reward, np.nan, 4), "threshold"),
        (
            lambda: sample.rejection(key, lm, reward, 1.0, 4, max_proposals=0),
            "max_proposals",
        ),
        (
            lambda: sample.best_of_n(
                key, lm, reward, 2, 4, level="law", return_tokens=True
            ),
            "return_tokens",
        ),
        (lambda: sample.rewards(key, lm, LinearReward([0.0, 1.0]), 4), "vocabulary"),
        (lambda: sample.rewards(key, lm, reward, 4, first_index=-1), "first_index"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_public_api_documented():
    for name in sample.__all__:
        assert getattr(sample, name).__doc__, name
    assert jaxalign.MemorylessLM  # the package imports cleanly


def test_best_of_n_from_law_accepts_log_n(key):
    values, log_pmf = jnp.array([0.0, 1.0, 2.0]), jnp.log(jnp.array([0.5, 0.3, 0.2]))
    by_n = sample.best_of_n_from_law(key, values, log_pmf, 4, 64)
    by_log_n = sample.best_of_n_from_law(
        jax.random.clone(key), values, log_pmf, None, 64,
        log_num_candidates=math.log(4),
    )
    np.testing.assert_array_equal(by_n, by_log_n)
    for n, log_n in ((4, 1.0), (None, None)):
        with pytest.raises(ValueError, match="exactly one"):
            sample.best_of_n_from_law(
                jax.random.clone(key), values, log_pmf, n, 8, log_num_candidates=log_n
            )
    with pytest.raises(ValueError, match="log_num_candidates"):
        sample.best_of_n_from_law(jax.random.clone(key), values, log_pmf, None, 8,
                                  log_num_candidates=-1.0)


def test_method_keyword_still_works_with_a_deprecation_warning(key):
    lm = MemorylessLM.from_probs([0.5, 0.5], length=4)
    reward = LinearReward([0.0, 1.0])
    with pytest.warns(DeprecationWarning, match="level="):
        old = sample.rewards(jax.random.clone(key), lm, reward, 8, method="law")
    new = sample.rewards(jax.random.clone(key), lm, reward, 8, level="law")
    np.testing.assert_array_equal(np.asarray(old), np.asarray(new))


def test_draws_only_baseline_draws_the_samplers_words():
    """The throughput baseline (`jaxalign bench`, bench_sampling) draws the very
    words best-of-N draws: per sample i and candidate j, the n words of
    fold_in(fold_in(key, i), j) in the classic threefry layout, rebuilt here
    with the raw PRNG; its output is the max over j of words[0] ^ words[-1]."""
    from jaxalign._types import classic_threefry

    lm = MemorylessLM.uniform(4, length=5)
    reward = LinearReward(jnp.arange(4.0))
    out = sample._best_of_n_draws_only(jax.random.key(11), lm, reward, 6, 3)

    @classic_threefry
    def expected():
        rows = []
        for i in range(3):
            key_i = jax.random.fold_in(jax.random.key(11), i)
            xor = [
                (lambda w: w[0] ^ w[-1])(
                    jax.random.bits(jax.random.fold_in(key_i, j), (5,), jnp.uint32))
                for j in range(6)
            ]
            rows.append(max(int(x) for x in xor))
        return rows

    np.testing.assert_array_equal(np.asarray(out), np.float32(expected()))


def test_accelerator_step_sizes_draw_the_same_numbers(monkeypatch):
    """GPUs and TPUs take 64x larger scan steps (more samples and candidates per
    step); the draws are the same as with the CPU's steps."""
    from jaxalign.sample import _kernels

    lm = MemorylessLM.from_probs([0.5, 0.3, 0.2], length=64)
    reward = LinearReward([0.0, 1.0, 2.0])
    cpu = sample.best_of_n(jax.random.key(5), lm, reward, 300, 2000)
    monkeypatch.setattr(_kernels, "_step_scale", lambda: 64)
    assert _kernels._chunk(300, 64, None) == 300 and _kernels._sizes(2000, 64, None) > 1
    big = sample.best_of_n(jax.random.key(5), lm, reward, 300, 2000)
    np.testing.assert_array_equal(cpu.reward, big.reward)
    np.testing.assert_array_equal(cpu.index, big.index)


# ------------------------------------------------------------------ the work budget
def _three_tokens(length):
    return (MemorylessLM.from_probs([0.5, 0.3, 0.2], length=length),
            LinearReward([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("sampler", [sample.best_of_n, sample.best_of_n_curve])
def test_huge_token_level_work_is_refused_up_front(key, sampler):
    # best_of_n(key, lm, reward, 10**9, 2) ran silently for minutes before.
    lm, reward = _three_tokens(4)
    with pytest.raises(ValueError, match=r"about 8e\+09 tokens.*s at .*level='law'"):
        sampler(key, lm, reward, 10**9, 2)


def test_soft_best_of_n_shares_the_budget(key):
    lm, reward = _three_tokens(4)
    with pytest.raises(ValueError, match="token-equivalents"):
        sample.soft_best_of_n(key, lm, reward, 10**9, 1.0, 2)


def test_token_budget_opts_in_and_reports_the_estimate(key, monkeypatch, capsys):
    from jaxalign.sample import _selection

    lm, reward = _three_tokens(4)
    with sample.token_budget(100), pytest.raises(ValueError, match="budget of 100"):
        sample.best_of_n(key, lm, reward, 64, 2)
    monkeypatch.setattr(_selection, "_TOKEN_BUDGET", 100)  # 64 x 2 x (4 + 24) > 100
    with sample.token_budget(None):
        r = sample.best_of_n(key, lm, reward, 64, 2).reward
    assert r.shape == (2,)
    assert "jaxalign: best_of_n(num_candidates=64, num_samples=2)" in (
        capsys.readouterr().err)
    with pytest.raises(ValueError, match="max_tokens must be > 0"):
        with sample.token_budget(0):
            pass


@pytest.mark.parametrize("sampler", [
    lambda *a, **k: sample.best_of_n(*a, **k, return_tokens=True),
    sample.best_of_n_curve,
    lambda key, lm, reward, n, m: sample.soft_best_of_n(key, lm, reward, n, 0.5, m),
])
def test_opted_in_work_runs_in_blocks_with_progress(key, monkeypatch, capsys, sampler):
    from jaxalign.sample import _selection

    lm, reward = _three_tokens(4)
    whole = sampler(jax.random.clone(key), lm, reward, 16, 5)
    # 16 x (4 + 24) x 5 = 2240 > 1000 and 1000 // 8 // 448 = 0: blocks of 1 sample.
    monkeypatch.setattr(_selection, "_TOKEN_BUDGET", 1000)
    with sample.token_budget(None):
        blocks = sampler(key, lm, reward, 16, 5)
    assert "5/5" in capsys.readouterr().err  # the progress bar
    jax.tree.map(np.testing.assert_array_equal, blocks, whole)


def test_rejection_plan_uses_the_same_budget(key, x64):
    from jaxalign import exact, policies

    lm = MemorylessLM.bernoulli(0.01, length=64)
    reward = LinearReward([0.0, 1.0])
    law = exact.policy_law(lm, reward, policies.Rejection(60.0))
    with pytest.raises(ValueError, match="token-equivalents.*level='law'"):
        sample._reweighting(law, 1000, 64)
    with sample.token_budget(None):
        plan = sample._reweighting(law, 1000, 64)
    assert plan.log_accept.max() == 0.0


def test_a_traced_num_candidates_draws_what_a_static_one_draws():
    # A sweep vmaps one program over points with different N (a while_loop over
    # chunks); each point's draws equal the static-N call's, index included, across
    # the chunk boundary (256 candidates per chunk at n = 16).
    lm = MemorylessLM.from_probs([0.4, 0.3, 0.2, 0.1], length=16)
    reward = LinearReward([0.0, 1.0, 2.0, 3.0])
    sizes = [2, 300, 1000]
    data = jax.random.key_data(jax.random.split(jax.random.key(11), len(sizes)))

    def traced(d, n):
        k = jax.random.wrap_key_data(d)
        return (sample.best_of_n(k, lm, reward, n, 8),
                sample.soft_best_of_n(jax.random.clone(k), lm, reward, n, 0.7, 8))

    bon, soft = jax.jit(jax.vmap(traced))(data, jnp.asarray(sizes, jnp.uint32))
    for i, n in enumerate(sizes):
        want = sample.best_of_n(jax.random.wrap_key_data(data[i]), lm, reward, n, 8)
        want_soft = sample.soft_best_of_n(jax.random.wrap_key_data(data[i]), lm,
                                          reward, n, 0.7, 8)
        for got, ref in ((bon, want), (soft, want_soft)):
            np.testing.assert_array_equal(got.reward[i], ref.reward)
            np.testing.assert_array_equal(got.index[i], ref.index)
    assert int(np.max(np.asarray(bon.index))) >= 256  # the boundary was crossed
