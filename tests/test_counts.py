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
from jaxalign.sample._counts import _count_stage

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
