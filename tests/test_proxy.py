"""Tests for jaxalign.proxy against brute-force enumeration over all K^n sequences.

The reference laws are built in NumPy float64 from explicit sequence lists
(itertools.product); best-of-N is checked against enumeration of all N-tuples of
sequences with first-index argmax selection (which equals uniform tie-breaking).
"""

import itertools

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxalign
from jaxalign import proxy, rl

P = np.array([0.5, 0.3, 0.2])
R = np.array([0.0, 0.4, 1.0])
N = 4


def _models(dtype=np.float64, p=P, r=R, n=N):
    lm = jaxalign.MemorylessLM.from_probs(jnp.asarray(p, dtype=dtype), length=n)
    return lm, jaxalign.LinearReward(jnp.asarray(r, dtype=dtype))


def _seqs(k, n):
    return np.array(list(itertools.product(range(k), repeat=n)))


def _brute(p, n, score_fn):
    """Base probabilities and score values of every sequence."""
    ys = _seqs(len(p), n)
    return ys, np.prod(p[ys], axis=1), np.array([score_fn(y) for y in ys])


def _tilted(base, s, lam):
    w = base * np.exp(lam * (s - s.max()))
    return w / w.sum()


def _kl(a, b):
    m = a > 0
    return np.sum(a[m] * np.log(a[m] / b[m]))


def _proxies(key, k=1, scale=0.3):
    _, gold = _models()
    return proxy.gaussian_proxy(key, gold, scale, num_proxies=k)


@pytest.mark.parametrize("kind", ["gaussian", "biased"])
def test_a3_identities_against_enumeration(kind, x64, key):
    lm, gold = _models()
    if kind == "gaussian":
        rh = np.asarray(proxy.gaussian_proxy(key, gold, 0.5).token_rewards)
    else:
        rh = np.asarray(proxy.biased_proxy(gold, [0], 0.8).token_rewards)
    prox = jaxalign.LinearReward(jnp.asarray(rh))
    ys, base, rs = _brute(P, N, lambda y: R[y].sum())
    rhs = np.array([rh[y].sum() for y in ys])
    e_seq = rhs - rs
    for beta in (0.2, 1.0, 3.0):
        opt, hat = _tilted(base, rs, 1 / beta), _tilted(base, rhs, 1 / beta)
        res = proxy.proxy_tilt(lm, gold, prox, beta)
        expect = dict(
            kl=_kl(hat, base), proxy_reward=hat @ rhs, gold_reward=hat @ rs,
            optimal_kl=_kl(opt, base), optimal_reward=opt @ rs,
            gap=opt @ rs - hat @ rs, regret=beta * _kl(hat, opt),
            kl_to_optimal=_kl(hat, opt), jeffreys=_kl(hat, opt) + _kl(opt, hat),
        )
        for name, value in expect.items():
            np.testing.assert_allclose(getattr(res, name), value, rtol=1e-10,
                                       atol=1e-12, err_msg=name)
        # A3 (a): regret in the regularised gold objective
        lhs = (opt @ rs - beta * _kl(opt, base)) - (hat @ rs - beta * _kl(hat, base))
        np.testing.assert_allclose(lhs, beta * _kl(hat, opt), rtol=1e-10, atol=1e-12)
        # A3 (b): gold gap
        g = beta * (_kl(opt, base) - _kl(hat, base) + _kl(hat, opt))
        np.testing.assert_allclose(opt @ rs - hat @ rs, g, rtol=1e-10, atol=1e-12)
        # A3 (c): Jeffreys between proxy and gold tilts
        j = (hat @ e_seq - opt @ e_seq) / beta
        np.testing.assert_allclose(_kl(hat, opt) + _kl(opt, hat), j, rtol=1e-10)
        assert j <= np.ptp(e_seq) / beta + 1e-12
        # A3 (d): bound on |G| (sequence-level ranges)
        bound = np.ptp(rs) * np.sqrt(np.ptp(e_seq) / (4 * beta))
        np.testing.assert_allclose(res.gap_bound, bound, rtol=1e-10)
        assert abs(opt @ rs - hat @ rs) <= bound


def test_sequence_tilt_ensemble_min_against_enumeration(x64, key):
    lm, gold = _models()
    rh = np.asarray(_proxies(key, k=3).token_rewards)
    ys, base, rs = _brute(P, N, lambda y: R[y].sum())
    for how, agg in (("min", np.min), ("max", np.max), ("median", np.median),
                     ("mean", np.mean)):
        s = np.array([agg([rj[y].sum() for rj in rh]) for y in ys])
        for lam in (0.0, 0.7, 2.5):
            q = _tilted(base, s, lam)
            res = proxy.sequence_tilt(lm, gold, jnp.asarray(rh), lam, how)
            np.testing.assert_allclose(
                [res.kl, res.score, res.gold_reward], [_kl(q, base), q @ s, q @ rs],
                rtol=1e-10, atol=1e-12, err_msg=f"{how} {lam}")


