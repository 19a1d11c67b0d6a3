"""jaxalign.theory against independent routes.

References, none of which calls the code under test:
  * brute-force enumeration of all K^n sequences (mpmath at 40 digits, so the
    reference itself has no rounding problem), giving sequence-level truths;
  * per-token closed forms evaluated in mpmath at 40 digits (analytic derivatives,
    ``mp.diff`` for cumulants, bisection for the inverse problems);
  * exact elementary formulas for K = 2, constant rewards and the limits.
Float64 agreement is required to 1e-12 relative.
"""

from __future__ import annotations

import doctest
import itertools
import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxalign
from jaxalign import theory

mp.mp.dps = 50
RTOL = 1e-12
ZERO = 1e-35  # below the 40-digit noise of the references, far below any value checked
INF = float("inf")

# name -> (probs, rewards, length). Zero-probability token with a huge reward and a
# tied top class in "zero_tie"; K = 2 in "bernoulli".
MODELS = {
    "three": ([0.5, 0.3, 0.2], [0.0, 1.0, 2.0], 4),
    "zero_tie": ([0.4, 0.0, 0.35, 0.25], [-0.3, 1e300, 1.7, 1.7], 3),
    "bernoulli": ([0.9, 0.1], [0.0, 1.0], 5),
}
LAMS = [0.0, 0.05, 0.7, 6.0]


def make(name):
    probs, rewards, n = MODELS[name]
    return (jaxalign.MemorylessLM.from_probs(np.array(probs), length=n),
            jaxalign.LinearReward(np.array(rewards)))


def close(actual, expected, rtol=RTOL, atol=0.0):
    actual, expected = float(actual), float(expected)
    if math.isinf(expected):
        assert actual == expected
        return
    assert abs(actual - expected) <= atol + rtol * abs(expected), (actual, expected)


# -- mpmath references ------------------------------------------------------------


def solve(f, df, lo, hi, coarse=60, tol="1e-28"):
    """Root of an increasing f on [lo, hi] in mpmath: bisection, then Newton."""
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    assert f(lo) <= 0 <= f(hi)
    for _ in range(coarse):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    x = (lo + hi) / 2
    for _ in range(40):
        step = f(x) / df(x)
        x -= step
        if abs(step) <= mp.mpf(tol) * max(abs(x), mp.mpf("1e-10")):
            return x
    raise AssertionError("mpmath Newton did not converge")


def pairs(a, b):
    return zip(a, b, strict=True)


class Token:
    """Per-token closed forms in mpmath (support only)."""

    def __init__(self, probs, rewards):
        kept = [(mp.mpf(p), mp.mpf(r)) for p, r in pairs(probs, rewards) if p > 0]
        total = sum(p for p, _ in kept)
        self.p = [p / total for p, _ in kept]
        self.r = [r for _, r in kept]
        self.r_max, self.r_min = max(self.r), min(self.r)

    def lam_(self, lam):  # Lambda
        return mp.log(sum(p * mp.exp(lam * r) for p, r in pairs(self.p, self.r)))

    def tilted(self, lam):
        w = [p * mp.exp(lam * r) for p, r in pairs(self.p, self.r)]
        z = sum(w)
        return [x / z for x in w]

    def mean(self, lam):
        return sum(q * r for q, r in pairs(self.tilted(lam), self.r))

    def var(self, lam):
        m = self.mean(lam)
        return sum(q * (r - m) ** 2 for q, r in pairs(self.tilted(lam), self.r))

    def kl(self, lam):  # KL(p_lam || p) directly from its definition
        q_p = pairs(self.tilted(lam), self.p)
        return sum(q * mp.log(q / p) for q, p in q_p if q > 0)

    def rev(self, lam):
        return sum(p * mp.log(p / q) for q, p in pairs(self.tilted(lam), self.p))

    def mass(self, value, lam=0):
        return sum(q for q, r in pairs(self.tilted(lam), self.r) if r == value)

    def lam_for_delta(self, delta):
        return solve(lambda l: self.kl(l) - delta, lambda l: l * self.var(l), 0, 300)

    def theta(self, x):
        return solve(lambda t: self.mean(t) - x, self.var, -300, 300)

    def rate(self, x, lam=0):  # Legendre: sup_t tx - Lambda(lam + t) + Lambda(lam)
        t = self.theta(x) - lam
        return t * x - self.lam_(lam + t) + self.lam_(lam)


