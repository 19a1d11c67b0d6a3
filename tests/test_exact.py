"""Tests for jaxalign.exact against independent references.

References: brute-force enumeration over all K^n sequences (and over all N-tuples
of sequences for best-of-N), direct float64 convolution of positive arrays
(relative accuracy ~1e-13 wherever nothing underflows), mpmath at 40-50 digits,
scipy.stats.binom, the Gaussian expected maximum (THEORY.md §6.1), and closed
forms solved with scipy.optimize.brentq.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.signal import fftconvolve
from scipy.stats import binom

import jaxalign
from jaxalign import exact


def _model(probs, n):
    return jaxalign.MemorylessLM.from_probs(jnp.asarray(probs, dtype=jnp.float64),
                                            length=n)


def _reward(r):
    return jaxalign.LinearReward(jnp.asarray(r, dtype=jnp.float64))


def _sequences(probs, rewards, n):
    """All K^n sequences: (probabilities, rewards), exact up to float rounding."""
    seqs = np.array(list(itertools.product(range(len(probs)), repeat=n)))
    probs, rewards = np.asarray(probs), np.asarray(rewards)
    return np.prod(probs[seqs], axis=1), np.sum(rewards[seqs], axis=1)


def _brute_force_law(probs, rewards, n):
    seq_p, seq_r = _sequences(probs, rewards, n)
    law = {}
    for p, v in zip(seq_p, np.round(seq_r, 9), strict=True):
        law[float(v)] = law.get(float(v), 0.0) + float(p)
    return law


def _law_dict(law):
    pairs = zip(np.asarray(law.values), np.asarray(law.log_pmf), strict=True)
    return {round(float(v), 9): float(np.exp(lp)) for v, lp in pairs}


def _direct_log_power(weights, n):
    """log of (sum_j w_j z^j)^n by direct float64 convolution (positive terms)."""
    result, base, m = np.array([1.0]), np.asarray(weights, dtype=np.float64), n
    while m:
        if m & 1:
            result = np.convolve(result, base)
        m >>= 1
        if m:
            base = np.convolve(base, base)
    with np.errstate(divide="ignore"):
        return np.log(result)


# ------------------------------------------------------------------ reward_law


@pytest.mark.parametrize(
    "probs, rewards, n",
    [
        ([0.1, 0.2, 0.3, 0.4], [0.0, 0.25, 0.75, 1.0], 5),
        ([0.5, 0.3, 0.2], [0.0, 2.0, 3.0], 6),  # gaps: R = 1, 3n-1 unreachable
        ([0.2, 0.5, 0.3], [-1.0, 0.5, 0.5], 4),  # ties and a negative offset
    ],
)
def test_reward_law_brute_force(x64, probs, rewards, n):
    law = exact.reward_law(_model(probs, n), _reward(rewards))
    ref = _brute_force_law(probs, rewards, n)
    got = _law_dict(law)
    assert set(ref) <= set(got)
    for v, p in got.items():
        assert p == pytest.approx(ref.get(v, 0.0), rel=1e-10, abs=0.0)
    np.testing.assert_allclose(np.diff(np.asarray(law.values)), law.span, rtol=1e-12)
    assert law.lattice_error < 1e-12


def test_reward_law_bernoulli_deep_tails_mpmath(x64):
    n = 1000
    lm = _model([0.7, 0.3], n)
    law = exact.reward_law(lm, _reward([0.0, 1.0]))
    mpmath.mp.dps = 40
    p0, p1 = (mpmath.mpf(float(p)) for p in lm.probs)
    ref = np.array([
        float(mpmath.log(mpmath.binomial(n, s)) + s * mpmath.log(p1)
              + (n - s) * mpmath.log(p0))
        for s in range(n + 1)
    ])
    # Relative 1e-9 on the probability = absolute 1e-9 on its log.
    np.testing.assert_allclose(np.asarray(law.log_pmf), ref, rtol=0, atol=1e-9)
    assert float(law.log_pmf[-1]) == pytest.approx(n * float(mpmath.log(p1)),
                                                   abs=1e-9)  # log 0.3^1000
    assert law.rel_error < 1e-9


def test_reward_law_trinomial_n1e4_mpmath(x64):
    """K=3 steps {0,1,2} at n=1e4: mpmath sums over types at points across the range."""
    n, probs = 10_000, [0.5, 0.3, 0.2]
    lm = _model(probs, n)
    law = exact.reward_law(lm, _reward([0.0, 1.0, 2.0]))
    mpmath.mp.dps = 40
    w = [mpmath.mpf(float(p)) for p in lm.probs]
    logfac = [mpmath.mpf(0)] * (n + 1)
    for i in range(1, n + 1):
        logfac[i] = logfac[i - 1] + mpmath.log(i)

    def ref(s):
        terms = [
            logfac[n] - logfac[n - s + n2] - logfac[s - 2 * n2] - logfac[n2]
            + (n - s + n2) * mpmath.log(w[0]) + (s - 2 * n2) * mpmath.log(w[1])
            + n2 * mpmath.log(w[2])
            for n2 in range(max(0, s - n), s // 2 + 1)
        ]
        peak = max(terms)
        return float(peak + mpmath.log(mpmath.fsum(mpmath.exp(t - peak)
                                                   for t in terms)))

    points = [0, 1, 37, 2000, 7000, 9000, 12000, 16000, 19000, 19990, 19999, 20000]
    got = np.asarray(law.log_pmf)[points]
    np.testing.assert_allclose(got, [ref(s) for s in points], rtol=0, atol=1e-9)


def test_reward_law_bernoulli_n1e5_mpmath(x64):
    n = 100_000
    lm = _model([0.7, 0.3], n)
    law = exact.reward_law(lm, _reward([0.0, 1.0]))
    mpmath.mp.dps = 40
    p0, p1 = (mpmath.mpf(float(p)) for p in lm.probs)
    points = [0, 1, 100, 10_000, 29_000, 30_000, 31_000, 60_000, 99_000, n - 1, n]
    ref = [
        float(mpmath.loggamma(n + 1) - mpmath.loggamma(s + 1)
              - mpmath.loggamma(n - s + 1) + s * mpmath.log(p1)
              + (n - s) * mpmath.log(p0))
        for s in points
    ]
    # |log P| reaches 1.2e5 here, so float64 itself limits the log to ~1e-11.
    np.testing.assert_allclose(np.asarray(law.log_pmf)[points], ref, rtol=0,
                               atol=1e-9)


@pytest.mark.parametrize(
    "weights, n",
    [([0.4, 0.3, 0.2, 0.1], 300), ([0.4, 0.3, 0, 0, 0, 0.2, 0, 0, 0, 0, 0.1], 100)],
)
def test_reward_law_whole_support_vs_direct_convolution(x64, weights, n):
    """Every point (incl. exact zeros and locally deep points) to 1e-9 relative."""
    weights = np.asarray(weights)
    keep = weights > 0
    lm = _model(weights[keep], n)
    law = exact.reward_law(lm, _reward(np.flatnonzero(keep).astype(np.float64)))
    ref = _direct_log_power(np.where(keep, np.asarray(weights), 0.0), n)
    got = np.asarray(law.log_pmf)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [1, 2])
def test_reward_law_20000_distinct_rewards(x64, n):
    """K = 20 000 tokens with distinct rewards: P(R = r_k) = p_k at n = 1, and the
    direct float64 sums P(R = s) = sum_i p_i p_{s-i} (positive terms) at n = 2, at
    both ends and 400 random points."""
    rng = np.random.default_rng(20_000)
    k = 20_000
    probs = rng.dirichlet(np.ones(k))
    steps = rng.permutation(k)
    law = exact.reward_law(_model(probs, n), _reward(1.0 + 0.25 * steps))
    assert law.span == pytest.approx(0.25, rel=1e-12)
    assert law.values.shape == (n * (k - 1) + 1,)
    w = np.zeros(k)
    w[steps] = probs
    got = np.asarray(law.log_pmf)
    if n == 1:
        np.testing.assert_allclose(got, np.log(w), rtol=0, atol=1e-9)
        return
    points = np.r_[0:50, 2 * k - 51 : 2 * k - 1, rng.choice(2 * k - 1, 400)]
    ref = []
    for s in points:
        i = np.arange(max(0, s - k + 1), min(s, k - 1) + 1)
        ref.append(math.log(np.sum(w[i] * w[s - i])))
    np.testing.assert_allclose(got[points], ref, rtol=0, atol=1e-9)


def test_reward_law_zipf_131072_tokens(x64):
    """A Zipf vocabulary of 2^17 tokens, Gaussian rewards snapped to ~100 steps,
    n = 1024: the moments of R and of tilted laws against the token law, and every
    point within 1e-3 of the peak of three tilted laws against a plain FFT
    convolution power of the tilted step pmf (deep tails: log P down to -2000)."""
    rng = np.random.default_rng(131_072)
    k, n = 2**17, 1024
    probs = 1.0 / np.arange(1, k + 1) ** 1.1
    probs /= probs.sum()
    rewards = rng.standard_normal(k)
    span = (rewards.max() - rewards.min()) / 100.0
    law = exact.reward_law(_model(probs, n), _reward(rewards), span=span)
    steps = np.rint((rewards - rewards.min()) / span).astype(np.int64)
    snapped = rewards.min() + span * steps
    weights = np.bincount(steps, weights=probs)  # the step pmf on 0..100
    values, log_pmf = np.asarray(law.values), np.asarray(law.log_pmf)
    assert values.shape == (100 * n + 1,)
    # Moments of R, and of R tilted by e^{lam R} (deep in both tails).
    for lam in (0.0, -2.0, 3.0):
        token = probs * np.exp(lam * (snapped - snapped.max()))
        token /= token.sum()
        mean = n * math.fsum(token * snapped)
        var = n * math.fsum(token * (snapped - mean / n) ** 2)
        tilted = np.exp(log_pmf + lam * values - np.logaddexp.reduce(
            log_pmf + lam * values))
        assert math.fsum(tilted * values) == pytest.approx(mean, abs=1e-9 * n)
        assert math.fsum(tilted * (values - mean) ** 2) == pytest.approx(var, rel=1e-8)
    # Points near the peaks of tilted laws (step means 50, 15, 85 of 0..100).
    j = np.arange(len(weights))
    for target in (None, 15.0, 85.0):
        theta = 0.0 if target is None else brentq(
            lambda t, target=target: np.sum(j * weights * np.exp(t * j))
            / np.sum(weights * np.exp(t * j)) - target, -5.0, 5.0)
        step = weights * np.exp(theta * j)
        log_norm = math.log(step.sum())
        power, base, m = np.array([1.0]), step / step.sum(), n
        while m:
            if m & 1:
                power = fftconvolve(power, base)
            m >>= 1
            if m:
                base = fftconvolve(base, base)
        near = np.flatnonzero(power >= 1e-3 * power.max())
        ref = np.log(power[near]) - theta * near + n * log_norm
        np.testing.assert_allclose(log_pmf[near], ref, rtol=0, atol=1e-9)
        assert ref.min() < -1000.0 or target is None


def test_reward_law_too_large_is_refused_before_any_work(x64):
    lm = _model([0.5, 0.5], 10**9)
    with pytest.raises(ValueError, match="estimated peak memory .* GiB"):
        exact.reward_law(lm, _reward([0.0, 1.0e4]))


def _log_space_power(weights, n):
    """log of (sum_j w_j z^j)^n by n log-space steps, O(n * size * #steps): exact up
    to rounding wherever the terms underflow in linear space."""
    steps = {j: math.log(w) for j, w in weights.items()}
    d, cur = max(steps), np.zeros(1)
    for _ in range(n):
        new = np.full(len(cur) + d, -np.inf)
        for j, log_w in steps.items():
            new[j : j + len(cur)] = np.logaddexp(new[j : j + len(cur)], cur + log_w)
        cur = new
    return cur


@pytest.mark.parametrize(
    "weights, n",
    [({0: 0.3, 13: 0.2, 40: 0.4999, 45: 1e-4}, 100), ({0: 0.2, 37: 0.7, 40: 0.1}, 120)],
)
def test_reward_law_locally_deep_points_vs_log_space(x64, weights, n):
    """Near-periodic steps put points far below their neighbours away from the ends,
    where no tilted FFT resolves them: every point to 1e-9, and reported so."""
    steps = np.array(sorted(weights))
    probs = np.array([weights[j] for j in steps])
    law = exact.reward_law(_model(probs, n), _reward(steps.astype(np.float64)))
    ref = _log_space_power(weights, n)
    got = np.asarray(law.log_pmf)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=0, atol=1e-9)
    assert law.rel_error < 1e-9


def test_lattice_detection_and_snapping(x64):
    lm = _model([0.2, 0.3, 0.5], 3)
    law = exact.reward_law(lm, _reward([0.1, 0.3, 0.7]))  # 0.1 + 0.2 * (0, 1, 3)
    assert law.span == pytest.approx(0.2, rel=1e-12)
    assert law.offset == pytest.approx(0.3, rel=1e-12)
    assert float(law.values[-1]) == pytest.approx(2.1, rel=1e-12)
    with pytest.raises(ValueError, match="lattice"):
        exact.reward_law(lm, _reward([0.0, 1.0, math.sqrt(2.0)]))
    snapped = exact.reward_law(lm, _reward([0.0, 1.0, math.sqrt(2.0)]), span=0.5)
    assert snapped.lattice_error == pytest.approx(1.5 - math.sqrt(2.0), rel=1e-12)
    ref = _brute_force_law([0.2, 0.3, 0.5], [0.0, 1.0, 1.5], 3)
    for v, p in _law_dict(snapped).items():
        assert p == pytest.approx(ref.get(v, 0.0), rel=1e-10, abs=0.0)
    # A zero-probability token's off-lattice reward is ignored.
    lm0 = _model([0.5, 0.0, 0.5], 2)
    law0 = exact.reward_law(lm0, _reward([0.0, math.pi, 1.0]))
    assert _law_dict(law0) == pytest.approx({0.0: 0.25, 1.0: 0.5, 2.0: 0.25})
    with pytest.raises(ValueError, match="span"):
        exact.reward_law(lm, _reward([0.0, 1.0, 2.0]), span=-1.0)


def test_reward_law_float32_lattice():
    lm = jaxalign.MemorylessLM.from_probs(jnp.asarray([0.5, 0.25, 0.25]), length=4)
    law = exact.reward_law(lm, jaxalign.LinearReward(jnp.asarray([0.1, 0.3, 0.7])))
    assert law.log_pmf.dtype == jnp.float32 and law.values.dtype == jnp.float32
    ref = _brute_force_law([0.5, 0.25, 0.25], [0.1, 0.3, 0.7], 4)
    assert float(jnp.sum(jnp.exp(law.log_pmf))) == pytest.approx(1.0, abs=1e-6)
    assert float(law.values[0]) == pytest.approx(min(ref), rel=1e-6)


def test_types_law_non_lattice(x64):
    probs, rewards, n = [0.5, 0.3, 0.2], [0.0, 1.0, math.sqrt(2.0)], 5
    law = exact.reward_law(_model(probs, n), _reward(rewards), algorithm="types")
    ref = _brute_force_law(probs, rewards, n)
    got = _law_dict(law)
    assert set(got) == set(ref)
    for v, p in got.items():
        assert p == pytest.approx(ref[v], rel=1e-12)
    assert math.isnan(law.span)
    with pytest.raises(ValueError, match="max_types"):
        exact.reward_law(_model(probs, 200), _reward(rewards), algorithm="types",
                         max_types=1000)


# ------------------------------------------------------------------ best of N


def test_best_of_n_vs_scipy_binom(x64):
    n, q = 60, 0.3
    nums = np.array([1, 2, 5, 10, 100, 1000])
    res = exact.best_of_n(_model([1 - q, q], n), _reward([0.0, 1.0]),
                          num_candidates=nums)
    cdf = binom.cdf(np.arange(n + 1), n, q)
    pmf = binom.pmf(np.arange(n + 1), n, q)
    below = np.r_[0.0, cdf[:-1]]
    b = cdf[None, :] ** nums[:, None] - below[None, :] ** nums[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.sum(np.where(b > 0, b * np.log(b / pmf), 0.0), axis=1)
    np.testing.assert_allclose(res.expected_reward,
                               [np.sum(1 - cdf[:-1] ** m) for m in nums], rtol=1e-12)
    np.testing.assert_allclose(res.kl, kl, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(res.win_rate, b @ (below + pmf / 2), rtol=1e-12)
    # The reference F^N - F_-^N cancels near F = 1: absolute accuracy ~N * 1e-16.
    np.testing.assert_allclose(np.exp(res.log_pmf), b, rtol=1e-9, atol=1e-12)
    # THEORY B2 and B7 bounds, and monotonicity in N.
    assert np.all(np.asarray(res.kl) <= np.log(nums) - (nums - 1) / nums + 1e-12)
    assert np.all(np.asarray(res.win_rate) <= nums / (nums + 1) + 1e-12)
    assert np.all(np.diff(np.asarray(res.expected_reward)) > 0)


def test_best_of_n_exhaustive_tuples_with_ties(x64):
    """Selection simulated exactly: all N-tuples of all sequences, first argmax."""
    probs, rewards, n, num = [0.5, 0.3, 0.2], [0.0, 1.0, 1.0], 3, 3
    seq_p, seq_r = _sequences(probs, rewards, n)
    m = len(seq_p)
    tuples = np.array(list(itertools.product(range(m), repeat=num)))
    weight = np.prod(seq_p[tuples], axis=1)
    winner = tuples[np.arange(len(tuples)), np.argmax(seq_r[tuples], axis=1)]
    pi = np.bincount(winner, weights=weight, minlength=m)
    kl = float(np.sum(np.where(pi > 0, pi * np.log(pi / seq_p), 0.0)))
    mean = float(pi @ seq_r)
    cmp = np.sign(seq_r[:, None] - seq_r[None, :])
    win = float(pi @ ((cmp > 0) + 0.5 * (cmp == 0)) @ seq_p)
    values = np.unique(np.round(seq_r, 9))
    law_ref = [pi[np.isclose(seq_r, v)].sum() for v in values]

    lam = 0.7
    res = exact.best_of_n(_model(probs, n), _reward(rewards), num_candidates=num,
                          lam=lam)
    assert float(res.expected_reward) == pytest.approx(mean, rel=1e-12)
    assert float(res.kl) == pytest.approx(kl, rel=1e-10)
    assert float(res.win_rate) == pytest.approx(win, rel=1e-12)
    got = _law_dict(exact.RewardLaw(res.values, res.log_pmf, 0.0, 1.0, 0.0, 0.0))
    assert [got[float(v)] for v in values] == pytest.approx(law_ref, rel=1e-10)
    # KL to the tilted policy, summed over sequences.
    phi = seq_p * np.exp(lam * seq_r)
    phi /= phi.sum()
    kl_phi = float(np.sum(np.where(pi > 0, pi * np.log(pi / phi), 0.0)))
    assert float(res.kl_to_tilted) == pytest.approx(kl_phi, rel=1e-10)


def test_best_of_n_huge_n_mpmath(x64):
    n, q = 200, 0.3
    lm = _model([1 - q, q], n)
    log_ns = np.array([5.0, 50.0, 400.0])
    res = exact.best_of_n(lm, _reward([0.0, 1.0]), log_num_candidates=log_ns)
    mpmath.mp.dps = 150  # 1 - F reaches 0.3^200 ~ 1e-105
    p1 = mpmath.mpf(float(lm.probs[1]))
    pmf = [mpmath.binomial(n, s) * p1**s * (1 - p1) ** (n - s) for s in range(n + 1)]
    cdf = list(itertools.accumulate(pmf))
    cdf[-1] = mpmath.mpf(1)  # not 1 + 1e-150: N log F would blow up
    for i, log_n in enumerate(log_ns):
        big_n = mpmath.exp(mpmath.mpf(float(log_n)))
        pow_ = [mpmath.exp(big_n * mpmath.log(c)) for c in cdf]
        b = [pow_[0]] + [pow_[s] - pow_[s - 1] for s in range(1, n + 1)]
        mean = mpmath.fsum(s * b[s] for s in range(n + 1))
        kl = mpmath.fsum(b[s] * mpmath.log(b[s] / pmf[s]) for s in range(n + 1)
                         if b[s] > 0)
        assert float(res.expected_reward[i]) == pytest.approx(float(mean), rel=1e-12)
        assert float(res.kl[i]) == pytest.approx(float(kl), rel=1e-9)
        # Deep-tail selected-law probabilities, in log space: log F_c^N = N log F_c
        # inherits the law's relative error (~1e-11) times |log b|.
        for s in (0, 50, 120, n):
            if b[s] > 0:
                assert float(res.log_pmf[i, s]) == pytest.approx(
                    float(mpmath.log(b[s])), abs=1e-8, rel=1e-10)


def test_best_of_n_gaussian_limit(x64):
    """Standardised E max of N sums -> E max of N standard normals (THEORY §6.1).

    The laws are symmetric (κ3 = 0), so the Edgeworth 1/sqrt(n) term vanishes and
    the error is O(1/n): allow 2/n at n = 1e4, and check the 1/n scaling.
    """
    nums = np.array([2, 3, 4, 5, 10, 100])
    ref = np.array([0.564189583547756, 0.846284375321634, 1.029375373003964,
                    1.162964473640520, 1.538752730835173, 2.507593636441684])
    errors = {}
    for n in (1000, 10_000):
        res = exact.best_of_n(_model([0.25] * 4, n), _reward([0.0, 1.0, 2.0, 3.0]),
                              num_candidates=nums)
        z = (np.asarray(res.expected_reward) - 1.5 * n) / math.sqrt(1.25 * n)
        errors[n] = z - ref
    assert np.all(np.abs(errors[10_000]) < 2.0 / 10_000)
    ratio = errors[1000] / errors[10_000]
    assert np.all((ratio > 8) & (ratio < 12))


def test_headline_bon_vs_tilted_convergence(x64):
    """Yang et al.: N = ceil(e^{nδ}), Bernoulli(0.3), δ = 0.1, exact for n = 10..1e4."""
    q, delta = 0.3, 0.1

    def lmgf(lam):
        return math.log(1 - q + q * math.exp(lam))

    def mean(lam):
        return q * math.exp(lam) / (1 - q + q * math.exp(lam))

    lam = brentq(lambda t: t * mean(t) - lmgf(t) - delta, 1e-9, 50.0, xtol=1e-15)
    x_star = mean(lam)
    rows = []
    for n in (10, 100, 1000, 10_000):
        log_n = math.log(math.ceil(math.exp(n * delta))) if n * delta < 700 else (
            n * delta)  # ceil(e^x)/e^x - 1 < e^{-700}
        res = exact.best_of_n(_model([1 - q, q], n), _reward([0.0, 1.0]),
                              log_num_candidates=log_n, lam=lam)
        e, kl, kl_t = (float(res.expected_reward), float(res.kl),
                       float(res.kl_to_tilted))
        assert kl <= log_n + math.expm1(-log_n) + 1e-9  # log N - (N-1)/N, Y5(c)
        # §1.4 identity with Δ = nδ and E_Φ R = n x*.
        assert kl_t == pytest.approx(kl - n * delta + lam * (n * x_star - e),
                                     abs=1e-8)
        rows.append((n, x_star - e / n, delta - kl / n, kl_t / n))
    for n, gap_e, gap_kl, kl_t in rows:
        log_n = math.log(n)
        assert 0 < gap_e < log_n / n  # E/n -> x* at the (log n)/n rate
        assert 0 < gap_kl < log_n / n  # KL/n -> δ
        assert 0 < kl_t < log_n / n  # KL(BoN || Φ)/n -> 0
    # Second order (THEORY Y5 heuristic): n (x* - E/n) - log n / (2λ) -> constant.
    second = [n * g - math.log(n) / (2 * lam) for n, g, _, _ in rows]
    assert abs(second[-1] - second[-2]) < 0.03
    assert all(abs(s) < 1.0 for s in second)


def test_best_of_n_kl_to_tilted_direct(x64):
    n, lam = 300, 0.8
    lm, r = _model([0.5, 0.3, 0.2], n), _reward([0.0, 1.0, 3.0])
    res = exact.best_of_n(lm, r, num_candidates=[7, 10**40], lam=lam)
    tilted = exact.tilted_law(lm, r, lam)
    b = np.exp(np.asarray(res.log_pmf))
    ok = b > 0
    direct = [np.sum(bb[k] * (lb[k] - np.asarray(tilted.log_pmf)[k]))
              for bb, lb, k in zip(b, np.asarray(res.log_pmf), ok, strict=True)]
    np.testing.assert_allclose(res.kl_to_tilted, direct, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    probs=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4),
    steps=st.lists(st.integers(0, 4), min_size=4, max_size=4),
    n=st.integers(1, 30),
)
def test_best_of_n_properties(probs, steps, n):
    """KL >= 0, B2 bound, B7 bound, mean and KL non-decreasing in N, N=1 is P."""
    with jax.enable_x64(True):
        probs = np.asarray(probs) / np.sum(probs)
        rewards = np.asarray(steps[: len(probs)], dtype=np.float64)
        nums = np.array([1, 2, 3, 10, 1000])
        res = exact.best_of_n(_model(probs, n), _reward(rewards), num_candidates=nums)
        kl, mean, win = (np.asarray(x) for x in (res.kl, res.expected_reward,
                                                  res.win_rate))
    assert abs(kl[0]) < 1e-12 and mean[0] == pytest.approx(n * probs @ rewards)
    assert np.all(kl >= -1e-12)
    assert np.all(kl <= np.log(nums) - (nums - 1) / nums + 1e-10)
    assert np.all(win <= nums / (nums + 1) + 1e-12)
    assert np.all(np.diff(mean) >= -1e-9) and np.all(np.diff(kl) >= -1e-10)


# ------------------------------------------------------------------ tilted law, tails


def test_tilted_law_brute_force(x64):
    probs, rewards, n, lam = [0.5, 0.3, 0.2], [0.0, 1.0, 3.0], 4, -0.6
    law = exact.tilted_law(_model(probs, n), _reward(rewards), lam)
    tilted = np.asarray(probs) * np.exp(lam * np.asarray(rewards))
    ref = _brute_force_law(tilted / tilted.sum(), rewards, n)
    for v, p in _law_dict(law).items():
        assert p == pytest.approx(ref.get(v, 0.0), rel=1e-10, abs=0.0)


def test_log_tail_vs_mpmath_and_binom(x64):
    n, q = 1000, 0.3
    lm = _model([1 - q, q], n)
    law = exact.reward_law(lm, _reward([0.0, 1.0]))
    mpmath.mp.dps = 40
    p1 = mpmath.mpf(float(lm.probs[1]))

    def tail(lo, hi):
        return float(mpmath.log(mpmath.fsum(
            mpmath.binomial(n, s) * p1**s * (1 - p1) ** (n - s)
            for s in range(lo, hi + 1))))

    ts = np.array([0.0, 150.0, 299.5, 300.0, 700.0, 990.0, 1000.0, 1000.5])
    up = np.asarray(exact.log_tail(law, ts, upper=True))
    low = np.asarray(exact.log_tail(law, ts, upper=False))
    ref_up = [tail(math.ceil(t), n) if t <= n else -np.inf for t in ts]
    ref_low = [tail(0, min(math.floor(t), n)) for t in ts]
    np.testing.assert_allclose(up, ref_up, rtol=0, atol=1e-9)
    np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-9)
    assert up[3] == pytest.approx(binom.logsf(299, n, q), abs=1e-9)


def test_bahadur_rao_converges(x64):
    q = 0.3
    r = _reward([0.0, 1.0])
    errs = []
    for n in (100, 1000, 10_000):
        lm = _model([1 - q, q], n)
        law = exact.reward_law(lm, r)
        t_up, t_low = 0.45 * n, 0.2 * n
        br_up = float(exact.bahadur_rao_log_tail(lm, r, t_up, span=1.0))
        br_low = float(exact.bahadur_rao_log_tail(lm, r, t_low, upper=False,
                                                  span=1.0))
        errs.append((br_up - float(exact.log_tail(law, t_up)),
                     br_low - float(exact.log_tail(law, t_low, upper=False))))
    errs = np.abs(np.array(errs))
    assert np.all(errs[-1] < 0.005)
    ratio = errs[1] / errs[2]  # O(1/n): ~10x smaller per decade
    assert np.all((ratio > 7) & (ratio < 13))
    # Non-lattice (types law): the error shrinks with n.
    rn = _reward([0.0, 1.0, math.sqrt(2.0)])
    non_lattice = []
    for n in (20, 80):
        lm = _model([0.5, 0.3, 0.2], n)
        law = exact.reward_law(lm, rn, algorithm="types")
        t = 0.9 * n
        non_lattice.append(abs(float(exact.bahadur_rao_log_tail(lm, rn, t))
                               - float(exact.log_tail(law, t))))
    assert non_lattice[1] < non_lattice[0]
    assert non_lattice[1] < 0.2
    wrong_side = exact.bahadur_rao_log_tail(_model([0.5, 0.5], 10), r, 2.0)
    assert math.isnan(float(wrong_side))


# ------------------------------------------------------------------ errors, dtype


def test_bad_inputs():
    lm = jaxalign.MemorylessLM.bernoulli(0.3, length=5)
    r = jaxalign.LinearReward([0.0, 1.0])
    with pytest.raises(ValueError, match="exactly one"):
        exact.best_of_n(lm, r)
    with pytest.raises(ValueError, match="exactly one"):
        exact.best_of_n(lm, r, num_candidates=2, log_num_candidates=1.0)
    with pytest.raises(ValueError, match="num_candidates must be integers >= 1"):
        exact.best_of_n(lm, r, num_candidates=0)
    with pytest.raises(ValueError, match="num_candidates must be integers >= 1"):
        exact.best_of_n(lm, r, num_candidates=2.5)
    with pytest.raises(ValueError, match="log_num_candidates"):
        exact.best_of_n(lm, r, log_num_candidates=[1.0, -0.5])
    with pytest.raises(ValueError, match="algorithm"):
        exact.best_of_n(lm, r, num_candidates=2, algorithm="nope")
    lm3 = jaxalign.MemorylessLM.uniform(3, length=4)
    with pytest.raises(ValueError, match="do not lie on a lattice"):
        exact.best_of_n(lm3, jaxalign.LinearReward([0.0, 1.0, math.e]),
                        num_candidates=2)
    with pytest.raises(ValueError, match="K"):
        exact.reward_law(lm3, r)


def test_float32_best_of_n_and_huge_integer_n():
    lm = jaxalign.MemorylessLM.bernoulli(0.3, length=50)
    r = jaxalign.LinearReward([0.0, 1.0])
    res = exact.best_of_n(lm, r, num_candidates=[1, 10**400])
    assert res.expected_reward.dtype == jnp.float32
    assert res.log_pmf.shape == (2, 51)
    assert float(res.expected_reward[0]) == pytest.approx(15.0, rel=1e-5)
    assert float(res.expected_reward[1]) == pytest.approx(50.0, rel=1e-6)
    assert float(res.log_num_candidates[1]) == pytest.approx(400 * math.log(10),
                                                             rel=1e-6)
    law = exact.tilted_law(lm, r, 0.5)
    assert law.log_pmf.dtype == jnp.float32
    assert exact.log_tail(law, 20.0).dtype == jnp.float32
    assert exact.bahadur_rao_log_tail(lm, r, 30.0, span=1.0).dtype == jnp.float32


def test_method_keyword_is_the_deprecated_name_of_algorithm():
    """``method=`` meant four things in 0.2; the law's algorithm is ``algorithm=``."""
    lm = jaxalign.MemorylessLM.from_probs([0.5, 0.3, 0.2], length=3)
    reward = jaxalign.LinearReward([0.0, 0.3, 1.0])
    new = exact.reward_law(lm, reward, algorithm="types")
    with pytest.warns(DeprecationWarning, match="method= is now algorithm="):
        old = exact.reward_law(lm, reward, method="types")
    np.testing.assert_array_equal(new.log_pmf, old.log_pmf)
    with pytest.warns(DeprecationWarning, match="method= is now algorithm="):
        exact.tilted_law(lm, reward, 0.5, method="types")
    with pytest.raises(ValueError, match="algorithm must be 'lattice' or 'types'"):
        exact.reward_law(lm, reward, algorithm="fft")


def test_best_of_n_float32_log_pmf_below_float32_range_is_minus_inf():
    """Regression: with N = e^200 a float32 law's best-of-N log-probabilities
    N log F(v) reach -1e41, finite in float64 and beyond float32; the cast raised
    NumPy's overflow RuntimeWarning (an error under -W error).  Their float32 value
    is -inf; the rest agrees with the float64 computation."""
    probs, rewards = [0.5, 0.3, 0.2], [0.0, 1.0, 2.0]

    def bon(dtype):
        lm = jaxalign.MemorylessLM.from_probs(np.asarray(probs, dtype), length=64)
        law = exact.reward_law(lm, jaxalign.LinearReward(np.asarray(rewards, dtype)))
        return exact.best_of_n_from_law(law, log_num_candidates=200.0)

    res32 = bon(np.float32)
    with jax.enable_x64(True):
        res64 = bon(np.float64)
    lp32, lp64 = np.asarray(res32.log_pmf), np.asarray(res64.log_pmf)
    assert lp32.dtype == np.float32
    beyond = lp64 < -np.finfo(np.float32).max
    assert beyond.any()  # the case the cast must handle
    assert np.all(lp32[beyond] == -np.inf)
    # Every value within float32's range keeps float32 relative accuracy.
    np.testing.assert_allclose(lp32[~beyond], lp64[~beyond], rtol=1e-5)
    assert float(res32.expected_reward) == pytest.approx(float(res64.expected_reward),
                                                         rel=1e-5)