def test_sequence_tilt_matches_closed_form(x64, key):
    lm, gold = _models()
    prox = _proxies(key, k=4)
    mean_proxy = proxy.ensemble(prox, "mean")
    for beta in (0.3, 2.0):
        seq = proxy.sequence_tilt(lm, gold, prox, 1 / beta, "mean")
        closed = proxy.proxy_tilt(lm, gold, mean_proxy, beta)
        np.testing.assert_allclose([seq.kl, seq.score, seq.gold_reward],
                                   [closed.kl, closed.proxy_reward, closed.gold_reward],
                                   rtol=1e-10)


def _bon_brute(p, n, s, rs, num):
    """Best-of-num over all num-tuples of sequences, first-index argmax."""
    base = np.prod(p[_seqs(len(p), n)], axis=1)
    law = np.zeros(base.size)
    for tup in itertools.product(range(base.size), repeat=num):
        sc = s[list(tup)]
        winner = tup[int(np.argmax(sc))]
        law[winner] += np.prod(base[list(tup)])
    return _kl(law, base), law @ s, law @ rs


@pytest.mark.parametrize("kind", ["ties", "gaussian"])
def test_sequence_best_of_n_against_tuple_enumeration(kind, x64, key):
    p, r, n = np.array([0.6, 0.4]), np.array([0.0, 1.0]), 3
    lm, gold = _models(p=p, r=r, n=n)
    if kind == "ties":  # lattice gold plus a bias: many equal sequence scores
        rh = np.array([[0.5, 1.0]])
    else:
        rh = np.asarray(proxy.gaussian_proxy(key, gold, 0.4, num_proxies=2)
                        .token_rewards)
    ys = _seqs(2, n)
    s = np.array([np.min([rj[y].sum() for rj in rh]) for y in ys])
    rs = np.array([r[y].sum() for y in ys])
    for num in (1, 2, 3):
        expect = _bon_brute(p, n, s, rs, num)
        res = proxy.sequence_best_of_n(lm, gold, jnp.asarray(rh), num, how="min")
        np.testing.assert_allclose([res.kl, res.score, res.gold_reward], expect,
                                   rtol=1e-10, atol=1e-12, err_msg=f"N={num}")


def test_bon_by_gold_matches_exact_module(x64):
    exact = pytest.importorskip("jaxalign.exact")
    if not hasattr(exact, "best_of_n"):
        pytest.skip("jaxalign.exact.best_of_n not available")
    lm, gold = _models()
    nums = [1, 2, 5, 40]
    ref = exact.best_of_n(lm, gold, num_candidates=nums)
    for i, num in enumerate(nums):
        res = proxy.sequence_best_of_n(lm, gold, gold.token_rewards, num)
        np.testing.assert_allclose(res.kl, ref.kl[i], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.gold_reward, ref.expected_reward[i], rtol=1e-9)


def test_rl_by_proxy_scored_by_gold(x64, key):
    lm, gold = _models()
    prox = proxy.biased_proxy(gold, [1], 0.5)
    beta = 0.5
    res = rl.train(key, lm, prox, beta, algorithm="exact", optimizer_fn=optax.sgd,
                   learning_rate=0.1, num_steps=4000)  # as in test_rl: one compile
    scored = rl.evaluate(res.logits, lm, gold)
    ref = proxy.proxy_tilt(lm, gold, prox, beta)
    np.testing.assert_allclose([scored.kl, scored.reward],
                               [ref.kl, ref.gold_reward], rtol=1e-6)


def test_ensemble_mean_shrinks_error(x64, key):
    lm, gold = _models()
    prox = np.asarray(_proxies(key, k=8, scale=0.5).token_rewards)
    members = [jaxalign.LinearReward(jnp.asarray(row)) for row in prox]
    mean = proxy.ensemble(members, "mean")
    np.testing.assert_allclose(mean.token_rewards, prox.mean(0), rtol=1e-12)
    osc = np.ptp(prox - R, axis=1)
    assert np.ptp(np.asarray(mean.token_rewards) - R) <= osc.mean() + 1e-12
    # A4: the ensemble's A3(d) bound is never worse than the worst member's
    beta = 0.5
    bounds = [float(proxy.proxy_tilt(lm, gold, m, beta).gap_bound) for m in members]
    assert float(proxy.proxy_tilt(lm, gold, mean, beta).gap_bound) <= max(bounds)
    for how, agg in (("min", np.min), ("max", np.max), ("median", np.median)):
        np.testing.assert_allclose(proxy.ensemble(prox, how).token_rewards,
                                   agg(prox, axis=0), rtol=1e-12)