class Sequences:
    """Brute-force enumeration of all K^n sequences with positive probability."""

    def __init__(self, probs, rewards, n):
        tok = Token(probs, rewards)
        self.n = n
        self.P, self.R = [], []
        for y in itertools.product(range(len(tok.p)), repeat=n):
            self.P.append(mp.fprod(tok.p[i] for i in y))
            self.R.append(mp.fsum(tok.r[i] for i in y))
        self.first = [y[0] for y in itertools.product(range(len(tok.p)), repeat=n)]

    def log_z(self, lam):
        return mp.log(mp.fsum(P * mp.exp(lam * R) for P, R in pairs(self.P, self.R)))

    def phi(self, lam):
        lz = self.log_z(lam)
        return [P * mp.exp(lam * R - lz) for P, R in pairs(self.P, self.R)]

    def expect(self, f, lam):
        return mp.fsum(q * f(R) for q, R in pairs(self.phi(lam), self.R))

    def kl(self, lam):
        return mp.fsum(q * mp.log(q / P) for q, P in pairs(self.phi(lam), self.P))

    def rev(self, lam):
        return mp.fsum(P * mp.log(P / q) for q, P in pairs(self.phi(lam), self.P))

    def renyi(self, alpha, lam):
        terms = pairs(self.phi(lam), self.P)
        s = mp.fsum(q**alpha * P ** (1 - alpha) for q, P in terms)
        return mp.log(s) / (alpha - 1)

    def marginal(self, lam, k):
        phi = self.phi(lam)
        return [mp.fsum(q for q, f in pairs(phi, self.first) if f == i)
                for i in range(k)]


_SEQ_CACHE: dict = {}


def sequences(name):
    if name not in _SEQ_CACHE:
        _SEQ_CACHE[name] = Sequences(*MODELS[name])
    return _SEQ_CACHE[name]


# -- against brute-force enumeration ---------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("lam", LAMS)
def test_against_enumeration(x64, name, lam):
    lm, r = make(name)
    seq = sequences(name)
    n = seq.n
    close(n * theory.log_mgf(lm, r, lam), seq.log_z(lam), atol=ZERO)
    close(theory.kl(lm, r, lam), seq.kl(lam), atol=ZERO)
    close(theory.reverse_kl(lm, r, lam), seq.rev(lam), atol=ZERO)
    close(theory.jeffreys(lm, r, lam), seq.kl(lam) + seq.rev(lam), atol=ZERO)
    mean = seq.expect(lambda R: R, lam)
    close(theory.expected_reward(lm, r, lam), mean)
    gain = mean - seq.expect(lambda R: R, 0)
    close(theory.jeffreys_gain(lm, r, lam), gain, atol=ZERO)
    close(theory.covariance_gain(lm, r, lam), gain, atol=ZERO)
    # Sequence cumulants are n times the per-token ones, at every n.
    kappas = theory.cumulants(lm, r, 4, lam)
    central = [seq.expect(lambda R, m=m: (R - mean) ** m, lam) for m in (2, 3, 4)]
    exact = [mean, central[0], central[1], central[2] - 3 * central[0] ** 2]
    for k, e in zip(kappas, exact, strict=True):
        close(n * k, e, rtol=1e-11, atol=1e-13 * float(central[0]) + 1e-300)
    # The tilted model is the token marginal of the tilted sequence law.
    marginal = seq.marginal(lam, len(Token(*MODELS[name][:2]).p))
    support = np.asarray(MODELS[name][0]) > 0
    tilted = np.asarray(theory.tilt(lm, r, lam).probs)[support]
    for a, e in pairs(tilted, marginal):
        close(a, e)
    for t in (-0.8, 0.4):
        scgf = mp.log(seq.expect(lambda R, t=t: mp.exp(t * R), lam)) / n
        close(theory.scgf(lm, r, t, lam), scgf)
        close(theory.scgf_renyi(lm, r, t, lam), scgf, rtol=1e-11)
        if lam:
            close(theory.scgf_renyi_divergence(lm, r, t, lam), scgf, rtol=1e-11)
    if lam:
        p_lam = theory.tilt(lm, r, lam).probs
        for alpha in (0.5, 2.0):
            close(n * theory.renyi_divergence(p_lam, lm.probs, alpha),
                  seq.renyi(alpha, lam), rtol=1e-11)


