"""Markov models: every exact quantity against brute-force enumeration of all K^n
sequences (itertools + NumPy, an independent route), the rank-one and s = 0 sticky
chains against MemorylessLM, deep tails against closed forms, bad input, and Monte
Carlo against the exact laws."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import jaxalign
from jaxalign import exact, markov, policies, theory

K, N = 3, 5
MU = np.array([0.5, 0.3, 0.2])
P = np.array([[0.6, 0.4, 0.0],   # a zero transition: legal and exact
              [0.1, 0.3, 0.6],
              [0.5, 0.25, 0.25]])
R = np.array([0.0, 1.0, 2.5])
PAIR = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0], [1.5, 0.0, 1.0]])
PAIR_FIRST = np.array([0.5, 0.0, 1.0])
LAM = 0.7
with np.errstate(divide="ignore"):
    LOG_P = np.log(P)
TOL = dict(rel=1e-12, abs=1e-13)

POLICIES = [
    policies.Base(), policies.Tilted(0.7), policies.Tilted(-1.3),
    policies.BestOfN(3), policies.BestOfN(log_num_candidates=50.0),
    policies.SoftBestOfN(3, 1.3), policies.Rejection(6.0),
    policies.BestOfPoisson(2.0), policies.ChiSquared(0.3),
    policies.WinRateOptimal(2.0),
]


# ---------------------------------------------------------------- the enumeration


class Enum:
    """All K^n sequences of a chain with their probabilities and rewards, in NumPy."""

    def __init__(self, mu, trans, first, pair, n):
        k = len(mu)
        self.seqs = np.array(list(itertools.product(range(k), repeat=n)))
        y = self.seqs
        steps = [trans if trans.ndim == 2 else trans[t] for t in range(n - 1)]
        prob = mu[y[:, 0]].copy()
        reward = first[y[:, 0]].copy()
        for t in range(n - 1):
            prob *= steps[t][y[:, t], y[:, t + 1]]
            reward += pair[y[:, t], y[:, t + 1]]
        self.prob, self.reward, self.n = prob, reward, n

    def tilted(self, lam):
        w = self.prob * np.exp(lam * self.reward)
        return w / w.sum(), math.log(w.sum())

    def law(self):
        values = np.unique(np.round(self.reward, 9))
        pmf = np.array([self.prob[np.isclose(self.reward, v)].sum() for v in values])
        return values, pmf


def _kl(a, b):
    on = a > 0
    if np.any(on & (b == 0)):
        return math.inf
    return float(np.sum(a[on] * np.log(a[on] / b[on])))


def _linear_enum(n=N, mu=MU, trans=P, r=R):
    return Enum(mu, trans, r, np.broadcast_to(r[None, :], trans.shape[-2:]), n)


def _model(n=N):
    return jaxalign.MarkovLM.from_probs(MU, P, length=n), jaxalign.LinearReward(R)


def _pair_model(n=N):
    return (jaxalign.MarkovLM.from_probs(MU, P, length=n),
            jaxalign.PairReward(PAIR, PAIR_FIRST),
            Enum(MU, P, PAIR_FIRST, PAIR, n))


# ------------------------------------------------------------------- model checks


def test_constructors(key, x64):
    lm, _ = _model()
    np.testing.assert_allclose(np.asarray(lm.trans_probs), P, rtol=1e-15, atol=0)
    assert float(lm.trans_probs[0, 2]) == 0.0  # exact zero
    logits = jaxalign.MarkovLM.from_logits(np.log(MU) + 3.0, LOG_P - 1.0,
                                           length=N)
    np.testing.assert_allclose(np.asarray(logits.trans_probs), P, rtol=1e-15)
    d = jaxalign.MarkovLM.dirichlet(key, 4, 0.3, length=6)
    np.testing.assert_allclose(np.asarray(d.trans_probs).sum(axis=1), 1.0, rtol=1e-14)
    s = jaxalign.MarkovLM.sticky(MU, 0.25, length=N)
    want = 0.25 * np.eye(K) + 0.75 * MU[None, :]
    np.testing.assert_allclose(np.asarray(s.trans_probs), want, rtol=1e-15)
    leaves, tree = jax.tree.flatten(lm)
    assert jax.tree.unflatten(tree, leaves).length == N


@pytest.mark.parametrize("make, match", [
    (lambda: jaxalign.MarkovLM.from_probs(MU, P * 1.01, length=3), "trans"),
    (lambda: jaxalign.MarkovLM.from_probs(MU, np.abs(P) * [[1], [1], [-1]],
                                          length=3), "trans"),
    (lambda: jaxalign.MarkovLM.from_probs([0.5, 0.6, -0.1], P, length=3), "init"),
    (lambda: jaxalign.MarkovLM.from_probs(MU, P[:2, :2], length=3), "trans"),
    (lambda: jaxalign.MarkovLM.from_probs(MU, np.stack([P] * 3), length=3), "trans"),
    (lambda: jaxalign.MarkovLM.from_probs(MU, np.nan * P, length=3), "trans"),
    (lambda: jaxalign.MarkovLM(np.log(MU), LOG_P + 0.1, 3), "log_trans"),
    (lambda: jaxalign.MarkovLM(np.log(MU) + 0.1, LOG_P, 3), "log_init"),
    (lambda: jaxalign.MarkovLM.from_logits([0.0, 1.0], [[0.0, -np.inf],
                                                         [-np.inf, -np.inf]],
                                           length=3), "trans_logits"),
    (lambda: jaxalign.MarkovLM.sticky(MU, 1.5, length=3), "stickiness"),
    (lambda: jaxalign.MarkovLM.from_probs(MU, P, length=0), "length"),
    (lambda: markov.kl(_model()[0], jaxalign.LinearReward([0.0, 1.0]), 1.0),
     "reward"),
    (lambda: markov.kl(_model()[0], jaxalign.PairReward(np.zeros((2, 2))), 1.0),
     "reward"),
    (lambda: markov.kl(jaxalign.MemorylessLM.from_probs(MU, length=3),
                       jaxalign.LinearReward(R), 1.0), "lm"),
    (lambda: markov.kl(*_model(), float("nan")), "lam"),
    (lambda: markov.lam_for_kl(*_model(), -1.0), "kl_budget"),
    (lambda: jaxalign.PairReward(PAIR, [0.0, 1.0]), "first_rewards"),
    (lambda: jaxalign.PairReward(PAIR[:2]), "pair_rewards"),
    (lambda: markov.chain_kl(_model(3)[0], _model(4)[0]), "same K and length"),
    (lambda: markov.reward_law(*_model(), algorithm="types"), "algorithm"),
])
def test_bad_input_raises_value_error_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------- exact against enumeration


@pytest.mark.parametrize("kind", ["linear", "pair"])
def test_tilt_against_enumeration(kind, x64):
    if kind == "linear":
        lm, reward = _model()
        en = _linear_enum()
    else:
        lm, reward, en = _pair_model()
    phi, logz = en.tilted(LAM)
    assert float(markov.log_partition(lm, reward, LAM)) == pytest.approx(logz, **TOL)
    mean = phi @ en.reward
    var = phi @ (en.reward - mean) ** 2
    s = markov.tilt_summary(lm, reward, LAM)
    assert float(s.log_partition) == pytest.approx(logz, **TOL)
    assert float(s.mean) == pytest.approx(mean, **TOL)
    assert float(s.variance) == pytest.approx(var, **TOL)
    assert float(s.kl) == pytest.approx(_kl(phi, en.prob), **TOL)
    assert float(s.kl) == pytest.approx(LAM * mean - logz, **TOL)
    assert float(markov.reverse_kl(lm, reward, LAM)) == pytest.approx(
        _kl(en.prob, phi), **TOL)
    # The policy chain: its conditionals are those of phi, position by position.
    chain = markov.tilt(lm, reward, LAM)
    y = en.seqs
    first = np.array([phi[y[:, 0] == a].sum() for a in range(K)])
    np.testing.assert_allclose(np.exp(np.asarray(chain.log_init)), first, rtol=1e-12)
    trans = np.exp(np.asarray(chain.log_trans))
    for t in range(1, N):
        for a in range(K):
            at = y[:, t - 1] == a
            cond = np.array([phi[at & (y[:, t] == b)].sum() for b in range(K)])
            np.testing.assert_allclose(trans[t - 1, a], cond / cond.sum(),
                                       rtol=1e-12, atol=1e-15)
    # Messages: h_t(a) = E[exp(lam sum_{s>t} r) | y_t = a] (enumerated from t).
    h = np.exp(np.asarray(markov.log_messages(lm, reward, LAM)))
    assert h.shape == (N, K)
    np.testing.assert_allclose(h[-1], 1.0, rtol=0)
    if kind == "linear":
        for a in range(K):
            tail = Enum(np.eye(K)[a], P, np.zeros(K), en_pair(R), 3)
            want = tail.prob @ np.exp(LAM * tail.reward)
            assert h[N - 3, a] == pytest.approx(want, rel=1e-12)
    # A chain's expected reward and KL by the forward recursions.
    assert float(markov.chain_expected_reward(chain, reward)) == pytest.approx(
        mean, **TOL)
    assert float(markov.chain_kl(chain, lm)) == pytest.approx(_kl(phi, en.prob), **TOL)


def en_pair(r):
    return np.broadcast_to(r[None, :], (len(r), len(r)))


@pytest.mark.parametrize("kind", ["linear", "pair"])
def test_budgets_and_frontier_against_enumeration(kind, x64):
    if kind == "linear":
        lm, reward = _model()
        en = _linear_enum()
    else:
        lm, reward, en = _pair_model()
    top = en.reward.max()
    log_top = math.log(en.prob[np.isclose(en.reward, top)].sum())
    assert float(markov.max_kl(lm, reward)) == pytest.approx(-log_top, **TOL)
    for budget in (1e-8, 1e-3, 0.5, 2.0):
        lam = float(markov.lam_for_kl(lm, reward, budget))
        phi, _ = en.tilted(lam)
        assert _kl(phi, en.prob) == pytest.approx(budget, rel=1e-11 if budget > 1e-4
                                                  else 1e-7)
        assert float(markov.optimal_reward(lm, reward, budget)) == pytest.approx(
            phi @ en.reward, **TOL)
    assert float(markov.lam_for_kl(lm, reward, 0.0)) == 0.0
    assert math.isinf(float(markov.lam_for_kl(lm, reward, -log_top + 1e-9)))
    assert float(markov.optimal_reward(lm, reward, 100.0)) == pytest.approx(top, **TOL)


def test_myopic_tilt_and_lookahead_gap_against_enumeration(x64):
    lm, reward = _model()
    en = _linear_enum()
    w = np.exp(LAM * R)
    mu_t = MU * w / (MU @ w)
    p_t = P * w[None, :] / (P @ w)[:, None]
    my = Enum(mu_t, p_t, R, en_pair(R), N)
    phi, _ = en.tilted(LAM)
    gap = markov.lookahead_gap(lm, reward, LAM)
    assert float(gap.myopic_kl) == pytest.approx(_kl(my.prob, en.prob), **TOL)
    assert float(gap.myopic_reward) == pytest.approx(my.prob @ my.reward, **TOL)
    assert float(gap.kl_to_myopic) == pytest.approx(_kl(phi, my.prob), **TOL)
    # The frontier at the myopic KL, by enumeration (bisection on lam).
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _kl(en.tilted(mid)[0], en.prob) < _kl(
            my.prob, en.prob) else (lo, mid)
    best = en.tilted(lo)[0] @ en.reward
    assert float(gap.optimal_reward) == pytest.approx(best, rel=1e-11)
    assert float(gap.reward_shortfall) > 1e-3  # memory makes look-ahead matter


def test_power_and_temperature_chains_against_enumeration(x64):
    lm, reward = _model()
    en = _linear_enum()
    alpha = 2.5
    power = en.prob ** alpha / np.sum(en.prob ** alpha)
    with np.errstate(divide="ignore"):
        rows = P ** alpha / np.sum(P ** alpha, axis=1, keepdims=True)
    temp = Enum(MU ** alpha / np.sum(MU ** alpha), rows, R, en_pair(R), N).prob
    chain_power = markov.power_chain(lm, alpha)
    chain_temp = markov.temperature_chain(lm, alpha)
    got = Enum(np.exp(np.asarray(chain_power.log_init)),
               np.exp(np.asarray(chain_power.log_trans)), R, en_pair(R), N).prob
    np.testing.assert_allclose(got, power, rtol=1e-12, atol=1e-300)
    assert float(markov.chain_kl(chain_power, chain_temp)) == pytest.approx(
        _kl(power, temp), **TOL)
    assert float(markov.chain_kl(chain_temp, chain_power)) == pytest.approx(
        _kl(temp, power), **TOL)
    assert _kl(power, temp) > 1e-3  # with memory they differ
    iid = jaxalign.MarkovLM.sticky(MU, 0.0, length=N)
    assert abs(float(markov.chain_kl(markov.power_chain(iid, alpha),
                                     markov.temperature_chain(iid, alpha)))) < 1e-13


@pytest.mark.parametrize("kind", ["linear", "pair", "tilted"])
def test_reward_law_against_enumeration(kind, x64):
    if kind == "pair":
        lm, reward, en = _pair_model()
    else:
        lm, reward = _model()
        en = _linear_enum()
    if kind == "tilted":  # a time-inhomogeneous chain: the law of R under phi
        lm = markov.tilt(lm, reward, LAM)
        en.prob = en.tilted(LAM)[0]
    law = markov.reward_law(lm, reward)
    values, pmf = en.law()
    got_v, got_lp = np.asarray(law.values), np.asarray(law.log_pmf)
    on = np.isfinite(got_lp)
    np.testing.assert_allclose(got_v[on], values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_lp[on], np.log(pmf), rtol=0, atol=1e-12)
    assert np.all(np.diff(got_v) > 0)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
def test_every_policy_exact_through_policy_law(policy, x64):
    """exact.policy_law(MarkovLM, ...) against sequence-level enumeration: the
    registry's weight g on the enumerated law of R, spread over all K^n sequences
    (pi(y) = P(y) g(R(y))), then E, Var, KL, reverse KL and the win rate by sums
    over sequences."""
    lm, reward = _model()
    en = _linear_enum()
    values, pmf = en.law()
    lq = np.asarray(policy.log_pmf(values, np.log(pmf)))
    g = np.exp(lq) / pmf
    idx = np.searchsorted(values, np.round(en.reward, 9))
    pi = en.prob * g[idx]
    law = exact.policy_law(lm, reward, policy)
    mean = pi @ en.reward
    win = np.sum(pi[:, None] * en.prob[None, :] * (
        1 + np.sign(en.reward[:, None] - en.reward[None, :])) / 2)
    assert float(law.expected_reward) == pytest.approx(mean, **TOL)
    assert float(law.variance) == pytest.approx(pi @ (en.reward - mean) ** 2, **TOL)
    assert float(law.kl) == pytest.approx(_kl(pi, en.prob), **TOL)
    assert float(law.reverse_kl) == pytest.approx(_kl(en.prob, pi), **TOL)
    assert float(law.win_rate) == pytest.approx(win, **TOL)


def test_every_registered_policy_is_checked():
    assert {type(p).name for p in POLICIES} == set(policies.names())


def test_best_of_two_and_tilt_by_sequence_pairs(x64):
    """Two policies defined at the sequence level, with no reward law at all:
    best-of-2 over all pairs of sequences (ties split evenly), and the tilt."""
    lm, reward = _model()
    en = _linear_enum()
    share = (1 + np.sign(en.reward[:, None] - en.reward[None, :])) / 2
    w = 2 * en.prob * (share @ en.prob)  # y wins against y' (both orders)
    law = exact.policy_law(lm, reward, policies.BestOfN(2))
    assert w.sum() == pytest.approx(1.0, abs=1e-14)
    assert float(law.kl) == pytest.approx(_kl(w, en.prob), **TOL)
    assert float(law.expected_reward) == pytest.approx(w @ en.reward, **TOL)
    tilted = exact.policy_law(lm, reward, policies.Tilted(LAM))
    assert float(tilted.kl) == pytest.approx(_kl(en.tilted(LAM)[0], en.prob), **TOL)


# ------------------------------------------------------------ memoryless reductions


def _reductions(n):
    base = jaxalign.MemorylessLM.from_probs(MU, length=n)
    rank_one = jaxalign.MarkovLM.from_probs(MU, np.stack([MU] * K), length=n)
    return base, [rank_one, jaxalign.MarkovLM.sticky(MU, 0.0, length=n),
                  jaxalign.MarkovLM.from_memoryless(base)]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["rank_one", "sticky_0", "from_iid"])
def test_memoryless_chains_reproduce_memoryless_lm(which, x64):
    n = N
    base, chains = _reductions(n)
    lm, reward = chains[which], jaxalign.LinearReward(R)
    for lam in (-0.4, LAM):
        s = markov.tilt_summary(lm, reward, lam)
        kappa = theory.cumulants(base, reward, 2, lam)
        assert float(s.log_partition) == pytest.approx(
            n * float(theory.log_mgf(base, reward, lam)), **TOL)
        assert float(s.mean) == pytest.approx(n * float(kappa[0]), **TOL)
        assert float(s.variance) == pytest.approx(n * float(kappa[1]), **TOL)
        assert float(s.kl) == pytest.approx(float(theory.kl(base, reward, lam)), **TOL)
        assert float(markov.reverse_kl(lm, reward, lam)) == pytest.approx(
            float(theory.reverse_kl(base, reward, lam)), **TOL)
        chain = markov.tilt(lm, reward, lam)
        want = np.asarray(theory.tilt(base, reward, lam).probs)
        np.testing.assert_allclose(np.exp(np.asarray(chain.log_trans)),
                                   np.broadcast_to(want, (n - 1, K, K)), rtol=1e-12)
        np.testing.assert_allclose(np.exp(np.asarray(markov.log_messages(
            lm, reward, lam))[:, 0]), np.exp(float(theory.log_mgf(base, reward, lam))
                                             * np.arange(n - 1, -1, -1)), rtol=1e-12)
        gap = markov.lookahead_gap(lm, reward, lam) if lam > 0 else None
        if gap is not None:
            assert abs(float(gap.kl_to_myopic)) < 1e-13
            assert abs(float(gap.reward_shortfall)) < 1e-9
    assert float(markov.max_kl(lm, reward)) == pytest.approx(
        float(theory.max_kl(base, reward)), **TOL)
    for budget in (0.01, 1.0):
        assert float(markov.lam_for_kl(lm, reward, budget)) == pytest.approx(
            float(theory.lam_for_kl(base, reward, budget)), rel=1e-11)
        assert float(markov.optimal_reward(lm, reward, budget)) == pytest.approx(
            float(theory.optimal_reward(base, reward, budget)), **TOL)
    law, want = markov.reward_law(lm, reward), exact.reward_law(base, reward)
    np.testing.assert_allclose(np.asarray(law.values), np.asarray(want.values),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(law.log_pmf), np.asarray(want.log_pmf),
                               rtol=0, atol=1e-12)
    for policy in POLICIES:
        got = exact.policy_law(lm, reward, policy)
        ref = exact.policy_law(base, reward, policy)
        for field in ("expected_reward", "variance", "kl", "reverse_kl", "win_rate"):
            assert float(getattr(got, field)) == pytest.approx(
                float(getattr(ref, field)), rel=1e-11, abs=1e-12), (policy, field)


# ----------------------------------------------------------------- long sequences


def test_long_chain_log_space_and_deep_tail(x64):
    """n = 10^4: no underflow (log Z of the rank-one chain is n Λ); the law of R at
    n = 1000 keeps relative accuracy at P(R = n) = p (s + (1 - s) p)^{n-1} ~ 1e-700."""
    n = 10_000
    base, chains = _reductions(n)
    reward = jaxalign.LinearReward(R)
    got = float(markov.log_partition(chains[0], reward, 2.0))
    assert got == pytest.approx(n * float(theory.log_mgf(base, reward, 2.0)), rel=1e-12)
    s, p, m = 0.3, 0.2, 1000
    lm = jaxalign.MarkovLM.sticky([1 - p, p], s, length=m)
    law = markov.reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
    lp = np.asarray(law.log_pmf)
    assert np.all(np.isfinite(lp))
    want_top = math.log(p) + (m - 1) * math.log(s + (1 - s) * p)
    assert lp[-1] == pytest.approx(want_top, rel=1e-12)
    want_bottom = math.log(1 - p) + (m - 1) * math.log(s + (1 - s) * (1 - p))
    assert lp[0] == pytest.approx(want_bottom, rel=1e-12)
    # One step short of the top: the single 0 sits at the start, the end or inside.
    a, b = s + (1 - s) * p, (1 - s) * p      # stay at 1, enter 1 from 0
    c = (1 - s) * (1 - p)                     # leave 1 for 0
    la = math.log(a)
    near = np.logaddexp.reduce([
        math.log((1 - p) * b) + (m - 2) * la,                # 0 first
        math.log(p * c) + (m - 2) * la,                      # 0 last
        math.log((m - 2) * p * c * b) + (m - 3) * la])       # 0 inside
    assert lp[-2] == pytest.approx(near, rel=1e-12)
    assert float(lse_total(lp)) == pytest.approx(0.0, abs=1e-12)


def test_scaled_product_falls_back_where_underflow_matters(x64):
    """Token 1 is reachable only from a state e^800 below the column's largest:
    the scaled product would give 0, the fallback gives the exact value."""
    f = jnp.array([[0.0, -1.0], [-800.0, -2.0]])
    log_p = jnp.log(jnp.array([[1.0, 0.0], [0.5, 0.5]]))
    out = np.asarray(markov._log_matmul(f, log_p))
    want = np.array([[np.logaddexp(0.0, -800.0 + math.log(0.5)),
                      np.logaddexp(-1.0, -2.0 + math.log(0.5))],
                     [-800.0 + math.log(0.5), -2.0 + math.log(0.5)]])
    np.testing.assert_allclose(out, want, rtol=1e-15)


def test_law_dp_redoes_deep_underflow_with_the_fallback(x64):
    """The DP runs scaled products only and redoes the law with the exact
    fallback when a step dropped a state that matters: token 2 is reachable only
    from token 1, e^800 below token 0 in the first step's column, so
    P(S = 3) = e^-800 exactly (the scaled products alone give 0)."""
    from jaxalign.markov import _law

    lm = jaxalign.MarkovLM.from_logits(
        [0.0, -800.0, -np.inf],
        [[0.0, -np.inf, -np.inf], [-np.inf, -np.inf, 0.0], [-np.inf, -np.inf, 0.0]],
        length=4)
    law = markov.reward_law(lm, jaxalign.LinearReward([0.0, 0.0, 1.0]))
    lp = np.asarray(law.log_pmf)
    assert lp.shape == (5,) and lp[3] == pytest.approx(-800.0, rel=1e-14)
    assert lp[0] == pytest.approx(0.0, abs=1e-300)
    assert np.all(np.isneginf(lp[[1, 2, 4]]))
    k = jnp.array([0, 0, 1])
    args = (lm.log_init, lm.log_trans, k, jnp.broadcast_to(k, (3, 3)), k, 4, 5, None)
    fast, deep = _law._law_dp(*args, fallback=False)
    assert bool(deep) and np.isneginf(float(fast[3]))
    exact_, deep_after = _law._law_dp(*args, fallback=True)
    assert not bool(deep_after)
    np.testing.assert_array_equal(np.asarray(exact_), lp)


def lse_total(lp):
    return np.logaddexp.reduce(lp)


# ---------------------------------------------------------------------- Monte Carlo


def test_sampling_against_exact_laws(key, x64):
    """Base chain and the tilt: mean reward z-scores (|z| < 5) and a chi-square test
    of the law of R (p > 1e-4), fixed keys."""
    lm, reward = _model(6)
    num = 20_000
    for i, chain in enumerate([lm, markov.tilt(lm, reward, LAM)]):
        y = markov.sample(jax.random.fold_in(key, i), chain, num)
        assert y.shape == (num, 6)
        r = np.asarray(reward(y))
        law = markov.reward_law(chain, reward)
        v, pmf = np.asarray(law.values), np.exp(np.asarray(law.log_pmf))
        mean = pmf @ v
        sd = math.sqrt(pmf @ (v - mean) ** 2)
        assert abs(r.mean() - mean) / (sd / math.sqrt(num)) < 5
        counts = np.array([np.sum(np.isclose(r, x)) for x in v])
        big = pmf * num >= 5
        obs = np.r_[counts[big], counts[~big].sum()]
        exp_ = np.r_[pmf[big], pmf[~big].sum()] * num
        keep = exp_ > 0
        _, pval = scipy.stats.chisquare(obs[keep], exp_[keep] * obs.sum()
                                        / exp_[keep].sum())
        assert pval > 1e-4
        assert not np.any(counts[pmf == 0])  # never a zero-probability value
    # A zero transition is never taken.
    y = np.asarray(markov.sample(key, lm, 2000))
    assert not np.any((y[:, :-1] == 0) & (y[:, 1:] == 2))


# ------------------------------------------------------- Perron–Frobenius asymptotics


def test_perron_identities_and_finite_n_rates(x64):
    """Q rows sum to 1, πQ = π, dΛ/dλ by autodiff = π·Q·r, KL rate through Q =
    λΛ' - Λ, Λ against a symmetric eigensolver (the sticky chain is reversible),
    and finite-n E/n, Var/n, KL/n approach the rates with a gap exactly ~ c/n."""
    s = 0.6
    lm = jaxalign.MarkovLM.sticky(MU, s, length=1)
    reward = jaxalign.LinearReward(R)
    pr = markov.perron(lm, reward, LAM)
    q, pi = np.exp(np.asarray(pr.log_twisted)), np.asarray(pr.stationary)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(pi @ q, pi, rtol=1e-13)
    assert float(np.exp(pr.log_left) @ np.exp(pr.log_right)) == pytest.approx(1.0)
    grad = jax.grad(lambda l: markov.scgf(lm, reward, l))(LAM)
    assert float(grad) == pytest.approx(float(pr.reward_rate), **TOL)
    assert float(pr.kl_rate) == pytest.approx(
        LAM * float(pr.reward_rate) - float(pr.scgf), **TOL)
    # Reversible w.r.t. MU: E^{1/2} D^{1/2} P D^{-1/2} E^{1/2} is symmetric.
    trans = s * np.eye(K) + (1 - s) * MU[None, :]
    sym = np.diag(np.sqrt(MU)) @ trans @ np.diag(1 / np.sqrt(MU))
    half = np.diag(np.exp(0.5 * LAM * R))
    rho = np.linalg.eigvalsh(half @ (sym + sym.T) / 2 @ half).max()
    assert float(pr.scgf) == pytest.approx(math.log(rho), **TOL)
    kappa = np.asarray(markov.cumulant_rates(lm, reward, 2, LAM))
    assert kappa[0] == pytest.approx(float(pr.reward_rate), **TOL)
    # I(Λ'(λ)) = λΛ' - Λ, and x* = limit_reward_per_token solves I(x*) = δ.
    assert float(markov.rate_function(lm, reward, kappa[0])) == pytest.approx(
        float(pr.kl_rate), rel=1e-10)
    x_star = float(markov.limit_reward_per_token(lm, reward, 0.2))
    assert float(markov.rate_function(lm, reward, x_star)) == pytest.approx(0.2,
                                                                           rel=1e-10)
    gaps = []
    for n in (200, 400):
        t = markov.tilt_summary(jaxalign.MarkovLM.sticky(MU, s, length=n), reward,
                                LAM)
        gaps.append(n * np.array([float(t.mean) / n - kappa[0],
                                  float(t.variance) / n - kappa[1],
                                  float(t.kl) / n - float(pr.kl_rate),
                                  float(t.log_partition) / n - float(pr.scgf)]))
    np.testing.assert_allclose(gaps[0], gaps[1], rtol=1e-6)  # gap = c/n exactly
    assert np.all(np.abs(gaps[0]) > 1e-3)  # and not zero: memory shows at finite n


def test_perron_of_memoryless_chains_is_the_memoryless_theory(x64):
    base = jaxalign.MemorylessLM.from_probs(MU, length=1)
    lm, reward = jaxalign.MarkovLM.sticky(MU, 0.0, length=1), jaxalign.LinearReward(R)
    pr = markov.perron(lm, reward, LAM)
    assert float(pr.scgf) == pytest.approx(float(theory.log_mgf(base, reward, LAM)),
                                           **TOL)
    assert float(pr.kl_rate) == pytest.approx(float(theory.kl(base, reward, LAM)),
                                              **TOL)
    np.testing.assert_allclose(np.asarray(markov.cumulant_rates(lm, reward, 2, LAM)),
                               np.asarray(theory.cumulants(base, reward, 2, LAM)),
                               rtol=1e-10)
    for delta in (0.05, 0.5):
        assert float(lm.limit_reward_per_token(reward, delta)) == pytest.approx(
            float(theory.best_of_n_asymptotic_reward(base, reward, delta)), rel=1e-11)
    for x in (0.3, 1.2, 2.4):
        assert float(markov.rate_function(lm, reward, x)) == pytest.approx(
            float(theory.rate_function(base, reward, x)), rel=1e-10)
    assert math.isinf(float(markov.rate_function(lm, reward, 3.0)))
    q = np.array([0.2, 0.5, 0.3])
    chain_q = jaxalign.MarkovLM.sticky(q, 0.0, length=1)
    for alpha in (0.5, 2.0):
        assert float(markov.renyi_rate(chain_q, lm, alpha)) == pytest.approx(
            float(theory.renyi_divergence(q, MU, alpha)), **TOL)
    sticky = jaxalign.MarkovLM.sticky(MU, 0.5, length=1)
    assert abs(float(markov.renyi_rate(sticky, sticky, 2.0))) < 1e-13


def test_tilt_rates_against_an_eigen_solve_and_finite_n(x64):
    """tilt_rates and lam_for_kl_rate of a non-reversible chain against
    numpy.linalg.eigvals on P_λ (derivatives by central differences), and the
    finite-n per-token values approach them with a gap ~ c/n."""
    init = np.array([0.2, 0.5, 0.3])
    trans = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.1, 0.7]])
    reward = jaxalign.LinearReward(R)

    def scgf(lam):
        return math.log(max(np.linalg.eigvals(trans * np.exp(lam * R)[None, :]).real))

    def eig_rates(lam, h=1e-4):
        d1 = (scgf(lam + h) - scgf(lam - h)) / (2 * h)
        d2 = (scgf(lam + h) - 2 * scgf(lam) + scgf(lam - h)) / h**2
        return scgf(lam), d1, d2, lam * d1 - scgf(lam)

    lm = jaxalign.MarkovLM.from_probs(init, trans, length=1)
    got = lm.tilt_rates(reward, LAM)
    want = eig_rates(LAM)
    np.testing.assert_allclose([float(v) for v in got], want, rtol=1e-6)
    lam_d = float(lm.lam_for_kl_rate(reward, 0.05))
    lam_eig = scipy.optimize.brentq(lambda lam: eig_rates(lam)[3] - 0.05, 1e-6, 10.0,
                                    xtol=1e-14)
    assert lam_d == pytest.approx(lam_eig, rel=1e-6)
    assert float(lm.tilt_rates(reward, lam_d).mean) == pytest.approx(
        float(lm.limit_reward_per_token(reward, 0.05)), rel=1e-12)
    assert float(lm.lam_for_kl_rate(reward, 0.0)) == 0.0
    gaps = []
    for n in (60, 120):
        t = jaxalign.MarkovLM.from_probs(init, trans, length=n).tilt_summary(
            reward, LAM)
        gaps.append(n * (np.array([float(v) for v in t]) / n
                         - np.array([float(v) for v in got])))
    np.testing.assert_allclose(gaps[0], gaps[1], rtol=1e-5)  # gap = c/n
    assert np.all(np.abs(gaps[0]) > 1e-3)
    # i.i.d. tokens: the rates are the per-token values themselves.
    base = jaxalign.MemorylessLM.from_probs(MU, length=7)
    rates = base.tilt_rates(reward, LAM)
    assert float(rates.mean) == pytest.approx(
        float(theory.cumulants(base, reward, 1, LAM)[0]), rel=1e-14)
    assert float(rates.kl) == pytest.approx(float(theory.kl(base, reward, LAM)) / 7,
                                            rel=1e-13)


@pytest.mark.parametrize("make, match", [
    (lambda: markov.perron(jaxalign.MarkovLM.from_probs(
        [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], length=2),
        jaxalign.LinearReward([0.0, 1.0]), 1.0), "perron needs an irreducible ape"),
    (lambda: markov.scgf(jaxalign.MarkovLM.sticky([0.5, 0.5], 1.0, length=2),
                         jaxalign.LinearReward([0.0, 1.0]), 1.0), "scgf needs an"),
    (lambda: markov.perron(markov.tilt(*_model(), 1.0), jaxalign.LinearReward(R),
                           1.0), "time-homogeneous"),
    (lambda: markov.renyi_rate(_model()[0], _model()[0], 1.0), "alpha"),
    (lambda: markov.tilt_rates(jaxalign.MarkovLM.sticky([0.5, 0.5], 1.0, length=2),
                               jaxalign.LinearReward([0.0, 1.0]), 1.0),
     "tilt_rates needs an"),
    (lambda: markov.lam_for_kl_rate(markov.tilt(*_model(), 1.0),
                                    jaxalign.LinearReward(R), 0.1), "time-homogeneous"),
])
def test_asymptotics_need_a_primitive_chain(make, match, x64):
    with pytest.raises(ValueError, match=match):
        make()


def test_dtype_follows_the_inputs():
    """Without x64 the closed forms run in float32; the exact law is computed in
    float64 and returned in the model's dtype."""
    lm = jaxalign.MarkovLM.sticky(np.float32(MU), 0.4, length=4)
    reward = jaxalign.LinearReward(np.float32(R))
    assert lm.log_trans.dtype == np.float32
    assert markov.log_partition(lm, reward, 0.5).dtype == np.float32
    assert markov.tilt(lm, reward, 0.5).log_trans.dtype == np.float32
    law = markov.reward_law(lm, reward)
    assert law.log_pmf.dtype == np.float32
    assert float(np.exp(np.asarray(law.log_pmf, np.float64)).sum()) == pytest.approx(
        1.0, abs=1e-6)


