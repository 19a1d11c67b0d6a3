"""Tests for jaxalign.rl: every number is checked against an independent route.

Independent routes used here: NumPy closed forms of the tilt and of the KL-reward
frontier (bisection on λ written in the test), central finite differences of NumPy
KL functions, Monte Carlo with z-scores from exact (NumPy) variances, and a
first-order optimality condition derived by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxalign
from jaxalign import rl

P = np.array([0.4, 0.3, 0.2, 0.1])
R = np.array([0.0, 0.3, 0.7, 1.0])
N = 6
BETAS = np.array([0.25, 1.0])


def _models(dtype=np.float64):
    lm = jaxalign.MemorylessLM.from_probs(jnp.asarray(P, dtype=dtype), length=N)
    reward = jaxalign.LinearReward(jnp.asarray(R, dtype=dtype))
    return lm, reward


def _np_value(pi, p=P, r=R, n=N):
    pi = np.asarray(pi, dtype=np.float64)
    return n * np.sum(pi * np.log(pi / p)), n * np.sum(pi * r)


def _np_tilt(beta, p=P, r=R):
    w = p * np.exp(r / beta)
    return w / w.sum()


def _np_frontier(kl, p=P, r=R, n=N):
    """Max E_Q R over Q with KL(Q||P) <= kl, by bisection on λ (THEORY §1.3)."""
    delta = kl / n
    pmax = p[r == r.max()].sum()
    if delta >= -np.log(pmax):
        return n * r.max()

    def d(lam):
        phi = p * np.exp(lam * (r - r.max()))
        phi /= phi.sum()
        return np.sum(phi * np.log(phi / p)), np.sum(phi * r)

    lo, hi = 0.0, 1.0
    while d(hi)[0] < delta:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if d(mid)[0] < delta else (lo, mid)
    return n * d(hi)[1]


def _softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.fixture(scope="module")
def sampled_runs():
    """One float64 sweep per sampled algorithm (2 betas x 2 seeds), compiled once."""
    out = {}
    with jax.enable_x64(True):
        lm, reward = _models()
        for i, algorithm in enumerate(("reinforce", "ppo", "grpo")):
            out[algorithm] = rl.train_sweep(
                jax.random.key(100 + i), lm, reward, jnp.asarray(BETAS),
                num_seeds=2, algorithm=algorithm, num_steps=150, batch_size=16,
                group_size=4, learning_rate=0.05,
            )
    return out


def test_exact_gradient_reaches_tilt(x64, key):
    lm, reward = _models()
    for beta in BETAS:
        res = rl.train(key, lm, reward, float(beta), algorithm="exact",
                       optimizer_fn=optax.sgd, learning_rate=0.1, num_steps=4000)
        kl, rew = _np_value(_np_tilt(beta))
        np.testing.assert_allclose(res.kl[-1], kl, rtol=1e-6)
        np.testing.assert_allclose(res.reward[-1], rew, rtol=1e-6)
        # the trajectory is the closed form of each iterate: check the last one
        np.testing.assert_allclose(
            _np_value(_softmax(res.logits)), (res.kl[-1], res.reward[-1]), rtol=1e-12
        )


def test_evaluate_and_objective_closed_form(x64):
    lm, reward = _models()
    logits = jnp.array([0.3, -0.2, 0.5, 0.1])
    kl, rew = _np_value(_softmax(logits))
    value = rl.evaluate(logits, lm, reward)
    np.testing.assert_allclose([value.kl, value.reward], [kl, rew], rtol=1e-12)
    np.testing.assert_allclose(rl.objective(logits, lm, reward, 0.7), rew - 0.7 * kl,
                               rtol=1e-12)


def test_trained_policies_on_or_below_frontier(sampled_runs):
    for algorithm, res in sampled_runs.items():
        kl = np.asarray(res.kl)
        rew = np.asarray(res.reward)
        assert np.all(np.isfinite(kl)) and np.all(kl >= -1e-12), algorithm
        for k, r in zip(kl[..., ::10].ravel(), rew[..., ::10].ravel(), strict=True):
            assert r <= _np_frontier(max(k, 0.0)) + 1e-9, (algorithm, k, r)
        # final exact values recomputed in NumPy from the returned logits
        logits = np.asarray(res.logits).reshape(-1, 4)
        vals = np.array([_np_value(_softmax(lg)) for lg in logits])
        np.testing.assert_allclose(vals[:, 0], kl[..., -1].ravel(), rtol=1e-10)
        np.testing.assert_allclose(vals[:, 1], rew[..., -1].ravel(), rtol=1e-10)


def test_reinforce_near_optimum(sampled_runs):
    # REINFORCE with k1 in the reward: at the tilt the score R - β log(π/P) is constant,
    # so the gradient noise vanishes there; 150 Adam steps get close to the optimum.
    res = sampled_runs["reinforce"]
    for b, beta in enumerate(BETAS):
        opt = _np_value(_np_tilt(beta))
        rl_obj = np.asarray(res.reward[b, :, -1]) - beta * np.asarray(res.kl[b, :, -1])
        assert np.all(rl_obj <= opt[1] - beta * opt[0] + 1e-12)
        assert np.all(rl_obj >= opt[1] - beta * opt[0] - 0.05)


def test_estimated_trajectories_match_exact(sampled_runs):
    # reward_estimate[t] - reward[t] is a martingale difference (batch mean of R under
    # π_t minus its exact mean) with conditional variance <= n (r_max - r_min)^2 / 4 / B
    # (Popoviciu), so the mean over T steps has sd <= sqrt(bound / T).
    for algorithm, res in sampled_runs.items():
        est = np.asarray(res.reward_estimate)
        exact = np.asarray(res.reward[..., :-1])
        bound = N * (R.max() - R.min()) ** 2 / 4 / 16
        resid = (est - exact).reshape(-1, est.shape[-1])
        z = resid.mean(-1) / np.sqrt(bound / est.shape[-1])
        assert np.all(np.abs(z) < 5), (algorithm, z)


def test_reinforce_estimates_z_scores(x64, key):
    # At a (practically) frozen policy the per-step estimates are i.i.d. batch means
    # with exact NumPy mean and variance.
    lm, reward = _models()
    init = jnp.asarray(np.log(_np_tilt(0.5)) + np.array([0.2, -0.1, 0.0, 0.1]))
    res = rl.train(key, lm, reward, 0.5, algorithm="reinforce", num_steps=200,
                   batch_size=16, learning_rate=1e-12, optimizer_fn=optax.sgd,
                   init_logits=init)
    pi = _softmax(init)
    p_lp = np.log(P)
    k1 = np.log(pi) - p_lp
    for est, f in ((res.reward_estimate, R), (res.kl_estimate, k1)):
        mean = N * np.sum(pi * f)
        var = N * (np.sum(pi * f**2) - np.sum(pi * f) ** 2) / 16
        est = np.asarray(est)
        z = (est.mean() - mean) / np.sqrt(var / est.size)
        assert abs(z) < 5, z


def _fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def test_kl_estimator_gradients(x64):
    lm, _ = _models()
    theta = np.array([0.3, -0.2, 0.5, 0.1])
    fwd = _fd_grad(lambda t: N * np.sum(_softmax(t) * np.log(_softmax(t) / P)), theta)
    rev = _fd_grad(lambda t: N * np.sum(P * np.log(P / _softmax(t))), theta)
    cases = {("k1", "reward"): fwd, ("k1", "loss"): 0 * fwd, ("k2", "loss"): fwd,
             ("k3", "loss"): rev}
    for (est, mode), expected in cases.items():
        got = rl.kl_estimator_gradient(jnp.asarray(theta), lm, est, mode)
        np.testing.assert_allclose(got, expected, atol=1e-8, err_msg=f"{est}/{mode}")


def test_k3_in_loss_converges_to_reverse_kl_optimum(x64, key):
    # Stationarity of n Σ π r - β n KL(p||π) in logits: π_j (r_j - r̄) = β (π_j - p_j).
    lm, reward = _models()
    beta = 0.5
    res = rl.train(key, lm, reward, beta, algorithm="exact", kl_mode="loss",
                   kl_estimator="k3", optimizer_fn=optax.sgd, learning_rate=0.1,
                   num_steps=4000)
    pi = _softmax(res.logits)
    resid = pi * (R - np.sum(pi * R)) - beta * (pi - P)
    np.testing.assert_allclose(resid, 0.0, atol=1e-9)
    # ... which is not the tilt
    assert np.max(np.abs(pi - _np_tilt(beta))) > 1e-3


def test_reinforce_stays_at_optimum(x64, key):
    lm, reward = _models()
    init = jnp.asarray(np.log(_np_tilt(0.5)))
    # same static configuration as test_reinforce_estimates_z_scores: one compile
    res = rl.train(key, lm, reward, 0.5, algorithm="reinforce", num_steps=200,
                   batch_size=16, learning_rate=0.1, optimizer_fn=optax.sgd,
                   init_logits=init)
    np.testing.assert_allclose(_softmax(res.logits), _np_tilt(0.5), atol=1e-12)


def test_deterministic_per_seed(sampled_runs, key):
    with jax.enable_x64(True):
        lm, reward = _models()
        kw = dict(num_seeds=2, algorithm="grpo", num_steps=150, batch_size=16,
                  group_size=4, learning_rate=0.05)
        betas = jnp.asarray(BETAS)
        again = rl.train_sweep(jax.random.key(102), lm, reward, betas, **kw)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(sampled_runs["grpo"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # different seeds give different runs
    assert not np.array_equal(again.logits[0, 0], again.logits[0, 1])


def test_float32_dtype(key):
    lm, reward = _models(np.float32)
    res = rl.train(key, lm, reward, 0.5, algorithm="ppo", num_steps=5, batch_size=4)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(res))
    assert res.kl.shape == (6,) and res.kl_estimate.shape == (5,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=-0.5), "beta"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=-1e-3), "learning_rate"),
        (dict(algorithm="grpo", group_size=1), "group_size"),
        (dict(algorithm="grpo", group_size=3, batch_size=8), "multiple"),
        (dict(num_steps=0), "num_steps"),
        (dict(batch_size=1), "batch_size"),
        (dict(algorithm="a2c"), "algorithm"),
        (dict(kl_estimator="k4"), "kl_estimator"),
        (dict(kl_mode="both"), "kl_mode"),
        (dict(clip_eps=0.0), "clip_eps"),
        (dict(init_logits=jnp.zeros(3)), "init_logits"),
    ],
)
def test_bad_hyperparameters(kwargs, match, key):
    lm, reward = _models(np.float32)
    kwargs = {"beta": 0.5, **kwargs}
    beta = kwargs.pop("beta")
    with pytest.raises(ValueError, match=match):
        rl.train(key, lm, reward, beta, **kwargs)


def test_bad_inputs(key):
    lm, reward = _models(np.float32)
    with pytest.raises(ValueError, match="betas"):
        rl.train_sweep(key, lm, reward, jnp.array([0.5, -1.0]))
    zero = jaxalign.MemorylessLM.from_probs(jnp.array([0.5, 0.5, 0.0, 0.0]), length=2)
    with pytest.raises(ValueError, match="finite"):
        rl.train(key, zero, reward, 0.5)
    with pytest.raises(ValueError, match="key"):
        rl.train(0, lm, reward, 0.5)


def test_frontier_data(sampled_runs, x64, key):
    # Same training configuration as the fixture, so the compiled sweeps are reused.
    from jaxalign import proxy

    lm, reward = _models()
    d = rl.frontier_data(key, lm, reward, jnp.asarray(BETAS), num_seeds=2,
                         num_steps=150, batch_size=16, group_size=4,
                         learning_rate=0.05, num_candidates=[1, 3, 20], num_points=9)
    bon = [proxy.sequence_best_of_n(lm, reward, reward.token_rewards, m)
           for m in (1, 3, 20)]
    assert d.algorithms == ("reinforce", "ppo", "grpo")
    assert d.algorithm_kl.shape == (3, 2, 2) and d.tilt_kl.shape == (9,)
    np.testing.assert_allclose(d.lams[-1], 2 / BETAS.min(), rtol=1e-12)
    for lam, kl, rew in zip(d.lams, d.tilt_kl, d.tilt_reward, strict=True):
        phi = _np_tilt(1 / lam) if lam > 0 else P
        np.testing.assert_allclose(_np_value(phi), (kl, rew), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d.bon_kl, [b.kl for b in bon], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d.bon_reward, [b.gold_reward for b in bon], rtol=1e-9)
    trained = zip(np.ravel(d.algorithm_kl), np.ravel(d.algorithm_reward), strict=True)
    for k, r in trained:
        assert r <= _np_frontier(k) + 1e-9
    for k, r in zip(d.bon_kl, d.bon_reward, strict=True):
        assert r <= _np_frontier(float(k)) + 1e-9


def test_no_retrace_for_new_values(sampled_runs):
    # betas, learning rate, clip and init are traced: new values reuse the program.
    size = getattr(rl._sweep_jit, "_cache_size", None)
    if size is None:
        pytest.skip("jit cache size not exposed by this JAX version")
    before = size()
    with jax.enable_x64(True):
        lm, reward = _models()
        rl.train_sweep(jax.random.key(7), lm, reward, jnp.array([0.6, 2.0]),
                       num_seeds=2, algorithm="ppo", num_steps=150, batch_size=16,
                       group_size=4, learning_rate=0.01, clip_eps=0.1,
                       init_logits=jnp.zeros(4))
    assert size() == before


def test_method_keyword_is_the_deprecated_name_of_algorithm():
    """``method=`` (the 0.2 name) still trains the same policy, with a warning."""
    lm, reward = _models(np.float32)
    kw = dict(num_steps=4, batch_size=4)
    new = rl.train(jax.random.key(3), lm, reward, 0.5, algorithm="ppo", **kw)
    with pytest.warns(DeprecationWarning, match="method= is now algorithm="):
        old = rl.train(jax.random.key(3), lm, reward, 0.5, method="ppo", **kw)
    np.testing.assert_array_equal(new.logits, old.logits)
    with pytest.raises(ValueError, match="algorithm="):
        rl.train(jax.random.key(3), lm, reward, 0.5, algorithm="ppo", method="ppo")
    with pytest.warns(DeprecationWarning, match="methods= is now algorithms="):
        d = rl.frontier_data(jax.random.key(4), lm, reward, jnp.array([1.0]),
                             methods=("reinforce",), num_candidates=(2,),
                             num_points=2, **kw)
    assert d.algorithms == ("reinforce",)
