"""Tests for jaxalign.estimators against independent references.

Inputs are drawn with NumPy from exact laws (so these tests do not depend on the
samplers); references come from scipy, brute-force enumeration or closed forms
computed here in float64.  Monte Carlo checks use |z| < 5 with the estimator's
own standard error.
"""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxalign import estimators as est
from jaxalign.models import MemorylessLM

Z_MAX = 5.0


def z(estimate, exact):
    return (float(estimate.value) - exact) / float(estimate.stderr)


def bon_classes(q, num_candidates):
    cdf = np.minimum(np.cumsum(q), 1.0)
    below = np.concatenate([[0.0], cdf[:-1]])
    return cdf**num_candidates - below**num_candidates, cdf, below


def test_mean_matches_numpy(x64):
    x = np.random.default_rng(0).normal(size=101)
    e = est.mean(x)
    assert e.num_samples == 101
    np.testing.assert_allclose(e.value, x.mean(), rtol=1e-12)
    np.testing.assert_allclose(e.stderr, x.std(ddof=1) / np.sqrt(101), rtol=1e-12)


def test_win_rate_all_pairs_and_z_against_exact(x64):
    a = np.array([0.0, 1.0, 1.0, 3.0])
    b = np.array([1.0, 2.0, 0.0])
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
    np.testing.assert_allclose(est.win_rate(a, b).value, brute, rtol=1e-12)
    # Best-of-4 of Binomial(6, 0.3) vs the base: W = sum_c b_c (F_{c-} + q_c/2).
    rng = np.random.default_rng(1)
    n, num_candidates, m = 6, 4, 20_000
    bon = rng.binomial(n, 0.3, size=(m, num_candidates)).max(axis=1).astype(float)
    base = rng.binomial(n, 0.3, size=m).astype(float)
    q = scipy.stats.binom.pmf(np.arange(n + 1), n, 0.3)
    b_c, _, below = bon_classes(q, num_candidates)
    exact = np.sum(b_c * (below + q / 2))
    assert exact <= num_candidates / (num_candidates + 1)
    assert abs(z(est.win_rate(bon, base), exact)) < Z_MAX


def test_k_statistics_match_scipy_and_brute_jackknife(x64):
    x = np.random.default_rng(2).gamma(2.0, size=30)
    e = est.scaled_cumulants(x, length=3)
    ref = np.array([scipy.stats.kstat(x, k) for k in range(1, 5)]) / 3
    np.testing.assert_allclose(e.value, ref, rtol=1e-9)
    loo = np.array(
        [
            [scipy.stats.kstat(np.delete(x, i), k) for k in range(1, 5)]
            for i in range(30)
        ]
    )
    jack = np.sqrt(29 / 30 * np.sum((loo - loo.mean(0)) ** 2, axis=0)) / 3
    np.testing.assert_allclose(e.stderr, jack, rtol=1e-7)
    assert est.scaled_cumulants(x, length=3, order=2).value.shape == (2,)


def test_scaled_cumulants_z_against_bernoulli_cumulants(x64):
    p, n, m = 0.3, 20, 40_000
    r = np.random.default_rng(3).binomial(n, p, size=m).astype(float)
    v = p * (1 - p)
    exact = [p, v, v * (1 - 2 * p), v * (1 - 6 * v)]
    e = est.scaled_cumulants(r, length=n)
    for k in range(4):
        assert abs((float(e.value[k]) - exact[k]) / float(e.stderr[k])) < Z_MAX


def test_scgf_value_and_z(x64):
    x = np.array([0.0, 1.0, 3.0])
    np.testing.assert_allclose(
        est.scgf(x, 0.7, length=2).value, np.log(np.mean(np.exp(0.7 * x))) / 2
    )
    p, n, m, t = 0.4, 10, 40_000, 0.3
    r = np.random.default_rng(4).binomial(n, p, size=m).astype(float)
    exact = np.log(1 - p + p * np.exp(t))  # Λ(t) per token for a Bernoulli reward
    assert abs(z(est.scgf(r, t, length=n), exact)) < Z_MAX


def test_tail_probability_importance_sampling(x64):
    n, p, level = 200, 0.5, 150
    p_tilt = level / n  # saddle point: Λ'(θ) = 0.75
    theta = np.log(p_tilt / (1 - p_tilt) * (1 - p) / p)
    log_norm = n * np.log(1 - p + p * np.exp(theta))
    r = np.random.default_rng(5).binomial(n, p_tilt, size=20_000).astype(float)
    exact = scipy.stats.binom.sf(level - 1, n, p)
    assert exact < 1e-12
    e = est.tail_probability(r, level, theta, log_norm)
    assert abs(z(e, exact)) < Z_MAX
    log_e = est.tail_probability(r, level, theta, log_norm, log_scale=True)
    np.testing.assert_allclose(log_e.value, np.log(float(e.value)), rtol=1e-10)
    assert abs((float(log_e.value) - np.log(exact)) / float(log_e.stderr)) < Z_MAX


def test_bon_kl_plugin_exact_on_exact_proportions_and_z(x64):
    q = np.array([0.25, 0.5, 0.25])
    b_c, _, _ = bon_classes(q, 3)
    exact = np.sum(b_c * np.log(b_c / q))
    np.testing.assert_allclose(
        est.best_of_n_kl_plugin([0.0, 1.0, 1.0, 2.0], 3).value, exact, rtol=1e-12
    )
    r = np.random.default_rng(6).choice(3, p=q, size=20_000).astype(float)
    assert abs(z(est.best_of_n_kl_plugin(r, 3), exact)) < Z_MAX