def test_law_too_big_for_memory_is_refused_up_front():
    """A DP table that cannot fit is refused before any work, with its estimate."""
    lm = jaxalign.MarkovLM.sticky(np.array([0.5, 0.5]), 0.3, length=10**9)
    with pytest.raises(ValueError, match="estimated peak memory .* GiB"):
        markov.reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))


def test_tilt_too_big_for_memory_is_refused_up_front():
    """The tilt and the power chain store (n - 1, K, K) transitions: K = 4096,
    n = 10^4 (about 3.7 TB) is refused before any work, with its estimate."""
    lm = jaxalign.MarkovLM.sticky(np.full(4096, 1 / 4096), 0.3, length=10**4)
    reward = jaxalign.LinearReward(np.linspace(0.0, 1.0, 4096))
    with pytest.raises(ValueError, match=r"markov.tilt .* \(9999, 4096, 4096\).*"
                                         "estimated peak memory .* GiB"):
        markov.tilt(lm, reward, 0.5)
    with pytest.raises(ValueError, match="markov.power_chain .* GiB"):
        markov.power_chain(lm, 2.0)


def test_exact_reward_law_takes_a_chain_through_the_protocol():
    lm = jaxalign.MarkovLM.sticky(np.array([0.5, 0.3, 0.2]), 0.4, length=6)
    reward = jaxalign.LinearReward([0.0, 1.0, 2.0])
    via_exact = exact.reward_law(lm, reward)
    direct = markov.reward_law(lm, reward)
    np.testing.assert_array_equal(via_exact.values, direct.values)
    np.testing.assert_array_equal(via_exact.log_pmf, direct.log_pmf)
    with pytest.raises(ValueError):
        exact.reward_law("not a model", reward)