@pytest.mark.parametrize("name", ["three", "zero_tie"])
def test_rate_function_against_enumerated_legendre(x64, name):
    lm, r = make(name)
    seq = sequences(name)
    n = seq.n
    lam = 0.7

    def scgf(t):  # (1/n) log E_Phi e^{tR}, from the enumeration only
        return mp.log(seq.expect(lambda R: mp.exp(t * R), lam)) / n

    def slope_and_curvature(t):
        z = seq.expect(lambda R: mp.exp(t * R), lam)
        m1 = seq.expect(lambda R: R * mp.exp(t * R), lam) / z
        m2 = seq.expect(lambda R: R * R * mp.exp(t * R), lam) / z
        return m1 / n, (m2 - m1 * m1) / n

    tok = Token(*MODELS[name][:2])
    for frac in (0.1, 0.97):
        x = float(tok.r_min + frac * (tok.r_max - tok.r_min))
        t_star = solve(lambda t, x=x: slope_and_curvature(t)[0] - x,
                       lambda t: slope_and_curvature(t)[1], -40, 40, coarse=20)
        close(theory.rate_function(lm, r, x, lam), t_star * x - scgf(t_star),
              rtol=1e-11)


@pytest.mark.parametrize("name", ["three", "zero_tie"])
def test_lam_for_kl_against_enumeration(x64, name):
    lm, r = make(name)
    seq = sequences(name)
    for budget in (1e-3, 0.8):
        lam = solve(lambda l, b=budget: seq.kl(l) - b,
                    lambda l: l * (seq.expect(lambda R: R * R, l)
                                   - seq.expect(lambda R: R, l) ** 2), 0, 50, coarse=30)
        close(theory.lam_for_kl(lm, r, budget), lam, rtol=1e-11)
        close(theory.optimal_reward(lm, r, budget), seq.expect(lambda R: R, lam),
              rtol=1e-11)


# -- against per-token mpmath closed forms ---------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("lam", LAMS + [1e-7, 40.0, -3.0])
def test_against_mpmath(x64, name, lam):
    lm, r = make(name)
    tok = Token(*MODELS[name][:2])
    n = MODELS[name][2]
    lam_mp = mp.mpf(lam)
    close(theory.log_mgf(lm, r, lam), tok.lam_(lam_mp), atol=ZERO)
    close(theory.kl(lm, r, lam), n * tok.kl(lam_mp), atol=ZERO)
    close(theory.reverse_kl(lm, r, lam), n * tok.rev(lam_mp), atol=ZERO)
    close(theory.jeffreys(lm, r, lam), n * (tok.kl(lam_mp) + tok.rev(lam_mp)),
          atol=ZERO)
    close(theory.expected_reward(lm, r, lam), n * tok.mean(lam_mp))
    gain = n * (tok.mean(lam_mp) - tok.mean(0))
    close(theory.covariance_gain(lm, r, lam), gain, atol=ZERO)
    close(theory.jeffreys_gain(lm, r, lam), gain, atol=ZERO)
    derivs = [mp.diff(tok.lam_, lam_mp, m) for m in range(1, 5)]
    scale = abs(derivs[1])
    for k, e in zip(theory.cumulants(lm, r, 4, lam), derivs, strict=True):
        close(k, e, rtol=1e-11, atol=1e-12 * float(scale) + 1e-300)
    close(theory.scgf(lm, r, 0.3, lam), tok.lam_(lam_mp + 0.3) - tok.lam_(lam_mp))


@pytest.mark.parametrize("name", list(MODELS))
def test_lam_for_kl_and_optimal_reward_mpmath(x64, name):
    lm, r = make(name)
    tok = Token(*MODELS[name][:2])
    n = MODELS[name][2]
    delta_max = -mp.log(tok.mass(tok.r_max))
    close(theory.max_kl(lm, r), n * delta_max)
    for frac in (1e-12, 1e-6, 0.3, 0.9, 1 - 1e-9):
        budget = float(n * delta_max * frac)
        lam = tok.lam_for_delta(mp.mpf(budget) / n)
        # Forward error = condition number x eps: near the maximum, eps relative in
        # -log p(A_max) is ~1e-7 of the remaining gap, and lam ~ -log(gap)/g.
        close(theory.lam_for_kl(lm, r, budget), lam,
              rtol=1e-11 if frac < 0.95 else 1e-6)
        close(theory.optimal_reward(lm, r, budget), n * tok.mean(lam))
        close(theory.kl(lm, r, theory.lam_for_kl(lm, r, budget)), budget)
    for budget in (float(n * delta_max) * (1 + 1e-15), 1e3, INF):
        assert float(theory.lam_for_kl(lm, r, budget)) == INF
        close(theory.optimal_reward(lm, r, budget), n * tok.r_max)
    assert float(theory.lam_for_kl(lm, r, 0.0)) == 0.0
    close(theory.optimal_reward(lm, r, 0.0), n * tok.mean(0))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_rate_function_mpmath(x64, name, lam):
    lm, r = make(name)
    tok = Token(*MODELS[name][:2])
    lo, hi = float(tok.r_min), float(tok.r_max)
    mean = float(tok.mean(lam))
    assert abs(float(theory.rate_function(lm, r, mean, lam))) < 1e-28
    for x in (lo + 1e-9, lo + 0.3 * (hi - lo), 0.5 * (mean + hi), hi - 1e-6,
              hi - 1e-12):
        close(theory.rate_function(lm, r, x, lam), tok.rate(mp.mpf(x), lam),
              rtol=1e-11)
    # Exact end points, +inf outside.
    close(theory.rate_function(lm, r, hi, lam), -mp.log(tok.mass(tok.r_max, lam)))
    close(theory.rate_function(lm, r, lo, lam), -mp.log(tok.mass(tok.r_min, lam)))
    for x in (hi + 1e-9, lo - 1.0, INF, -INF):
        assert float(theory.rate_function(lm, r, x, lam)) == INF


