"""The count level (``level="counts"``): token counts ``c ~ Multinomial(n, p)``
by conditional binomials, against enumeration, closed forms and exact laws.

Monte Carlo checks use z-scores with the estimator's own standard error
(|z| < 5) and chi-square goodness of fit (p-value > 1e-6), with fixed keys.
"""

import itertools
import math
import zlib

import jax
import numpy as np
import pytest
import scipy.stats

import jaxalign
from jaxalign import exact, policies, sample
from jaxalign.sample._counts import _count_stage, _split_probs

P_MIN = 1e-6
Z_MAX = 5.0
PROBS = [0.2, 0.0, 0.5, 0.3]  # a zero-probability token (with a large reward)
REWARDS = [0.0, 5.0, 1.0, 2.0]


@pytest.fixture
def key(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    return jax.random.key(seed, impl="philox4x32")


def model(n=12):
    return jaxalign.MemorylessLM.from_probs(PROBS, length=n), jaxalign.LinearReward(
        REWARDS)


def z_mean(x, mean):
    x = np.asarray(x, np.float64)
    return (x.mean() - mean) / (x.std(ddof=1) / math.sqrt(x.size))


def z_prob(hits, prob):
    hits = np.asarray(hits, np.float64)
    return (hits.mean() - prob) / math.sqrt(prob * (1 - prob) / hits.size)


def law_median(law):
    values = np.asarray(law.values, np.float64)
    cdf = np.cumsum(np.exp(np.asarray(law.log_pmf, np.float64)))
    c = int(np.searchsorted(cdf, 0.5))
    return values[c], cdf[c]


def draw_counts(key, lm, reward, num):
    stage = _count_stage(lm, reward)
    return np.asarray(jax.jit(jax.vmap(lambda i: stage.draw(jax.random.fold_in(
        key, i))))(np.arange(num, dtype=np.uint32)))


def test_counts_match_multinomial_enumeration(key):
    n, num = 5, 20_000
    lm, r = model(n)
    counts = draw_counts(key, lm, r, num)
    assert counts.dtype == np.int32 and np.all(counts.sum(1) == n)
    assert np.all(counts[:, 1] == 0)  # the zero-probability token
    cells = [c for c in itertools.product(range(n + 1), repeat=4) if sum(c) == n
             and c[1] == 0]
    p = np.asarray(PROBS)
    expected = np.array([math.factorial(n) / np.prod([math.factorial(k) for k in c])
                         * np.prod(p ** np.asarray(c)) for c in cells])
    assert math.isclose(expected.sum(), 1.0)
    index = {c: i for i, c in enumerate(cells)}
    observed = np.bincount([index[tuple(c)] for c in counts], minlength=len(cells))
    _, pvalue = scipy.stats.chisquare(observed, expected * num)
    assert pvalue > P_MIN


def test_counts_exact_at_degenerate_probabilities(key):
    # All mass on one token, and zero-probability tokens before and after it.
    lm = jaxalign.MemorylessLM.from_probs([0.0, 1.0, 0.0], length=1000)
    r = jaxalign.LinearReward([1.0, 2.0, 3.0])
    counts = draw_counts(key, lm, r, 50)
    assert np.all(counts == [0, 1000, 0])
    x = sample.rewards(key, lm, r, 50, level="counts")
    assert np.all(np.asarray(x) == 2000.0)


def test_rewards_counts_against_exact_law(key):
    lm, r = model(30)
    x = np.asarray(sample.rewards(key, lm, r, 4000, level="counts"))
    law = exact.reward_law(lm, r)
    mean = float(np.sum(np.exp(law.log_pmf) * np.asarray(law.values)))
    assert abs(z_mean(x, mean)) < Z_MAX
    median, prob = law_median(law)
    assert abs(z_prob(x <= median, prob)) < Z_MAX
    # Never a reward of the zero-probability token: R is in {0, 1, 2}-sums.
    assert np.all(x == np.round(x)) and x.max() <= 60


def test_rewards_counts_non_lattice_moments(key):
    probs = np.array([0.1, 0.25, 0.3, 0.35])
    rewards = np.array([0.0, math.sqrt(2), math.pi, -math.e])
    n, num = 200, 4000
    lm = jaxalign.MemorylessLM.from_probs(probs, length=n)
    r = jaxalign.LinearReward(rewards)
    x = np.asarray(sample.rewards(key, lm, r, num, level="counts"), np.float64)
    mean = n * probs @ rewards
    var = n * (probs @ rewards**2 - (probs @ rewards) ** 2)
    assert abs(z_mean(x, mean)) < Z_MAX
    d2 = (x - x.mean()) ** 2
    assert abs(z_mean(d2, var)) < Z_MAX


def test_counts_long_sequences(key):
    # n = 65536, K = 16: O(K) per sequence; mean and variance against closed forms.
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(16))
    rewards = rng.normal(size=16)
    n = 1 << 16
    lm = jaxalign.MemorylessLM.from_probs(probs, length=n)
    r = jaxalign.LinearReward(rewards)
    x = np.asarray(sample.rewards(key, lm, r, 2000, level="counts"), np.float64)
    p, v = np.asarray(np.exp(lm.log_probs), np.float64), np.asarray(
        r.token_rewards, np.float64)
    mean, var = n * p @ v, n * (p @ v**2 - (p @ v) ** 2)
    assert abs(z_mean(x, mean)) < Z_MAX
    assert abs(z_mean((x - x.mean()) ** 2, var)) < Z_MAX