@pytest.mark.parametrize("policy", [policies.BestOfN(4), policies.Tilted(0.8),
                                    policies.WinRateOptimal(2.0)],
                         ids=lambda p: type(p).__name__)
def test_sample_policy_law_level_takes_a_chain(policy):
    """sample.policy draws a chain's policy from its exact law (through the
    protocol); the sample mean agrees with exact.policy_law (|z| < 5)."""
    lm = jaxalign.MarkovLM.sticky(np.array([0.5, 0.3, 0.2]), 0.4, length=6)
    reward = jaxalign.LinearReward([0.0, 1.0, 2.0])
    _assert_policy_mean(jax.random.key(21), lm, reward, policy, 4000, level="law")


@pytest.mark.parametrize("policy", [policies.BestOfN(4), policies.SoftBestOfN(3, 0.5)],
                         ids=lambda p: type(p).__name__)
def test_token_level_selection_samplers_take_a_chain(policy):
    """Best-of-N and soft best-of-N draw a chain's candidates token by token
    through its own sampler stage (the protocol); their rewards agree with the
    exact policy law (|z| < 5), whatever the chunk and batch sizes."""
    from jaxalign import sample

    lm = jaxalign.MarkovLM.sticky(np.array([0.5, 0.3, 0.2]), 0.4, length=6)
    reward = jaxalign.LinearReward([0.0, 1.0, 2.0])
    _assert_policy_mean(jax.random.key(23), lm, reward, policy, 3000)
    if isinstance(policy, policies.BestOfN):
        a = sample.best_of_n(jax.random.key(24), lm, reward, 5, 40)
        b = sample.best_of_n(jax.random.key(24), lm, reward, 5, 40, chunk_size=2,
                             batch_size=3)
        np.testing.assert_array_equal(a.reward, b.reward)