@pytest.mark.parametrize("name", ["three", "zero_tie"])
def test_best_of_n_asymptotic_reward(x64, name):
    lm, r = make(name)
    tok = Token(*MODELS[name][:2])
    delta_max = -mp.log(tok.mass(tok.r_max))
    for delta in (1e-8, 0.01, 0.5 * float(delta_max)):
        # x* solves I_0(x*) = delta on the upper branch (Legendre route in mpmath).
        x_star = solve(lambda x, d=delta: tok.rate(x) - d, tok.theta, tok.mean(0),
                       tok.r_max - mp.mpf("1e-9"), coarse=30, tol="1e-20")
        close(theory.best_of_n_asymptotic_reward(lm, r, delta), x_star, rtol=1e-11)
    close(theory.best_of_n_asymptotic_reward(lm, r, 0.0), tok.mean(0))
    close(theory.best_of_n_asymptotic_reward(lm, r, float(delta_max) * 1.01), tok.r_max)


def test_best_of_n_kl_bound(x64):
    for n_cand in (1, 2, 3, 10, 1000, 10**6):
        e = mp.log(n_cand) - mp.mpf(n_cand - 1) / n_cand
        close(theory.best_of_n_kl_bound(num_candidates=n_cand), e, atol=ZERO)
        close(theory.best_of_n_kl_bound(num_candidates=float(n_cand)), e, atol=ZERO)
        close(theory.best_of_n_kl_bound(log_num_candidates=math.log(n_cand)), e,
              rtol=1e-12 if n_cand > 1 else 0.0, atol=ZERO)
    for log_n in (1e-9, 0.3, 0.7, 50.0, 1e4, 1e300):
        e = mp.mpf(log_n) - 1 + mp.exp(-mp.mpf(log_n))
        close(theory.best_of_n_kl_bound(log_num_candidates=log_n), e)
    big = 10**400  # a Python int, beyond any float
    close(theory.best_of_n_kl_bound(num_candidates=big), mp.log(big) - 1)
    assert float(theory.best_of_n_kl_bound(log_num_candidates=INF)) == INF


P_Q = [
    ([0.2, 0.5, 0.3], [0.6, 0.1, 0.3]),
    ([0.0, 0.7, 0.3], [0.5, 0.25, 0.25]),  # p has a zero
    ([0.5, 0.5, 0.0], [0.9, 0.1 - 1e-3, 1e-3]),
]


@pytest.mark.parametrize("p, q", P_Q)
def test_renyi_against_mpmath(x64, p, q):
    # The ideal distributions: the float inputs normalised exactly.
    pm, qm = [mp.mpf(x) / mp.fsum(p) for x in p], [mp.mpf(x) / mp.fsum(q) for x in q]
    support = [(a, b) for a, b in zip(pm, qm, strict=True) if a > 0]
    kl = mp.fsum(a * mp.log(a / b) for a, b in support)
    for alpha in (0.0, 0.3, 1 - 1e-9, 1.0, 1 + 1e-7, 2.5, 40.0, INF):
        if alpha == 1.0:
            expected = kl
        elif alpha == INF:
            expected = max(mp.log(a / b) for a, b in support)
        else:
            al = mp.mpf(alpha)
            s = mp.fsum(a**al * b ** (1 - al) for a, b in support)
            expected = mp.log(s) / (al - 1)
        # atol: the float inputs sum to 1 only within ~1e-16.
        close(theory.renyi_divergence(p, q, alpha), expected, rtol=1e-11, atol=1e-15)
        if alpha != INF:
            if alpha == 1.0:
                h = -mp.fsum(a * mp.log(b) for a, b in support)
            else:
                al = mp.mpf(alpha)
                h = mp.log(mp.fsum(a * b ** (al - 1) for a, b in support)) / (1 - al)
            close(theory.renyi_cross_entropy(p, q, alpha), h, rtol=1e-11, atol=1e-15)
    # q vanishing where p does not: infinite for alpha >= 1, finite below.
    assert float(theory.renyi_divergence([0.5, 0.5], [1.0, 0.0], 1.0)) == INF
    assert float(theory.renyi_divergence([0.5, 0.5], [1.0, 0.0], 2.0)) == INF
    close(theory.renyi_divergence([0.5, 0.5], [1.0, 0.0], 0.5), math.log(2))