def test_beirami_estimator_properties_and_atom_law(x64):
    num_candidates = 16
    bound = np.log(num_candidates) - (num_candidates - 1) / num_candidates
    d = est._beirami_d(jnp.log(jnp.array([1e-300, 1e-9, 0.1, 0.5, 1.0])), 16.0)
    np.testing.assert_allclose(d[0], bound, rtol=1e-12)
    assert float(d[-1]) == 0.0
    assert np.all((np.asarray(d) >= 0) & (np.asarray(d) <= bound + 1e-12))
    # Exact BoN KL (THEORY.md §1.9) of a top atom eps above 10^5 tiny classes.
    eps, classes = 0.1, 100_000
    q = np.concatenate([np.full(classes, (1 - eps) / classes), [eps]])
    b_c, _, _ = bon_classes(q, num_candidates)
    exact = np.sum(b_c * np.log(b_c / q))
    # The tiny classes stand in for a continuum; the discretisation error decays like
    # classes**-2 (2e-6, 2e-8, 2e-10 at 1e3, 1e4, 1e5 classes), so 1e-9 is tight.
    np.testing.assert_allclose(d[2], exact, rtol=0, atol=1e-9)
    e = est.beirami_kl(np.log([0.1, 0.5]), num_candidates)
    np.testing.assert_allclose(e.value, (d[2] + d[3]) / 2, rtol=1e-12)


def brute_bon_value(scores, values, num_candidates):
    total = []
    for subset in itertools.combinations(range(len(scores)), num_candidates):
        s = scores[list(subset)]
        winners = [i for i in subset if scores[i] == s.max()]
        total.append(np.mean(values[winners]))
    return np.mean(total)


def test_best_of_n_value_equals_subset_enumeration_with_ties(x64):
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=9).astype(float)  # many ties
    gold = rng.normal(size=9)
    for num_candidates in (1, 3, 9):
        e = est.best_of_n_value(scores, num_candidates, gold)
        np.testing.assert_allclose(
            e.value, brute_bon_value(scores, gold, num_candidates), rtol=1e-10
        )
    # Jackknife standard error against a brute-force jackknife (no ties).
    scores = rng.normal(size=10)
    e = est.best_of_n_value(scores, 3)
    loo = np.array(
        [
            brute_bon_value(np.delete(scores, i), np.delete(scores, i), 3)
            for i in range(10)
        ]
    )
    jack = np.sqrt(9 / 10 * np.sum((loo - loo.mean()) ** 2))
    np.testing.assert_allclose(e.stderr, jack, rtol=1e-9)


def test_kl_estimator_moments_by_enumeration_and_z(x64):
    pi = np.array([0.5, 0.3, 0.2])
    ref = np.array([0.2, 0.2, 0.6])
    n = 3
    policy = MemorylessLM.from_probs(pi, length=n)
    reference = MemorylessLM.from_probs(ref, length=n)
    mom = est.kl_estimator_moments(policy, reference)
    seqs = np.array(list(itertools.product(range(3), repeat=n)))
    prob = pi[seqs].prod(1)
    lr = np.log(ref[seqs]) - np.log(pi[seqs])  # (27, n) per-token log ratios
    ks = [(-lr).sum(1), (0.5 * lr**2).sum(1), (np.expm1(lr) - lr).sum(1)]
    kl = np.sum(prob * (np.log(prob) - np.log(ref[seqs].prod(1))))
    np.testing.assert_allclose(mom.kl, kl, rtol=1e-12)
    for i, k in enumerate(ks):
        mean_ = np.sum(prob * k)
        np.testing.assert_allclose(mom.mean[i], mean_, rtol=1e-12)
        np.testing.assert_allclose(
            mom.variance[i], np.sum(prob * (k - mean_) ** 2), rtol=1e-12
        )
    np.testing.assert_allclose(np.asarray(mom.bias)[[0, 2]], 0.0, atol=1e-12)
    draws = np.random.default_rng(8).choice(3, p=pi, size=(20_000, n))
    sample_lr = np.log(ref[draws]) - np.log(pi[draws])
    e = est.kl_estimators(sample_lr)
    for i, name in enumerate(["k1", "k2", "k3"]):
        assert abs(z(getattr(e, name), float(mom.mean[i]))) < Z_MAX


def test_float32_inputs_stay_float32():
    x = np.linspace(0, 1, 10, dtype=np.float32)
    assert est.mean(x).value.dtype == jnp.float32
    assert est.scaled_cumulants(x, length=1).value.dtype == jnp.float32
    assert est.best_of_n_value(x, 2).value.dtype == jnp.float32


def test_bad_inputs():
    x = np.arange(6.0)
    cases = [
        (lambda: est.mean([1.0]), "samples"),
        (lambda: est.mean(np.ones((2, 2))), "samples"),
        (lambda: est.scaled_cumulants(x, length=1, order=5), "order"),
        (lambda: est.scaled_cumulants(x, length=0), "length"),
        (lambda: est.scgf(x, math.nan, length=1), "t"),
        (lambda: est.best_of_n_value(x, 0), "num_candidates"),
        (lambda: est.best_of_n_value(x, 7), "num_candidates"),
        (lambda: est.best_of_n_value(x, 2, x[:3]), "values"),
        (lambda: est.best_of_n_kl_plugin(x, 0), "num_candidates"),
        (lambda: est.beirami_kl(x, 0), "num_candidates"),
        (lambda: est.tail_probability(x, math.nan, 0.0, 0.0), "threshold"),
        (lambda: est.kl_estimators(np.ones((1, 3))), "log_ratio"),
        (
            lambda: est.kl_estimator_moments(
                MemorylessLM.uniform(2, length=1), MemorylessLM.uniform(3, length=1)
            ),
            "tokens",
        ),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_public_api_documented():
    for name in est.__all__:
        assert getattr(est, name).__doc__, name