def test_token_level_soft_best_of_n_takes_a_pair_reward():
    """Soft best-of-N on a chain with a PairReward (its temperature takes the
    reward's dtype, whatever the reward family): |z| < 5 against the exact law."""

    lm = jaxalign.MarkovLM.from_probs([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], length=5)
    reward = jaxalign.PairReward([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.0])
    policy = policies.SoftBestOfN(3, 0.5)
    _assert_policy_mean(jax.random.key(26), lm, reward, policy, 2000)


def _assert_policy_mean(key, lm, reward, policy, num_samples, level="token"):
    """The mean of ``num_samples`` draws of ``policy`` at ``level`` agrees with
    ``exact.policy_law`` (|z| < 5 from the exact standard error), in float64;
    returns the draws (float64)."""
    from jaxalign import sample

    with jax.enable_x64(True):
        exact_law = exact.policy_law(lm, reward, policy)
        r = np.asarray(sample.policy(key, lm, reward, policy, num_samples,
                                     level=level), np.float64)
    se = math.sqrt(float(exact_law.variance) / r.size)
    assert abs(r.mean() - float(exact_law.expected_reward)) < 5 * se
    return r


REWEIGHTING = [p for p in POLICIES if not p.has_token_sampler]
# A time-inhomogeneous chain, n = 4: one matrix per step, with zero transitions.
STEPS = np.array([[[0.6, 0.4, 0.0], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25]],
                  [[0.2, 0.0, 0.8], [0.7, 0.3, 0.0], [0.3, 0.3, 0.4]],
                  [[0.0, 0.5, 0.5], [0.4, 0.4, 0.2], [0.9, 0.1, 0.0]]])