def test_gaussian_proxy_noise_law(key):
    _, gold = _models(np.float32)
    k = 4000
    prox = proxy.gaussian_proxy(key, gold, 0.7, num_proxies=k)
    err = np.asarray(prox.token_rewards, dtype=np.float64) - R
    z_mean = err.mean() / (0.7 / np.sqrt(err.size))
    # Var of the sample variance of N(0, s^2): 2 s^4 / (m - 1)
    z_var = (err.var(ddof=1) - 0.49) / np.sqrt(2 * 0.49**2 / (err.size - 1))
    assert abs(z_mean) < 5 and abs(z_var) < 5, (z_mean, z_var)
    assert prox.token_rewards.dtype == jnp.float32


def test_goodhart_data(x64, key):
    lm, gold = _models()
    prox = _proxies(key, k=3, scale=0.6)
    betas = jnp.array([0.2, 0.5, 2.0])
    nums = jnp.array([1.0, 4.0, 16.0])
    d = proxy.goodhart_data(lm, gold, prox, betas, nums, how="min")
    # N = 1 is the base model
    np.testing.assert_allclose([d.bon_kl[0], d.bon_gold_reward[0]], [0.0, N * P @ R],
                               atol=1e-12)
    # the gold tilt maximises the regularised gold objective (A3 a, any selection rule)
    b = np.asarray(betas)
    assert np.all(d.optimal_reward - b * d.optimal_kl
                  >= d.tilt_gold_reward - b * d.tilt_kl - 1e-12)
    ref = proxy.sequence_best_of_n(lm, gold, prox, 16.0, how="min")
    np.testing.assert_allclose(d.bon_gold_reward[2], ref.gold_reward, rtol=1e-12)


def test_float32(key):
    lm, gold = _models(np.float32)
    prox = proxy.gaussian_proxy(key, gold, 0.3)
    res = proxy.proxy_tilt(lm, gold, prox, 0.5)
    assert all(x.dtype == jnp.float32 for x in res)
    sel = proxy.sequence_best_of_n(lm, gold, prox, 4)
    assert all(x.dtype == jnp.float32 for x in sel)
    tilt = proxy.sequence_tilt(lm, gold, prox, 2.0)
    np.testing.assert_allclose(tilt.gold_reward, res.gold_reward, rtol=1e-5)


def test_type_counts():
    counts = proxy.type_counts(3, 4)
    assert counts.shape == (15, 3) and np.all(counts.sum(1) == 4)
    assert len({tuple(c) for c in counts}) == 15


def test_bad_inputs(key):
    lm, gold = _models(np.float32)
    with pytest.raises(ValueError, match="beta"):
        proxy.proxy_tilt(lm, gold, gold, 0.0)
    with pytest.raises(ValueError, match="beta"):
        proxy.proxy_tilt(lm, gold, gold, -1.0)
    with pytest.raises(ValueError, match="scale"):
        proxy.gaussian_proxy(key, gold, -0.1)
    with pytest.raises(ValueError, match="tokens"):
        proxy.biased_proxy(gold, [3], 1.0)
    with pytest.raises(ValueError, match="how"):
        proxy.ensemble(jnp.ones((2, 3)), "mode")
    with pytest.raises(ValueError, match="num_candidates"):
        proxy.sequence_best_of_n(lm, gold, gold.token_rewards, 0)
    with pytest.raises(ValueError, match="proxies"):
        proxy.sequence_tilt(lm, gold, jnp.ones((2, 4)), 1.0)
    with pytest.raises(ValueError, match="types"):
        proxy.type_counts(50, 40)


def test_plots_smoke(x64, key):
    pytest.importorskip("matplotlib")
    from jaxalign import plots

    lm, gold = _models()
    prox = _proxies(key, k=3, scale=0.6)  # shapes as in test_goodhart_data: no compile
    d = proxy.goodhart_data(lm, gold, prox, jnp.array([0.3, 1.0, 3.0]),
                            jnp.array([1.0, 8.0, 30.0]), how="min")
    fig = plots.plot_goodhart(d)
    assert len(fig.axes[0].lines) == 5
    fd = rl.FrontierData(
        lams=np.zeros(3), tilt_kl=np.arange(3.0), tilt_reward=np.arange(3.0),
        num_candidates=np.ones(2), bon_kl=np.ones(2), bon_reward=np.ones(2),
        betas=np.ones(2), algorithm_kl=np.ones((2, 2, 1)),
        algorithm_reward=np.ones((2, 2, 1)), algorithms=("ppo", "grpo"))
    fig2 = plots.plot_frontier(fd)
    assert len(fig2.axes[0].collections) == 2
