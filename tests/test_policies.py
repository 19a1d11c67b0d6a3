"""Policies as reward transforms: every exact law against brute-force enumeration,
the new policies against their defining identities, and both samplers against the
exact laws."""

import itertools
import math

import jax
import mpmath
import numpy as np
import pytest
import scipy.stats

import jaxalign
from jaxalign import exact, policies, sample

P3 = np.array([0.5, 0.3, 0.2])
R3 = np.array([0.0, 1.0, 2.5])
LENGTH = 2
SEQS = list(itertools.product(range(3), repeat=LENGTH))
PROBS = np.array([np.prod(P3[list(s)]) for s in SEQS])
REWARDS = np.array([R3[list(s)].sum() for s in SEQS])


def _model(length=LENGTH):
    return (jaxalign.MemorylessLM.from_probs(P3, length=length),
            jaxalign.LinearReward(R3))


def _cmp(a, b):
    """+1, 0, -1 with exact ties (all rewards here are multiples of 1/2)."""
    return np.sign(a - b)


def _select(num_candidates, temperature=None):
    """Sequence weights of best-of-N (ties uniform) or soft best-of-N, by
    enumerating all N-tuples of sequences."""
    tuples = np.array(list(itertools.product(range(len(SEQS)), repeat=num_candidates)))
    weight, rs = np.prod(PROBS[tuples], axis=1), REWARDS[tuples]
    if temperature is None:
        share = (rs == rs.max(axis=1, keepdims=True)).astype(float)
    else:
        share = np.exp(rs / temperature)
    share /= share.sum(axis=1, keepdims=True)
    w = np.zeros(len(SEQS))
    np.add.at(w, tuples.ravel(), (weight[:, None] * share).ravel())
    return w


def _chi_squared_weights(beta):
    """g = (R - c)_+ / (2 beta) with c found by bisection over the sequences."""
    mpmath.mp.dps = 30

    def excess(c):
        return sum(mpmath.mpf(p) * max(mpmath.mpf(r) - c, 0)
                   for p, r in zip(PROBS, REWARDS, strict=True)) - 2 * beta

    c = float(mpmath.findroot(excess, (-50, float(REWARDS.max())), solver="bisect"))
    return PROBS * np.maximum(REWARDS - c, 0) / (2 * beta)


def _win_rate_optimal_weights(strength):
    u = np.array([PROBS[REWARDS < x].sum() + 0.5 * PROBS[REWARDS == x].sum()
                  for x in REWARDS])
    w = PROBS * np.exp(strength * u)
    return w / w.sum()


def _poisson_weights(mean, max_n=6):
    """Best-of-Poisson as a Poisson mixture of enumerated best-of-N weights; the
    mixture is cut at N = max_n, leaving out P(Poisson >= max_n) ~ 1e-15."""
    return sum(math.exp(-mean) * mean**k / math.factorial(k) * _select(k + 1)
               for k in range(max_n))


CASES = {
    "base": (policies.Base(), lambda: PROBS),
    "tilted": (policies.Tilted(0.7),
               lambda: PROBS * np.exp(0.7 * REWARDS) / np.sum(
                   PROBS * np.exp(0.7 * REWARDS))),
    "tilted_negative": (policies.Tilted(-1.3),
                        lambda: PROBS * np.exp(-1.3 * REWARDS) / np.sum(
                            PROBS * np.exp(-1.3 * REWARDS))),
    "best_of_1": (policies.BestOfN(1), lambda: _select(1)),
    "best_of_3": (policies.BestOfN(3), lambda: _select(3)),
    "best_of_3_log": (policies.BestOfN(log_num_candidates=math.log(3)),
                      lambda: _select(3)),
    "soft_2": (policies.SoftBestOfN(2, 0.5), lambda: _select(2, 0.5)),
    "soft_3": (policies.SoftBestOfN(3, 1.3), lambda: _select(3, 1.3)),
    "soft_3_cold": (policies.SoftBestOfN(3, 0.05), lambda: _select(3, 0.05)),
    "rejection": (policies.Rejection(2.0),
                  lambda: PROBS * (REWARDS >= 2.0) / PROBS[REWARDS >= 2.0].sum()),
    "best_of_poisson": (policies.BestOfPoisson(0.01), lambda: _poisson_weights(0.01)),
    "chi_squared": (policies.ChiSquared(0.3), lambda: _chi_squared_weights(0.3)),
    "chi_squared_linear": (policies.ChiSquared(5.0), lambda: _chi_squared_weights(5.0)),
    "win_rate_optimal": (policies.WinRateOptimal(2.0),
                         lambda: _win_rate_optimal_weights(2.0)),
}