def _chain_case(case):
    """``(lm, reward, Enum, (n - 1, K, K) transitions)`` of a small chain."""
    if case == "homogeneous":
        lm, reward = _model()
        return lm, reward, _linear_enum(), np.broadcast_to(P, (N - 1, K, K))
    if case == "inhomogeneous":
        n = STEPS.shape[0] + 1
        lm = jaxalign.MarkovLM.from_probs(MU, STEPS, length=n)
        return lm, jaxalign.LinearReward(R), _linear_enum(n, trans=STEPS), STEPS
    lm, reward, en = _pair_model()
    return lm, reward, en, np.broadcast_to(P, (N - 1, K, K))


@pytest.mark.parametrize("case", ["homogeneous", "inhomogeneous", "pair"])
def test_token_level_reweighting_takes_a_chain(case, key, x64):
    """The policies without a token sampler of their own (rejection, best-of-
    Poisson, chi-squared, win-rate optimal) draw a chain by exact rejection from
    its own token sampler: for each, the mean agrees with exact.policy_law (|z| <
    5) and a chi-square over the support with the policy's law built from all K^n
    sequences (enumeration, an independent route) has p > 1e-4; the exact law's pmf
    equals the enumerated one (float64)."""
    lm, reward, en, _ = _chain_case(case)
    on = en.prob > 0  # the sequences of the support
    seen = np.unique(np.round(en.reward[on], 9))
    seen_pmf = np.array([en.prob[on & np.isclose(en.reward, v)].sum() for v in seen])
    num = 4000
    for i, policy in enumerate(REWEIGHTING):
        law = exact.policy_law(lm, reward, policy)
        # The exact law's lattice holds every reward of positive probability; its
        # pmf is the policy's weights on the enumerated law, zero elsewhere.
        values = np.asarray(law.values, np.float64)
        q = np.exp(np.asarray(law.log_pmf, np.float64))
        at = np.searchsorted(values, seen - 1e-6)
        np.testing.assert_allclose(values[at], seen, atol=1e-9)
        q_seen = np.exp(np.asarray(policy.log_pmf(seen, np.log(seen_pmf)), np.float64))
        np.testing.assert_allclose(q[at], q_seen, rtol=1e-12, atol=1e-15)
        assert q.sum() - q[at].sum() < 1e-12
        r = _assert_policy_mean(jax.random.fold_in(key, i), lm, reward, policy, num)
        cls = np.searchsorted(0.5 * (values[1:] + values[:-1]), r)
        assert np.all(np.abs(values[cls] - r) < 1e-4)
        counts = np.bincount(cls, minlength=values.size)
        assert np.all(counts[q == 0] == 0), policy  # never off the policy's support
        big = num * q >= 5  # cells with small expectations pooled into one
        observed = np.append(counts[big], counts[~big].sum())
        expected = np.append(num * q[big], num * q[~big].sum())
        keep = expected > 0
        _, pval = scipy.stats.chisquare(observed[keep], expected[keep])
        assert pval > 1e-4, (policy, pval)