def test_bounds_and_hoeffding(x64):
    close(theory.subgaussian_reward_bound(0.3, 1.7), math.sqrt(2 * 0.3 * 1.7))
    assert float(theory.subgaussian_reward_bound(0.3, INF)) == INF
    r = jaxalign.LinearReward([-1.0, 1e300, 2.0])
    lm = jaxalign.MemorylessLM.from_probs([0.5, 0.0, 0.5], length=2)
    close(theory.hoeffding_variance(r, lm), 9 / 4)  # the huge reward has p = 0
    close(theory.hoeffding_variance(jaxalign.LinearReward([-1.0, 2.0])), 9 / 4)


# -- edge cases ------------------------------------------------------------


def test_zero_probability_token_is_invisible(x64):
    """A p = 0 token with a huge reward gives the same answers as removing it."""
    lm, r = make("zero_tie")
    lm3 = jaxalign.MemorylessLM.from_probs([0.4, 0.35, 0.25], length=3)
    r3 = jaxalign.LinearReward([-0.3, 1.7, 1.7])
    for lam in (0.0, 2.0, INF):
        for fn in (theory.kl, theory.reverse_kl, theory.expected_reward,
                   theory.covariance_gain, theory.log_mgf):
            a, b = float(fn(lm, r, lam)), float(fn(lm3, r3, lam))
            assert a == pytest.approx(b, rel=1e-14, abs=1e-300)
            assert not math.isnan(a)
    assert float(theory.max_kl(lm, r)) == pytest.approx(-3 * math.log(0.6), rel=1e-14)
    assert float(theory.rate_function(lm, r, 1.7)) == pytest.approx(-math.log(0.6),
                                                                  rel=1e-14)
    assert float(theory.rate_function(lm, r, 2.0)) == INF
    probs = theory.tilt(lm, r, 50.0).probs
    assert float(probs[1]) == 0.0 and not np.any(np.isnan(probs))


def test_tied_top_rewards(x64):
    """Only the mass of the top class matters: ties behave like one merged token."""
    lm = jaxalign.MemorylessLM.from_probs([0.5, 0.3, 0.2], length=6)
    r = jaxalign.LinearReward([0.0, 1.0, 1.0])
    merged = jaxalign.MemorylessLM.bernoulli(0.5, length=6)
    r2 = jaxalign.LinearReward([0.0, 1.0])
    for budget in (0.01, 2.0, 4.0):
        close(theory.lam_for_kl(lm, r, budget), theory.lam_for_kl(merged, r2, budget),
              rtol=1e-13)
    close(theory.max_kl(lm, r), 6 * math.log(2), rtol=1e-14)
    inf_probs = theory.tilt(lm, r, INF).probs
    np.testing.assert_allclose(inf_probs, [0.0, 0.6, 0.4], rtol=1e-14)


def test_lam_zero_and_very_large(x64):
    lm, r = make("three")
    assert float(theory.kl(lm, r, 0.0)) == 0.0
    assert float(theory.reverse_kl(lm, r, 0.0)) == 0.0
    assert float(theory.log_mgf(lm, r, 0.0)) == 0.0
    np.testing.assert_array_equal(theory.tilt(lm, r, 0.0).probs, lm.probs)
    kl_max = -4 * math.log(0.2)
    for lam in (1e3, 1e6, 1e300, INF):
        close(theory.kl(lm, r, lam), kl_max, rtol=1e-14)
        close(theory.expected_reward(lm, r, lam), 8.0, rtol=1e-15)
        assert float(theory.reverse_kl(lm, r, lam)) > 1e2 or lam == 1e3
        np.testing.assert_array_equal(theory.cumulants(lm, r, 3, lam)[1:], 0.0)
    close(theory.expected_reward(lm, r, -INF), 0.0)