def _enumerated_quantities(w, num_candidates=2):
    on = w > 0
    mean = np.sum(w * REWARDS)
    win_matrix = (1 + _cmp(REWARDS[:, None], REWARDS[None, :])) / 2
    # Best-of-k from pi against best-of-k from P: all k-tuples of each side.
    def bon_law(weights):
        out = np.zeros(len(SEQS))
        for tup in itertools.product(range(len(SEQS)), repeat=num_candidates):
            idx = list(tup)
            out[idx[int(np.argmax(REWARDS[idx]))]] += np.prod(weights[idx])
        return out

    return {
        "expected_reward": mean,
        "variance": np.sum(w * (REWARDS - mean) ** 2),
        "kl": np.sum(w[on] * np.log(w[on] / PROBS[on])),
        "reverse_kl": np.sum(PROBS * np.log(PROBS / w)) if on.all() else math.inf,
        "win_rate": w @ win_matrix @ PROBS,
        "renyi_0.7": np.log(np.sum(PROBS * (w / PROBS) ** 0.7)) / (0.7 - 1),
        "renyi_2": np.log(np.sum(PROBS * (w / PROBS) ** 2)),
        "renyi_inf": np.log(np.max(w / PROBS)),
        "inference_win_rate": bon_law(w) @ win_matrix @ bon_law(PROBS),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_law_against_enumeration(case, x64):
    policy, weights = CASES[case]
    w = weights()
    lm, reward = _model()
    law = exact.policy_law(lm, reward, policy)
    values = np.asarray(law.values)
    q = np.array([w[REWARDS == v].sum() for v in values])
    got = np.exp(np.asarray(law.log_pmf))
    np.testing.assert_allclose(got, q, rtol=1e-12, atol=0)
    want = _enumerated_quantities(w)
    have = {
        "expected_reward": law.expected_reward, "variance": law.variance,
        "kl": law.kl, "reverse_kl": law.reverse_kl, "win_rate": law.win_rate,
        "renyi_0.7": law.renyi(0.7), "renyi_2": law.renyi(2.0),
        "renyi_inf": law.renyi(math.inf), "inference_win_rate":
        law.inference_win_rate(2),
    }
    for name, value in want.items():
        assert float(have[name]) == pytest.approx(value, rel=1e-12, abs=1e-14), name


def test_every_registered_policy_is_checked():
    checked = {type(policy).name for policy, _ in CASES.values()}
    assert checked == set(policies.names())


def test_soft_best_of_n_against_enumerated_reward_tuples(x64):
    """N = 5 over the reward law of n = 3 (10 values, 10^5 tuples), T from cold to
    hot; and the exact weights sum to 1 before normalisation for N = 10^6."""
    lm, reward = _model(3)
    base = exact.reward_law(lm, reward)
    keep = np.isfinite(np.asarray(base.log_pmf))
    v = np.asarray(base.values)[keep]
    p = np.exp(np.asarray(base.log_pmf)[keep])
    tuples = np.array(list(itertools.product(range(len(v)), repeat=5)))
    weight = np.prod(p[tuples], axis=1)
    for temperature in (0.1, 1.0, 10.0):
        e = np.exp(v[tuples] / temperature)
        share = e / e.sum(axis=1, keepdims=True)
        q = np.zeros(len(v))
        np.add.at(q, tuples.ravel(), (weight[:, None] * share).ravel())
        got = exact.policy_law(lm, reward, policies.SoftBestOfN(5, temperature))
        np.testing.assert_allclose(np.exp(np.asarray(got.log_pmf))[keep], q,
                                   rtol=1e-12)
    lm64 = jaxalign.MemorylessLM.bernoulli(0.3, length=64)
    law = exact.reward_law(lm64, jaxalign.LinearReward([0.0, 1.0]))
    log_g = policies._soft_log_weight(np.asarray(law.values),
                                      np.asarray(law.log_pmf), math.log(1e6), 1.0)
    total = np.logaddexp.reduce(np.asarray(law.log_pmf) + log_g)
    assert abs(total) < 1e-12


def test_best_of_poisson_is_a_poisson_mixture_of_best_of_n(x64):
    lm, reward = _model(5)
    base = exact.reward_law(lm, reward)
    mean = 3.7
    mpmath.mp.dps = 40
    cdf = np.cumsum([mpmath.e ** mpmath.mpf(float(x)) for x in base.log_pmf])
    below = [mpmath.mpf(0)] + list(cdf[:-1])
    pois = [mpmath.e**-mean * mpmath.mpf(mean) ** k / mpmath.factorial(k)
            for k in range(250)]
    got = np.asarray(exact.policy_law(lm, reward,
                                      policies.BestOfPoisson(mean)).log_pmf)
    for i, log_q in enumerate(got):
        q = mpmath.fsum(w * (cdf[i] ** (k + 1) - below[i] ** (k + 1))
                        for k, w in enumerate(pois))
        if q == 0:
            assert log_q == -np.inf
        else:
            assert abs(float(mpmath.log(q)) - log_q) < 1e-12


@pytest.mark.parametrize("beta", [0.01, 0.3, 5.0])
def test_chi_squared_kkt_and_optimality(beta, x64):
    lm, reward = _model(4)
    base = exact.reward_law(lm, reward)
    v, lp = np.asarray(base.values), np.asarray(base.log_pmf)
    policy = policies.ChiSquared(beta)
    c = policy.threshold(v, lp)
    law = exact.policy_law_from_law(base, policy)
    p, q = np.exp(lp), np.exp(np.asarray(law.log_pmf))
    on = p > 0
    g = q[on] / p[on]
    assert np.sum(p[on] * g) == pytest.approx(1.0, abs=1e-14)
    # Stationarity where g > 0, dual feasibility where g = 0.
    active = g > 0
    np.testing.assert_allclose((v[on] - 2 * beta * g - c)[active], 0.0, atol=1e-12)
    assert np.all(v[on][~active] - c <= 1e-12)

    def objective(weights):
        return np.sum(p[on] * weights * v[on]) - beta * (np.sum(p[on] * weights**2) - 1)

    best = objective(g)
    rng = np.random.default_rng(0)
    for _ in range(200):  # feasible perturbations: g' >= 0, E_P g' = 1
        other = np.maximum(g + rng.normal(scale=0.3, size=g.shape), 0)
        other /= np.sum(p[on] * other)
        assert objective(other) <= best + 1e-12


def _continuous_law(size):
    """M equiprobable distinct values: the midpoint-rule stand-in for a continuous
    law (every calibrated reward u = (i + 1/2)/M)."""
    return exact.RewardLaw(values=np.arange(size, dtype=np.float64),
                           log_pmf=np.full(size, -math.log(size)), offset=0.0,
                           span=1.0, lattice_error=0.0, rel_error=0.0)


@pytest.mark.parametrize("strength", [0.5, 3.0, 12.0])
def test_win_rate_optimal_continuous_formulas(strength, x64):
    size = 100_000
    law = exact.policy_law_from_law(_continuous_law(size),
                                    policies.WinRateOptimal(strength))
    c = strength
    w = 1 / (1 - math.exp(-c)) - 1 / c
    kl = c * w - math.log(math.expm1(c) / c)
    # Midpoint-rule error of these integrals is O(c^2 / M^2) relative.
    tol = 4 * c * c / size**2 + 1e-13
    assert float(law.win_rate) == pytest.approx(w, rel=tol)
    assert float(law.kl) == pytest.approx(kl, rel=tol, abs=tol)


@pytest.mark.parametrize("num_candidates", [1, 2, 7, 100])
def test_best_of_n_continuous_formulas(num_candidates, x64):
    size = 1_000_000
    law = exact.policy_law_from_law(_continuous_law(size),
                                    policies.BestOfN(num_candidates))
    n = num_candidates
    assert float(law.win_rate) == pytest.approx(n / (n + 1), abs=n / size)
    assert float(law.kl) == pytest.approx(math.log(n) - (n - 1) / n, abs=n / size)


def test_best_of_n_with_ties_below_the_win_rate_frontier(x64):
    lm = jaxalign.MemorylessLM.bernoulli(0.3, length=4)
    base = exact.reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
    for n in (2, 4, 16):
        bon = exact.policy_law_from_law(base, policies.BestOfN(n))
        lo, hi = 0.0, 200.0
        for _ in range(200):  # KL of the win-rate-optimal tilt is increasing in c
            mid = 0.5 * (lo + hi)
            law = exact.policy_law_from_law(base, policies.WinRateOptimal(mid))
            lo, hi = (mid, hi) if float(law.kl) < float(bon.kl) else (lo, mid)
        frontier = exact.policy_law_from_law(base, policies.WinRateOptimal(lo))
        assert float(frontier.kl) == pytest.approx(float(bon.kl), rel=1e-9)
        # Strictly below: by far more than the ~1e-15 rounding of either value.
        assert float(frontier.win_rate) > float(bon.win_rate) + 1e-9


def test_kl_never_negative_at_n_equal_one(x64):
    lm = jaxalign.MemorylessLM.from_probs([0.7, 0.3], length=100)
    law = exact.policy_law(lm, jaxalign.LinearReward([0.0, 1.0]), policies.BestOfN(1))
    assert float(law.kl) >= 0.0 and float(law.renyi(2.0)) >= 0.0


def _chi_square_p_value(draws, law):
    v, q = np.asarray(law.values), np.exp(np.asarray(law.log_pmf))
    idx = np.searchsorted(0.5 * (v[1:] + v[:-1]), np.asarray(draws))
    counts = np.bincount(idx, minlength=len(v)).astype(float)
    expected = len(draws) * q
    big = expected >= 5
    # Pool the small classes into one.
    obs = np.r_[counts[big], counts[~big].sum()]
    exp = np.r_[expected[big], expected[~big].sum()]
    assert counts[q == 0].sum() == 0
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
        obs[-1] += counts[~big].sum()
        exp[-1] += expected[~big].sum()
    stat = np.sum((obs - exp) ** 2 / exp)
    return scipy.stats.chi2.sf(stat, len(obs) - 1)


SAMPLED = [
    policies.Base(), policies.Tilted(0.6), policies.BestOfN(4),
    policies.SoftBestOfN(4, 0.7), policies.Rejection(3.5),
    policies.BestOfPoisson(2.0), policies.ChiSquared(0.4),
    policies.WinRateOptimal(3.0),
]


# At the token level the base, tilted and best-of-N samplers are checked against
# their exact laws in test_sample; here every policy sampled through the policy
# route: soft best-of-N's token sampler against its (quadrature) exact law, and the
# generic rejection route of the others.
TOKEN_LEVEL_SKIP = {"base", "tilted", "best_of_n"}


@pytest.mark.parametrize("level", ["token", "law"])
def test_samplers_agree_with_exact_laws(level, x64):
    lm, reward = _model(3)
    assert {type(p).name for p in SAMPLED} == set(policies.names())
    for i, policy in enumerate(SAMPLED):
        if level == "token" and type(policy).name in TOKEN_LEVEL_SKIP:
            continue
        key = jax.random.fold_in(jax.random.key(20261125), i)
        draws = np.asarray(sample.policy(key, lm, reward, policy, 8192, level=level))
        law = exact.policy_law(lm, reward, policy)
        z = (draws.mean() - float(law.expected_reward)) / math.sqrt(
            float(law.variance) / draws.size)
        assert abs(z) < 5, (policy, z)
        assert _chi_square_p_value(draws, law) > 1e-6, policy


def test_generic_sampler_returns_consistent_tokens(key, x64):
    lm, reward = _model(3)
    kw = dict(return_tokens=True, batch_size=32)  # one compiled program for both
    out = sample.policy(key, lm, reward, policies.ChiSquared(0.4), 64, **kw)
    np.testing.assert_allclose(np.asarray(reward(out.tokens)), np.asarray(out.reward))
    # Sample i depends on (key, i) only, whatever the batch it is drawn in.
    again = sample.policy(key, lm, reward, policies.ChiSquared(0.4), 64,
                          first_index=32, **kw)
    np.testing.assert_array_equal(np.asarray(again.reward)[:32],
                                  np.asarray(out.reward)[32:])


def test_refuses_hopeless_token_level_work(key, x64):
    lm = jaxalign.MemorylessLM.bernoulli(0.01, length=64)
    reward = jaxalign.LinearReward([0.0, 1.0])
    with pytest.raises(ValueError, match="level='law'"):
        sample.policy(key, lm, reward, policies.Rejection(60.0), 1000)
    with pytest.raises(ValueError, match="too large for token-level"):
        sample.policy(key, lm, reward, policies.BestOfN(log_num_candidates=100.0), 4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: policies.Tilted(float("nan")), "lam"),
        (lambda: policies.BestOfN(0), "num_candidates"),
        (lambda: policies.BestOfN(2, log_num_candidates=1.0), "exactly one"),
        (lambda: policies.SoftBestOfN(4, 0.0), "temperature"),
        (lambda: policies.BestOfPoisson(-1.0), "poisson_mean"),
        (lambda: policies.ChiSquared(0.0), "beta"),
        (lambda: policies.WinRateOptimal(-2.0), "strength"),
        (lambda: policies.Rejection("high"), "threshold"),
        (lambda: policies.get("nope"), "registered"),
        (lambda: policies.BestOfN([2, 3]), "one N"),
        (lambda: exact.policy_law(*_model(), "best_of_n"), "Policy"),
        (lambda: exact.policy_law(*_model(), policies.Base(), spam=1), "spam"),
        (lambda: exact.policy_law(*_model(), policies.Base()).renyi(0.0), "alpha"),
        (lambda: exact.policy_law(*_model(), policies.Base()).renyi(float("nan")),
         "alpha"),
        (lambda: exact.policy_law(*_model(), policies.Base()).inference_win_rate(0),
         "num_candidates"),
        (lambda: sample.policy(jax.random.key(0), *_model(), "tilted", 4), "Policy"),
        (lambda: sample.policy(jax.random.key(0), *_model(), policies.Base(), 4,
                               level="types"), "level"),
        (lambda: sample.policy(jax.random.key(0), *_model(), policies.Base(), 4,
                               level="law", return_tokens=True), "return_tokens"),
        (lambda: sample.reweighted(jax.random.key(0), *_model(), [0.0, 1.0],
                                   [0.0], 4), "same shape|one shape"),
    ],
)
def test_bad_parameters_raise_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_registry_rejects_a_second_policy_with_a_taken_name():
    class Clash(policies.Policy):
        name = "best_of_n"

    with pytest.raises(ValueError, match="already registered"):
        policies.register(Clash)
    assert policies.get("best_of_n") is policies.BestOfN