@pytest.mark.parametrize("case", ["inhomogeneous", "pair"])
def test_token_level_reweighting_of_a_chain_returns_its_tokens(case, key):
    """return_tokens=True: sample i's sequence scores to sample i's reward, starts
    on a token of positive initial probability and never takes a zero transition;
    the numbers equal those without tokens and do not depend on batch_size or
    proposals_per_step (keys by fold_in); work above the token budget is refused
    up front."""
    from jaxalign import sample

    lm, reward, _, steps = _chain_case(case)
    policy = policies.ChiSquared(0.3)
    res = sample.policy(key, lm, reward, policy, 60, return_tokens=True,
                        batch_size=7)
    np.testing.assert_array_equal(res.reward, sample.policy(key, lm, reward, policy,
                                                            60))
    y = np.asarray(res.tokens)
    assert y.shape == (60, lm.length) and y.min() >= 0 and y.max() < K
    np.testing.assert_allclose(reward(y), res.reward, rtol=1e-6)
    assert np.all(MU[y[:, 0]] > 0)
    for t in range(lm.length - 1):
        assert np.all(steps[t][y[:, t], y[:, t + 1]] > 0), t
    law = exact.policy_law(lm, reward, policy)
    plan = sample._reweighting(law, 60, lm.length)
    direct = sample.reweighted(key, lm, reward, plan.values, plan.log_accept, 60,
                               proposals_per_step=4, batch_size=16)
    np.testing.assert_array_equal(direct, res.reward)
    # The work budget counts the chain's sequences of n tokens like a memoryless
    # model's, up front.
    with (sample.token_budget(1000),
          pytest.raises(ValueError, match=rf"token-level rejection.*sequences of "
                                          rf"{lm.length}\).*level='law'")):
        sample.policy(key, lm, reward, policy, 60)


def _assert_matches_law(r, law):
    """The sample mean and the fraction at or below the median agree with an
    exact law (|z| < 5 from the exact standard errors)."""
    values = np.asarray(law.values, np.float64)
    pmf = np.exp(np.asarray(law.log_pmf, np.float64))
    pmf /= pmf.sum()
    mean = float(pmf @ values)
    var = float(pmf @ (values - mean) ** 2)
    assert abs(r.mean() - mean) < 5 * math.sqrt(var / r.size)
    median = values[np.searchsorted(np.cumsum(pmf), 0.5)]
    gap = np.min(np.diff(values)) if values.size > 1 else 1.0
    p = float(pmf[values <= median].sum())
    frac = float(np.mean(r <= median + gap / 2))
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / r.size)