def test_best_of_n_counts_against_exact(key):
    lm, r = model(12)
    num_candidates = 8
    x = np.asarray(sample.best_of_n(key, lm, r, num_candidates, 3000,
                                    level="counts").reward)
    law = exact.policy_law(lm, r, policies.BestOfN(num_candidates))
    assert abs(z_mean(x, float(law.expected_reward))) < Z_MAX
    median, prob = law_median(law)
    assert abs(z_prob(x <= median, prob)) < Z_MAX


@pytest.mark.parametrize("policy", [
    policies.Base(), policies.Tilted(0.3), policies.BestOfN(4),
    policies.SoftBestOfN(4, 1.0), policies.Rejection(14.0),
    policies.BestOfPoisson(3.0)], ids=lambda p: type(p).__name__)
def test_policy_counts_against_exact(key, policy):
    lm, r = model(12)
    x = np.asarray(sample.policy(key, lm, r, policy, 2000, level="counts"))
    law = exact.policy_law(lm, r, policy)
    assert abs(z_mean(x, float(law.expected_reward))) < Z_MAX
    median, prob = law_median(law)
    if 0 < prob < 1:
        assert abs(z_prob(x <= median, prob)) < Z_MAX


def test_selection_counts_against_exact(key):
    lm, r = model(12)
    soft = sample.soft_best_of_n(key, lm, r, 4, 1.0, 2000, level="counts").reward
    law = exact.policy_law(lm, r, policies.SoftBestOfN(4, 1.0))
    assert abs(z_mean(soft, float(law.expected_reward))) < Z_MAX
    rej = sample.rejection(key, lm, r, 14.0, 2000, level="counts")
    assert bool(rej.accepted.all())
    law = exact.policy_law(lm, r, policies.Rejection(14.0))
    assert abs(z_mean(rej.reward, float(law.expected_reward))) < Z_MAX
    tilt = sample.tilted(key, lm, r, 0.3, 2000, level="counts")
    law = exact.policy_law(lm, r, policies.Tilted(0.3))
    assert abs(z_mean(tilt, float(law.expected_reward))) < Z_MAX


def test_counts_deterministic_across_batch_and_chunk(key):
    lm, r = model(12)
    a = sample.rewards(key, lm, r, 9, level="counts")
    b = sample.rewards(key, lm, r, 9, level="counts", batch_size=2)
    c = sample.rewards(key, lm, r, 5, level="counts", first_index=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[4:], c)
    x = sample.best_of_n(key, lm, r, 7, 5, level="counts")
    y = sample.best_of_n(key, lm, r, 7, 5, level="counts", chunk_size=3,
                         batch_size=2)
    np.testing.assert_array_equal(x.reward, y.reward)
    np.testing.assert_array_equal(x.index, y.index)
    curve = sample.best_of_n_curve(key, lm, r, 7, 5, level="counts", chunk_size=2)
    np.testing.assert_array_equal(curve[:, -1], x.reward)
    # The policy route is the sampler's own: the same numbers.
    z = sample.policy(key, lm, r, policies.BestOfN(7), 5, level="counts")
    np.testing.assert_array_equal(z, x.reward)


def test_counts_errors(key):
    lm, r = model(12)
    with pytest.raises(ValueError, match="return_tokens=True needs level='token', "
                       "got 'counts'"):
        sample.best_of_n(key, lm, r, 4, 2, level="counts", return_tokens=True)
    with pytest.raises(ValueError, match="return_tokens"):
        sample.soft_best_of_n(key, lm, r, 4, 1.0, 2, level="counts",
                              return_tokens=True)
    with pytest.raises(ValueError, match="return_tokens"):
        sample.tilted(key, lm, r, 0.5, 2, level="counts", return_tokens=True)
    with pytest.raises(ValueError, match="return_tokens"):
        sample.policy(key, lm, r, policies.Base(), 2, level="counts",
                      return_tokens=True)
    with pytest.raises(ValueError, match=r"level must be one of \('token', 'law', "
                       r"'counts'\), got 'count'"):
        sample.rewards(key, lm, r, 2, level="count")
    chain = jaxalign.MarkovLM.from_probs([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]],
                                         length=4)
    for call in (lambda: sample.best_of_n(key, chain, r.__class__([0.0, 1.0]), 4, 2,
                                          level="counts"),
                 lambda: sample.policy(key, chain, r.__class__([0.0, 1.0]),
                                       policies.BestOfN(4), 2, level="counts")):
        with pytest.raises(ValueError, match="level='counts' needs a memoryless"):
            call()