@pytest.mark.parametrize("lam", [0.0, 0.4, -1.1])
def test_memoryless_model_implements_the_protocol_and_its_closed_forms_match(lam, x64):
    lm, reward = _model(40)
    assert isinstance(lm, jaxalign.models.BaseModel)
    closed = lm.tilt_summary(reward, lam)
    law = exact.policy_law(lm, reward, policies.Tilted(lam))
    assert float(closed.mean) == pytest.approx(float(law.expected_reward), rel=1e-10)
    assert float(closed.variance) == pytest.approx(float(law.variance), rel=1e-10)
    assert float(closed.kl) == pytest.approx(float(law.kl), rel=1e-9, abs=1e-13)
    tilted_law = lm.tilt(reward, lam).reward_law(reward)
    np.testing.assert_allclose(np.exp(np.asarray(tilted_law.log_pmf)),
                               np.exp(np.asarray(law.log_pmf)), rtol=1e-9, atol=0)
    budget = 3.0
    lam_b = float(lm.lam_for_kl(reward, budget))
    assert float(exact.policy_law(lm, reward, policies.Tilted(lam_b)).kl) == (
        pytest.approx(budget, rel=1e-9))


def test_law_level_draws_of_a_float32_model_under_x64():
    """A policy's log weights are float64; with a float32 model under x64 the law
    sampler mixed the two and failed under strict promotion (bug fixed with the
    Markov work): the draws are in the model's dtype."""
    lm = jaxalign.MemorylessLM.from_probs([0.5, 0.3, 0.2], length=6)
    reward = jaxalign.LinearReward([0.0, 1.0, 2.0])
    with jax.enable_x64(True):
        r = sample.policy(jax.random.key(3), lm, reward, policies.WinRateOptimal(2.0),
                          64, level="law")
    assert r.dtype == np.float32 and np.all((np.asarray(r) >= 0) & (r <= 12))