@pytest.mark.parametrize("case", ["sticky-linear", "pair"])
def test_token_level_rewards_and_tilt_take_a_chain(case):
    """sample.rewards, sample.tilted and sample.policy(Tilted) at the token level
    draw a chain through its own sampler stage (the tilt is the time-inhomogeneous
    chain markov.tilt): the mean and P(R <= median) agree with exact.reward_law and
    exact.policy_law (|z| < 5); the numbers do not depend on batch_size; sample
    i's tokens score to sample i's reward."""
    from jaxalign import sample

    if case == "sticky-linear":
        lm = jaxalign.MarkovLM.sticky(np.array([0.5, 0.3, 0.2]), 0.4, length=6)
        reward = jaxalign.LinearReward([0.0, 1.0, 2.0])
    else:
        lm = jaxalign.MarkovLM.from_probs(MU, P, length=N)
        reward = jaxalign.PairReward(PAIR, PAIR_FIRST)
    num = 4000
    with jax.enable_x64(True):
        base = np.asarray(sample.rewards(jax.random.key(31), lm, reward, num),
                          np.float64)
        _assert_matches_law(base, exact.reward_law(lm, reward))
        tilt = sample.tilted(jax.random.key(32), lm, reward, LAM, num)
        _assert_matches_law(np.asarray(tilt, np.float64),
                            exact.policy_law(lm, reward, policies.Tilted(LAM)))
        via_policy = sample.policy(jax.random.key(32), lm, reward,
                                   policies.Tilted(LAM), num)
    np.testing.assert_array_equal(via_policy, tilt)
    # Batch sizes never change the numbers; tokens and rewards of one key agree.
    a = sample.rewards(jax.random.key(33), lm, reward, 50)
    b = sample.rewards(jax.random.key(33), lm, reward, 50, batch_size=7)
    np.testing.assert_array_equal(a, b)
    res = sample.tilted(jax.random.key(34), lm, reward, LAM, 50, return_tokens=True,
                        batch_size=7)
    np.testing.assert_array_equal(
        res.reward, sample.tilted(jax.random.key(34), lm, reward, LAM, 50))
    np.testing.assert_allclose(reward(res.tokens), res.reward, rtol=1e-6)
    toks = sample.tokens(jax.random.key(33), lm, 50)
    np.testing.assert_allclose(reward(toks), a, rtol=1e-6)
    with pytest.raises(ValueError, match="vocabulary size"):
        sample.rewards(jax.random.key(35), lm, jaxalign.LinearReward([0.0, 1.0]), 4)


def _assert_pairs_follow(y, trans, step=None):
    """Chi-square (p > 1e-4) of the pair counts of ``y`` against the transition
    matrix (every step, or one step of a time-inhomogeneous chain); zero
    transitions never taken."""
    k = trans.shape[-1]
    cols = slice(None) if step is None else slice(step, step + 1)
    a = y[:, :-1][:, cols].ravel()
    b = y[:, 1:][:, cols].ravel()
    counts = np.zeros((k, k))
    np.add.at(counts, (a, b), 1)
    assert np.all(counts[trans == 0] == 0)
    for row in range(k):
        ok = trans[row] > 0
        if counts[row].sum() == 0 or ok.sum() < 2:  # (one token: zeros checked)
            continue
        _, pval = scipy.stats.chisquare(counts[row, ok],
                                        trans[row, ok] * counts[row].sum())
        assert pval > 1e-4, row


@pytest.mark.parametrize("path", ["alias", "search"])
def test_sampler_rows_against_transition_counts(path, monkeypatch):
    """The chain sampler draws every step with the exact transition probabilities,
    through alias tables (the default up to K = 512, and for a small tilt, one
    table per step) and through the binary-searched integer CDF (``search``: the
    alias limits set to 0): a homogeneous chain with K = 5 (three padded columns
    per row), its tilt and a K = 80 chain.  Chi-square of the pair counts (fixed
    keys), tokens always < K, zero transitions never taken; n = 1 (a tilt with no
    step) draws from its initial law.  (The two paths use different lengths, so
    neither reuses the other's compiled sampler.)"""
    from jaxalign.markov import _sample

    extra = 0
    if path == "search":
        monkeypatch.setattr(_sample, "_ALIAS_MAX_K", 0)
        extra = 1
    k = 5
    trans = np.random.default_rng(3).dirichlet(np.ones(k), size=k)
    trans[1] = [0.0, 0.5, 0.0, 0.5, 0.0]
    lm = jaxalign.MarkovLM.from_probs(np.full(k, 1 / k), trans, length=3 + extra)
    y = np.asarray(markov.sample(jax.random.key(41), lm, 20_000))
    assert y.min() >= 0 and y.max() < k
    _assert_pairs_follow(y, trans)
    with jax.enable_x64(True):
        lm64 = jaxalign.MarkovLM.from_probs(np.full(k, 1 / k), trans,
                                           length=3 + extra)
        tilt = markov.tilt(lm64, jaxalign.LinearReward([0.0, 1.0, 2.0, 0.5, 3.0]),
                           0.8)
        y = np.asarray(markov.sample(jax.random.key(43), tilt, 20_000))
    assert y.min() >= 0 and y.max() < k
    for step in range(2):
        _assert_pairs_follow(y, np.asarray(tilt.trans_probs[step]), step)
    big = 80
    trans = np.random.default_rng(4).dirichlet(np.full(big, 0.5), size=big)
    trans[:, big - 1] = 0.0  # a zero last token: the top of the CDF
    trans /= trans.sum(1, keepdims=True)
    lm = jaxalign.MarkovLM.from_probs(np.full(big, 1 / big), trans, length=2 + extra)
    y = np.asarray(markov.sample(jax.random.key(44), lm, 40_000))
    assert np.all(y[:, 1] < big - 1)
    # Pool the rows: the law of the second token is the uniform mixture of rows.
    counts = np.bincount(y[:, 1], minlength=big)
    expected = trans.mean(0) * y.shape[0]
    ok = expected > 0
    _, pval = scipy.stats.chisquare(counts[ok], expected[ok])
    assert pval > 1e-4
    # Each row is the right one: E f(y_1, y_2) for a random pair function f.
    f = np.random.default_rng(5).normal(size=(big, big))
    mean = np.mean(np.sum(trans * f, 1))
    sd = math.sqrt(np.mean(np.sum(trans * f**2, 1)) - mean**2)
    z = (f[y[:, 0], y[:, 1]].mean() - mean) / (sd / math.sqrt(y.shape[0]))
    assert abs(z) < 5, z
    one = jaxalign.MarkovLM.sticky(np.array([0.2, 0.8]), 0.5, length=1)
    tilt = markov.tilt(one, jaxalign.LinearReward([0.0, 1.0]), 1.0)
    y1 = np.asarray(markov.sample(jax.random.key(42), tilt, 4000 + extra))
    p1 = 0.8 * math.e / (0.2 + 0.8 * math.e)
    assert abs(y1.mean() - p1) < 5 * math.sqrt(p1 * (1 - p1) / y1.size)