def test_constant_reward(x64):
    lm = jaxalign.MemorylessLM.from_probs([0.2, 0.8], length=5)
    r = jaxalign.LinearReward([1.5, 1.5])
    for lam in (0.0, 3.0, INF):
        assert float(theory.kl(lm, r, lam)) == 0.0
        close(theory.expected_reward(lm, r, lam), 7.5)
    np.testing.assert_allclose(theory.cumulants(lm, r, 4, 2.0), [1.5, 0.0, 0.0, 0.0])
    assert float(theory.max_kl(lm, r)) == 0.0
    assert float(theory.lam_for_kl(lm, r, 1.0)) == INF
    close(theory.optimal_reward(lm, r, 1.0), 7.5)
    assert float(theory.rate_function(lm, r, 1.5)) == 0.0
    assert float(theory.rate_function(lm, r, 1.6)) == INF
    close(theory.best_of_n_asymptotic_reward(lm, r, 0.3), 1.5)


def test_bernoulli_closed_forms(x64):
    """K = 2: the tilt is Bernoulli(q_lam) with q_lam = q e^lam / (1 - q + q e^lam)."""
    q, n = 0.1, 7
    lm = jaxalign.MemorylessLM.bernoulli(q, length=n)
    r = jaxalign.LinearReward([0.0, 1.0])
    for lam in (0.3, 2.0, 9.0):
        ql = q * math.exp(lam) / (1 - q + q * math.exp(lam))
        bern_kl = ql * math.log(ql / q) + (1 - ql) * math.log((1 - ql) / (1 - q))
        close(theory.kl(lm, r, lam), n * bern_kl, rtol=1e-13)
        close(theory.expected_reward(lm, r, lam), n * ql, rtol=1e-14)
        np.testing.assert_allclose(theory.cumulants(lm, r, 3, lam),
                                   [ql, ql * (1 - ql), ql * (1 - ql) * (1 - 2 * ql)],
                                   rtol=1e-12)
    for x in (0.05, 0.5, 0.99):
        bern_rate = x * math.log(x / q) + (1 - x) * math.log((1 - x) / (1 - q))
        close(theory.rate_function(lm, r, x), bern_rate, rtol=1e-13)


# -- properties (hypothesis) --------------------------------------------------


@st.composite
def models(draw):
    """K = 4 always (one compile), but zero weights and tied rewards make the
    effective support anything from 1 to 4 tokens."""
    weights = draw(st.lists(st.one_of(st.just(0.0), st.floats(0.05, 10.0)),
                            min_size=4, max_size=4).filter(lambda w: sum(w) > 0))
    values = st.floats(-3.0, 3.0).map(lambda v: round(v, 6))  # no denormal rewards
    rewards = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0]), values),
                            min_size=4, max_size=4))
    n = draw(st.integers(1, 6))
    probs = np.array(weights) / np.sum(weights)
    return probs, np.array(rewards), n


def _build(model):
    probs, rewards, n = model
    return (jaxalign.MemorylessLM.from_probs(probs, length=n),
            jaxalign.LinearReward(rewards))


def _support_range(model):
    probs, rewards, _ = model
    kept = rewards[probs > 0]
    return kept.min(), kept.max()


_LAM_GRID = np.array([0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0])


@settings(max_examples=30, deadline=None)
@given(models())
def test_kl_nonnegative_and_increasing(model):
    with jax.enable_x64(True):
        lm, r = _build(model)
        curve = np.array([float(theory.kl(lm, r, lam)) for lam in _LAM_GRID])
        assert np.all(curve >= 0)
        assert np.all(np.diff(curve) >= -1e-14 * np.max(curve))
        assert curve[-1] <= float(theory.max_kl(lm, r)) * (1 + 1e-13)