def pooled_chisquare(observed, expected_probs, num):
    """Chi-square p-value of cell counts against exact cell probabilities, the cells
    expected fewer than 5 times pooled into one."""
    expected = np.asarray(expected_probs, np.float64) * num
    low = expected < 5
    obs = np.append(observed[~low], observed[low].sum())
    exp = np.append(expected[~low], expected[low].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def multinomial_pmf(cell, probs):
    n = sum(cell)
    return math.factorial(n) / np.prod([math.factorial(k) for k in cell]) * np.prod(
        np.asarray(probs, np.float64) ** np.asarray(cell))


@pytest.mark.parametrize("probs,n", [
    ([0.5, 0.2, 0.3], 6),
    ([0.1, 0.4, 0.05, 0.25, 0.2], 4),
    (list(np.arange(1, 18) / np.arange(1, 18).sum()), 2),
], ids=["K3", "K5", "K17"])
def test_counts_match_enumeration_any_vocabulary(key, probs, n):
    num = 20_000
    lm = jaxalign.MemorylessLM.from_probs(probs, length=n)
    counts = draw_counts(key, lm, jaxalign.LinearReward(np.zeros(len(probs))), num)
    assert counts.shape == (num, len(probs)) and np.all(counts.sum(1) == n)
    cells = [tuple(np.bincount(c, minlength=len(probs))) for c in
             itertools.combinations_with_replacement(range(len(probs)), n)]
    expected = np.array([multinomial_pmf(c, probs) for c in cells])
    assert math.isclose(expected.sum(), 1.0)
    index = {c: i for i, c in enumerate(cells)}
    observed = np.bincount([index[tuple(c)] for c in counts], minlength=len(cells))
    assert pooled_chisquare(observed, expected, num) > P_MIN


@pytest.mark.parametrize("n", [40, 3000], ids=["small_means", "mixed_means"])
def test_counts_marginals_are_binomial(key, n):
    # K = 17 (not a power of two), means from below 1 to above 10: each token's
    # count is Bin(n, p_k), and the inversion and BTRS paths both run.
    probs = np.arange(1, 18, dtype=np.float64) ** 2
    probs /= probs.sum()
    num = 4000
    lm = jaxalign.MemorylessLM.from_probs(probs, length=n)
    counts = draw_counts(key, lm, jaxalign.LinearReward(np.zeros(17)), num)
    assert np.all(counts.sum(1) == n)
    p = np.asarray(np.exp(lm.log_probs), np.float64)
    for k in range(17):
        support = np.arange(n + 1)
        observed = np.bincount(counts[:, k], minlength=n + 1)
        assert pooled_chisquare(observed, scipy.stats.binom.pmf(support, n, p[k]),
                                num) > P_MIN, k


@pytest.mark.parametrize("n", [5, 1 << 16])
def test_zero_probability_tokens_get_count_zero(key, n):
    probs = [0.0, 0.3, 0.0, 0.0, 0.7, 0.0]
    lm = jaxalign.MemorylessLM.from_probs(probs, length=n)
    counts = draw_counts(key, lm, jaxalign.LinearReward(np.zeros(6)), 500)
    assert np.all(counts[:, [0, 2, 3, 5]] == 0)
    assert np.all(counts[:, 1] + counts[:, 4] == n)
    assert abs(z_mean(counts[:, 1], 0.3 * n)) < Z_MAX


@pytest.mark.parametrize("where", [0, 2], ids=["first", "last"])
def test_counts_tiny_probability(key, where):
    probs = np.array([0.4, 0.6, 0.0])
    probs = np.insert(probs[:2], where, 1e-30)
    lm = jaxalign.MemorylessLM.from_probs(probs, length=1 << 16)
    # The split that separates the tiny token keeps its relative accuracy.
    q, flip = _split_probs(lm.log_probs)
    # (float32 log-probabilities: a relative error of about 70 eps in q.)
    split = 0 if where == 0 else 1
    log_p = np.asarray(lm.log_probs, np.float64)
    expected = math.exp(log_p[where] - np.logaddexp.reduce(log_p[split:]))
    assert math.isclose(expected, 1e-30, rel_tol=0.5)
    assert bool(flip[split]) == (where != 0)
    assert math.isclose(float(q[split]), expected, rel_tol=1e-4)
    counts = draw_counts(key, lm, jaxalign.LinearReward(np.zeros(3)), 500)
    assert np.all(counts[:, where] == 0) and np.all(counts.sum(1) == 1 << 16)
    heavy = 1 if where == 0 else 0
    assert abs(z_mean(counts[:, heavy], float(np.exp(lm.log_probs[heavy])) * (1 << 16))
               ) < Z_MAX