def test_packed_alias_rows_and_emitted_rewards():
    """The alias path packs threshold and alias in one word, a full column
    (threshold 2^shift) stored as threshold 0 aliased to itself: K = 4 rows that
    are uniform (every column full), deterministic (one full column, three
    aliased to it), with zeros, and generic; chi-square of the pair counts
    (fixed keys, p > 1e-4), zero transitions never taken.  The rewards the scan
    emits step by step are, bit for bit, the fixed-order sum of the pair rewards
    of the same sample's tokens."""
    from jaxalign import sample
    from jaxalign.sample._kernels import _fixed_order_sum

    trans = np.array([[0.25, 0.25, 0.25, 0.25],
                      [0.0, 0.0, 1.0, 0.0],
                      [0.5, 0.0, 0.0, 0.5],
                      [0.1, 0.2, 0.3, 0.4]])
    lm = jaxalign.MarkovLM.from_probs(np.full(4, 0.25), trans, length=5)
    y = np.asarray(markov.sample(jax.random.key(51), lm, 20_000))
    assert y.min() >= 0 and y.max() < 4
    assert np.all(y[:, 1:][y[:, :-1] == 1] == 2)
    _assert_pairs_follow(y, trans)
    pair = np.random.default_rng(6).normal(size=(4, 4)).astype(np.float32)
    first = np.random.default_rng(7).normal(size=4).astype(np.float32)
    reward = jaxalign.PairReward(pair, first)
    r = np.asarray(sample.rewards(jax.random.key(52), lm, reward, 300))
    toks = np.asarray(sample.tokens(jax.random.key(52), lm, 300))
    want = first[toks[:, 0]] + np.asarray(
        _fixed_order_sum(jnp.asarray(pair[toks[:, :-1], toks[:, 1:]])))
    np.testing.assert_array_equal(r, want)


def test_lam_for_kl_on_the_large_chain_path(monkeypatch, x64):
    """``lam_for_kl`` as chains with K^2 n > 2^20 run it (scaled recursion; the
    polish skipped where eps (n + |λE| + |log Z|) < 1e-13 Δ), forced on the small
    model: KL(φ_λ‖P) by enumeration equals Δ to 1e-11 (1e-7 at Δ = 1e-8; the
    small budgets are polished, the large ones not), and the chain KL at
    Δ = 1e-12 to 1e-9."""
    from jaxalign.markov import _finite
    from jaxalign.markov._model import _prepare

    monkeypatch.setattr(_finite, "_SMALL_CHAIN", 0)
    lm, reward = _model()
    en = _linear_enum()
    args = _prepare(lm, reward)[:4]
    solve = jax.jit(lambda budget: _finite._solve_lam(*args, budget, lm.length))
    for budget in (1e-8, 1e-3, 0.5, 2.0):
        lam = float(solve(jnp.float64(budget)))
        phi, _ = en.tilted(lam)
        assert _kl(phi, en.prob) == pytest.approx(budget, rel=1e-11 if budget > 1e-4
                                                  else 1e-7)
    # Where λE - log Z cancels (relative error ~1e-5 unpolished), the polish
    # brings the chain's own (cancellation-free) KL to the budget.
    lam = solve(jnp.float64(1e-12))
    assert float(markov.kl(lm, reward, lam)) == pytest.approx(1e-12, rel=1e-9)


def _log_backward_reference(log_trans, pair, lam, length):
    """Backward messages by SciPy's logsumexp in NumPy, step by step."""
    import scipy.special

    lh = [np.zeros(pair.shape[0])]
    for i in reversed(range(length - 1)):
        step = log_trans if log_trans.ndim == 2 else log_trans[i]
        lh.append(scipy.special.logsumexp(step + lam * pair + lh[-1][None, :], axis=1))
    return np.stack(lh[::-1])


@pytest.mark.parametrize("scaled", [True, False])
def test_backward_messages_scaled_and_log_space(scaled, monkeypatch, x64):
    """The backward messages against SciPy's logsumexp, by the scaled
    matrix-vector products with their log-space fallback (``scaled``: forced for
    these small chains) and by the log-space recursion alone: a dense chain, a
    time-inhomogeneous chain with zero transitions and a pair reward (rtol 1e-12);
    and a chain whose scaled sums underflow (P = I, r = (0, 1), λ = 10, n = 100:
    h_t = (1, e^{λ(n-1-t)})), where the products alone give log h = -inf for
    state 0 and the fallback the exact 0."""
    from jaxalign.markov import _finite
    from jaxalign.markov._finite import _backward

    if scaled:
        monkeypatch.setattr(_finite, "_SMALL_CHAIN", 0)

    rng = np.random.default_rng(12)
    k, n = 7, 40
    dense = np.log(rng.dirichlet(np.ones(k), size=k))
    pair = rng.normal(size=(k, k))
    sparse = np.log(rng.dirichlet(np.ones(k), size=(n - 1, k)))
    sparse[rng.random(sparse.shape) < 0.3] = -np.inf
    sparse[..., 0] = np.log(0.5)  # every row keeps a successor
    for log_trans, lam in ((dense, 0.7), (sparse, -1.3), (dense, 25.0)):
        got = np.asarray(_backward(jnp.asarray(log_trans), jnp.asarray(pair), lam, n))
        want = _log_backward_reference(log_trans, pair, lam, n)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if scaled:  # log Z, E R, Var R (forward mode through the products) agree
        args = (jnp.log(jnp.full(k, 1 / k)), jnp.asarray(sparse), jnp.zeros(k),
                jnp.asarray(pair), jnp.float64(0.4), n)
        got = np.asarray(_finite._moments(*args))
        monkeypatch.setattr(_finite, "_SMALL_CHAIN", 2**62)
        np.testing.assert_allclose(got, np.asarray(_finite._moments(*args)),
                                   rtol=1e-12)
        monkeypatch.setattr(_finite, "_SMALL_CHAIN", 0)
    eye = np.array([[0.0, -np.inf], [-np.inf, 0.0]])  # log of the identity
    reward = np.array([[0.0, 1.0], [0.0, 1.0]])
    got = np.asarray(_backward(jnp.asarray(eye), jnp.asarray(reward), 10.0, 100))
    t = np.arange(100)
    np.testing.assert_allclose(got, np.stack([0 * t, 10.0 * (99 - t)], 1),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("spread", [3.0, 2000.0])
def test_perron_squaring_against_a_log_space_sum(spread, x64):
    """The Perron power iteration squares M in linear space (one matrix product,
    shifted by row and column maxima) when every entry of the product is a normal
    float64, and by a log-space sum otherwise: both against SciPy's logsumexp over
    the (K, K, K) array.  ``spread`` 3: the product is used; 2000: entries down to
    e^-2000 underflow it, so the log-space sum is (the product would give -inf)."""
    import scipy.special

    from jaxalign.markov import _perron

    rng = np.random.default_rng(5)
    k = 7
    log_m = rng.uniform(-spread, 0.0, size=(k, k))
    log_m[2, 5] = -np.inf  # a zero transition stays zero
    want = scipy.special.logsumexp(log_m[:, :, None] + log_m[None, :, :], axis=1)
    want -= want.max()
    got = np.asarray(_perron._log_square(jnp.asarray(log_m)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * max(1.0, spread))
    # The Perron pair of exp(log_m) at that spread against numpy's eigensolver.
    if spread < 700:
        values, vectors = np.linalg.eig(np.exp(log_m))
        top = np.argmax(values.real)
        v = np.abs(vectors[:, top].real)
        np.testing.assert_allclose(np.exp(_perron._perron_vector(jnp.asarray(log_m))),
                                   v / v.sum(), rtol=1e-11)


def test_light_compiles_only_small_chains():
    """Chain programs compile with light options (fast to compile, slower to run)
    only when K^2 n is small; long chains keep XLA's defaults."""
    from jaxalign._types import small_work

    small = small_work(2**20)
    assert small([np.zeros((16, 16)), np.zeros(16), 0.5, 64])  # 16^2 * 64
    assert not small([np.zeros((256, 256)), np.zeros(256), 0.5, 1024])
    assert not small([np.zeros((1023, 16, 16)), 1024])  # time-varying: n K^2 * n
    assert small([np.zeros((16, 16)), True])  # a bool is not a length