@settings(max_examples=30, deadline=None)
@given(models(), st.floats(1e-9, 0.999))
def test_kl_of_lam_for_kl_is_the_budget(model, frac):
    with jax.enable_x64(True):
        lm, r = _build(model)
        kl_max = float(theory.max_kl(lm, r))
        if kl_max == 0:  # constant reward on the draw
            return
        budget = frac * kl_max
        lam = theory.lam_for_kl(lm, r, budget)
        assert float(theory.kl(lm, r, lam)) == pytest.approx(budget, rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(models(), st.floats(-2.0, 2.0))
def test_rate_function_convex_and_zero_at_mean(model, lam):
    lo, hi = _support_range(model)
    if hi - lo < 1e-3:
        return
    with jax.enable_x64(True):
        lm, r = _build(model)
        mean = float(theory.expected_reward(lm, r, lam)) / lm.length
        assert float(theory.rate_function(lm, r, mean, lam)) <= 1e-20
        xs = np.linspace(lo, hi, 11)[1:-1]
        rates = np.array([float(theory.rate_function(lm, r, x, lam)) for x in xs])
        assert np.all(rates >= 0)
        assert np.all(np.diff(rates, 2) >= -1e-10 * (1 + np.max(rates)))


@settings(max_examples=30, deadline=None)
@given(st.tuples(st.lists(st.floats(0.0, 5.0), min_size=4, max_size=4),
                 st.lists(st.floats(0.01, 5.0), min_size=4, max_size=4)))
def test_renyi_nondecreasing_in_alpha(pq):
    a, b = (np.array(x) for x in pq)
    if a.sum() == 0:
        return
    p, q = a / a.sum(), b / b.sum()
    with jax.enable_x64(True):
        alphas = [0.0, 0.2, 0.5, 0.9, 1.0, 1.1, 2.0, 5.0, INF]
        d = [float(theory.renyi_divergence(p, q, al)) for al in alphas]
    assert np.all(np.diff(d) >= -1e-12 * (1 + np.abs(d[1:])))
    assert d[0] >= -1e-12  # D_0 = -log q(supp p); ill-conditioned for tiny p


@settings(max_examples=30, deadline=None)
@given(models(), st.one_of(st.just(0.0), st.floats(1e-6, 30.0)))
def test_subgaussian_bound_holds(model, lam):
    with jax.enable_x64(True):
        lm, r = _build(model)
        gain = float(theory.covariance_gain(lm, r, lam))
        variance = lm.length * theory.hoeffding_variance(r, lm)  # R: sum of n tokens
        bound = float(theory.subgaussian_reward_bound(variance,
                                                      theory.kl(lm, r, lam)))
        assert gain <= bound * (1 + 1e-12) + 1e-300


# -- dtypes, transforms, docs --------------------------------------------------


def test_float32_in_float32_out(x64):
    lm = jaxalign.MemorylessLM.from_probs(np.array([0.5, 0.3, 0.2], np.float32),
                                          length=4)
    r = jaxalign.LinearReward(np.array([0.0, 1.0, 2.0], np.float32))
    p, q = np.array([0.2, 0.8], np.float32), np.array([0.5, 0.5], np.float32)
    outs = {
        "log_mgf": theory.log_mgf(lm, r, 0.5),
        "cumulants": theory.cumulants(lm, r, 4, 0.5),
        "tilt": theory.tilt(lm, r, 0.5).log_probs,
        "kl": theory.kl(lm, r, 0.5),
        "reverse_kl": theory.reverse_kl(lm, r, 0.5),
        "jeffreys": theory.jeffreys(lm, r, 0.5),
        "max_kl": theory.max_kl(lm, r),
        "expected_reward": theory.expected_reward(lm, r, 0.5),
        "lam_for_kl": theory.lam_for_kl(lm, r, 1.0),
        "optimal_reward": theory.optimal_reward(lm, r, 1.0),
        "rate_function": theory.rate_function(lm, r, 1.5, 0.5),
        "scgf": theory.scgf(lm, r, 0.3, 0.5),
        "scgf_renyi": theory.scgf_renyi(lm, r, 0.3, 0.5),
        "scgf_renyi_divergence": theory.scgf_renyi_divergence(lm, r, 0.3, 0.5),
        "renyi_divergence": theory.renyi_divergence(p, q, 2.0),
        "renyi_cross_entropy": theory.renyi_cross_entropy(p, q, 2.0),
        "best_of_n_asymptotic_reward": theory.best_of_n_asymptotic_reward(lm, r, 0.1),
        "best_of_n_kl_bound": theory.best_of_n_kl_bound(
            log_num_candidates=np.float32(3.0)),
        "subgaussian_reward_bound": theory.subgaussian_reward_bound(np.float32(0.25),
                                                                    1.0),
        "hoeffding_variance": theory.hoeffding_variance(r),
        "jeffreys_gain": theory.jeffreys_gain(lm, r, 0.5),
        "covariance_gain": theory.covariance_gain(lm, r, 0.5),
    }
    # (theory.report returns plain Python floats: the JSON data of the CLI.)
    assert set(outs) == set(theory.__all__) - {"report"}
    for name, value in outs.items():
        assert value.dtype == jnp.float32, name
        assert np.all(np.isfinite(np.asarray(value))), name


def test_float32_is_sane(x64):
    """float32 in (under x64, so nothing is silently promoted): a few float32 ulps
    from the 50-digit truth."""
    probs, rewards, n = MODELS["three"]
    lm = jaxalign.MemorylessLM.from_probs(np.array(probs, np.float32), length=n)
    r = jaxalign.LinearReward(np.array(rewards, np.float32))
    tok = Token(probs, rewards)
    for lam in (1e-3, 0.7, 30.0):
        assert float(theory.kl(lm, r, lam)) == pytest.approx(4 * float(tok.kl(lam)),
                                                             rel=1e-5)
    lam = theory.lam_for_kl(lm, r, 1.0)
    assert float(theory.kl(lm, r, lam)) == pytest.approx(1.0, rel=1e-5)
    x = float(np.float32(1.9))
    assert float(theory.rate_function(lm, r, x)) == pytest.approx(
        float(tok.rate(mp.mpf(x))), rel=1e-4)


_SCALAR_FNS = (theory.log_mgf, theory.kl, theory.reverse_kl, theory.jeffreys,
               theory.expected_reward, theory.covariance_gain, theory.jeffreys_gain)


@jax.jit
def _all_at(lm, r, lam, budget, x):
    return ([fn(lm, r, lam) for fn in _SCALAR_FNS], theory.lam_for_kl(lm, r, budget),
            theory.rate_function(lm, r, x), theory.cumulants(lm, r, 4, lam))


def test_vmap_and_jit_over_scalars(x64):
    lm, r = make("three")
    lams = jnp.array([0.0, 0.5, 3.0])
    budgets = jnp.array([1e-6, 1.0, 1e3])
    xs = jnp.array([0.1, 0.9, 3.0])
    values, lam_b, rates, cum = jax.vmap(_all_at, in_axes=(None, None, 0, 0, 0))(
        lm, r, lams, budgets, xs)
    assert cum.shape == (3, 4)
    for i in range(3):
        lam, b, x = float(lams[i]), float(budgets[i]), float(xs[i])
        for fn, batched in zip(_SCALAR_FNS, values, strict=True):
            close(batched[i], fn(lm, r, lam), rtol=1e-14, atol=ZERO)
        close(lam_b[i], theory.lam_for_kl(lm, r, b), rtol=1e-14)
        close(rates[i], theory.rate_function(lm, r, x), rtol=1e-14)
        np.testing.assert_allclose(cum[i], theory.cumulants(lm, r, 4, lam), rtol=1e-14)


def test_docstring_examples_run(x64):
    failures, tried = doctest.testmod(theory, optionflags=doctest.ELLIPSIS)[:2]
    assert tried > 20 and failures == 0


def test_every_public_function_documented():
    for name in theory.__all__:
        doc = getattr(theory, name).__doc__
        assert doc and ".. math::" in doc and "Examples:" in doc, name
        assert "References:" in doc, name


def test_light_compiled_solvers_work_top_level_nested_and_batched(x64):
    # theory's programs are compiled with light compiler options (jaxalign._types.
    # light_jit), which JAX takes on top-level calls only: a call under another jit,
    # on traced arguments or on constants, and under vmap or grad must still work
    # and agree with the top-level call.  The reference is mpmath's root of
    # KL(lam) = delta for a Bernoulli(1/2) token with rewards 0 and 1.
    lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
    r = jaxalign.LinearReward([0.0, 1.0])
    mp.mp.dps = 30

    def kl_of(lam):  # per-token KL of the tilted Bernoulli(1/2)
        q = mp.e**lam / (1 + mp.e**lam)
        return q * mp.log(2 * q) + (1 - q) * mp.log(2 * (1 - q))

    expected = [float(mp.findroot(lambda lam, d=d: kl_of(lam) - d, 1.0))
                for d in (0.1, 0.3)]
    top = [float(theory.lam_for_kl(lm, r, d)) for d in (0.1, 0.3)]
    traced = jax.jit(lambda d: theory.lam_for_kl(lm, r, d))
    constant = jax.jit(lambda: theory.lam_for_kl(lm, r, 0.1))
    batched = jax.vmap(lambda d: theory.lam_for_kl(lm, r, d))(jnp.array([0.1, 0.3]))
    np.testing.assert_allclose(top, expected, rtol=1e-13)
    np.testing.assert_allclose([float(traced(0.1)), float(traced(0.3))], expected,
                               rtol=1e-13)
    np.testing.assert_allclose(float(constant()), expected[0], rtol=1e-13)
    np.testing.assert_allclose(batched, expected, rtol=1e-13)
    # Under grad: d KL / d lam = lam Var_lam(r), Var = q (1 - q).
    q = 1 / (1 + math.exp(-expected[0]))
    np.testing.assert_allclose(jax.grad(lambda lam: theory.kl(lm, r, lam))(expected[0]),
                               expected[0] * q * (1 - q), rtol=1e-12)
