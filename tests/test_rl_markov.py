"""rl.train for Markov policies (issue 13, step 2): every number against an
independent route: the exact finite-n tilt (jaxalign.markov.tilt_summary, backward
messages), the frontier (markov.optimal_reward), brute-force enumeration of all K^n
sequences in NumPy with central finite differences for the gradient of the
objective, and Monte Carlo z-scores from the spread over seeds."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxalign
from jaxalign import markov, rl

MU = np.array([0.6, 0.3, 0.1])
TRANS = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
R = np.array([0.0, 0.5, 1.0])
BETA = 0.5
# Cells of three recursions (cells of one recursion share a compilation).
CELLS = {"k1/reward_to_go/token": ("k1", "reward_to_go", "token"),
         "k2/loss/token": ("k2", "loss", "token"),
         "k3/loss/token": ("k3", "loss", "token"),
         "k2/loss/sequence": ("k2", "loss", "sequence"),
         "k3/loss/sequence": ("k3", "loss", "sequence")}


def _models(n):
    lm = jaxalign.MarkovLM.from_probs(jnp.asarray(MU), jnp.asarray(TRANS), length=n)
    return lm, jaxalign.LinearReward(jnp.asarray(R))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _enum_value(flat, n, k=3):
    """``(KL(Q‖P), E_Q R)`` of the chain with logits ``flat`` (homogeneous,
    ``K + K²``, or time-varying, ``K + (n − 1) K²``): a sum over all ``K^n``
    sequences."""
    flat = np.asarray(flat, dtype=np.float64)
    q0 = _softmax(flat[:k])
    q = np.broadcast_to(_softmax(flat[k:].reshape(-1, k, k)), (n - 1, k, k))
    y = np.array(list(itertools.product(range(k), repeat=n)))
    a, b = y[:, :-1], y[:, 1:]
    qy = q0[y[:, 0]] * np.prod(q[np.arange(n - 1), a, b], axis=1)
    py = MU[y[:, 0]] * np.prod(TRANS[a, b], axis=1)
    return np.sum(qy * np.log(qy / py)), np.sum(qy * R[y].sum(axis=1))


def _enum_grad(fn, flat, h=1e-5):
    """Central finite differences of a NumPy function of the logits."""
    flat = np.asarray(flat, dtype=np.float64)
    out = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = h
        out[i] = (fn(flat + e) - fn(flat - e)) / (2 * h)
    return out


def _flat(logits):
    return np.concatenate([np.asarray(logits[0]), np.asarray(logits[1]).ravel()])


@functools.cache
def _exact_runs(n):
    """Exact-gradient training of the cells (all of CELLS for n = 3, the token-level
    ones for n = 2), SGD to convergence."""
    with jax.enable_x64(True):
        lm, reward = _models(n)
        out = {}
        for name, (est, mode, level) in CELLS.items():
            if n == 2 and level == "sequence":
                continue
            res = rl.train(jax.random.key(0), lm, reward, BETA, algorithm="exact",
                           kl_estimator=est, kl_mode=mode, kl_level=level,
                           optimizer_fn=optax.sgd, learning_rate=0.5, num_steps=2000)
            out[name] = jax.tree.map(np.asarray, res)
        return out


def _assert_is_the_tilt(res, n):
    """The last iterate is the tilt φ_{1/β} (backward messages): its KL, E R, every
    table, on the frontier; its exact value (the trajectory's last point) by
    enumeration."""
    lm, reward = _models(n)
    s = markov.tilt_summary(lm, reward, 1 / BETA)
    np.testing.assert_allclose(res.kl[-1], s.kl, atol=1e-6)
    np.testing.assert_allclose(res.reward[-1], s.mean, atol=1e-6)
    phi = markov.tilt(lm, reward, 1 / BETA)
    np.testing.assert_allclose(_softmax(np.asarray(res.logits[0])), phi.init_probs,
                               atol=1e-6)
    trans = _softmax(np.asarray(res.logits[1]))
    np.testing.assert_allclose(trans, np.asarray(phi.trans_probs).reshape(trans.shape),
                               atol=1e-6)
    front = float(markov.optimal_reward(lm, reward, float(res.kl[-1])))
    assert abs(front - float(res.reward[-1])) < 1e-6
    np.testing.assert_allclose(_enum_value(_flat(res.logits), n),
                               (res.kl[-1], res.reward[-1]), rtol=1e-10)


def test_true_gradient_reaches_the_finite_n_tilt(x64):
    # n = 2: a homogeneous chain (init, trans) is every law on K^2 sequences, so the
    # maximiser of E R - β KL is the tilt φ_{1/β} itself.
    _assert_is_the_tilt(_exact_runs(2)["k1/reward_to_go/token"], 2)


def test_biased_cell_stops_below_the_frontier(x64):
    # Per-token k2 as a loss drops E[s_t Σ_{u>t} ℓ_u]: its stationary point is not
    # the tilt even where the policy class holds the tilt (n = 2).
    lm, reward = _models(2)
    runs = _exact_runs(2)
    for name, res in runs.items():
        front = float(markov.optimal_reward(lm, reward, float(res.kl[-1])))
        gap = front - res.reward[-1]
        assert gap >= -1e-9, (name, gap)
        if name == "k1/reward_to_go/token":
            assert abs(gap) < 1e-9, (name, gap)  # the true gradient: on it
        else:
            assert gap > 1e-4, (name, gap)  # the biased ones: strictly below
    # Where k2/loss/token stops is its own stationary point, by enumeration:
    # grad E_q[R] = beta E_q[sum_t l_t grad log q(y_t | y_{t-1})] (l_t held fixed).
    flat = _flat(runs["k2/loss/token"].logits)
    y = np.array(list(itertools.product(range(3), repeat=2)))

    def log_q_tokens(f):
        q0, q = _softmax(f[:3]), _softmax(f[3:].reshape(3, 3))
        return np.stack([np.log(q0[y[:, 0]]), np.log(q[y[:, 0], y[:, 1]])], axis=1)

    weight = np.exp(log_q_tokens(flat).sum(axis=1))
    ell = log_q_tokens(flat) - np.stack(
        [np.log(MU[y[:, 0]]), np.log(TRANS[y[:, 0], y[:, 1]])], axis=1)
    k2_loss = _enum_grad(lambda f: np.sum(weight * np.sum(ell * log_q_tokens(f),
                                                          axis=1)), flat)
    reward_grad = _enum_grad(lambda f: _enum_value(f, 2)[1], flat)
    np.testing.assert_allclose(reward_grad, BETA * k2_loss, atol=1e-7)


def test_every_iterate_on_or_below_the_frontier(x64):
    lm, reward = _models(3)
    for name, res in _exact_runs(3).items():
        for kl, rew in zip(res.kl[::100], res.reward[::100], strict=True):
            front = float(markov.optimal_reward(lm, reward, max(float(kl), 0.0)))
            assert rew <= front + 1e-9, (name, kl, rew, front)


def test_stationary_points_by_enumeration(x64):
    # n = 3: the homogeneous class misses the (inhomogeneous) tilt.  Every run has
    # stopped (its exact trajectory is flat); the true gradient (and sequence-level
    # k2 as a loss) stops where ∇J = 0 (J = E R - β KL by enumeration, finite
    # differences); a biased cell stops where ∇J ≠ 0, at a lower J.
    lm, reward = _models(3)
    runs = _exact_runs(3)

    def objective(f):
        kl, rew = _enum_value(f, 3)
        return rew - BETA * kl

    values = {}
    for name, res in runs.items():
        np.testing.assert_allclose(res.kl[-100:], res.kl[-1], atol=1e-10)
        np.testing.assert_allclose(res.reward[-100:], res.reward[-1], atol=1e-10)
        flat = _flat(res.logits)
        grad_j = _enum_grad(objective, flat)
        values[name] = objective(flat)
        if name in ("k1/reward_to_go/token", "k2/loss/sequence"):
            np.testing.assert_allclose(grad_j, 0.0, atol=1e-7, err_msg=name)
        else:
            assert np.linalg.norm(grad_j) > 1e-3, name
            assert values[name] < values["k1/reward_to_go/token"] - 1e-4, name
    # the class gap of the true gradient: below the frontier, above no other cell
    best = runs["k1/reward_to_go/token"]
    s = markov.tilt_summary(lm, reward, 1 / BETA)
    assert values["k1/reward_to_go/token"] < float(s.mean - BETA * s.kl) - 1e-4
    assert float(markov.optimal_reward(lm, reward, float(best.kl[-1]))) \
        > best.reward[-1] + 1e-4


def test_sampled_mode_lands_on_the_exact_stationary_point(x64):
    # REINFORCE (leave-one-out baseline) with per-token k2 in the loss, 16 seeds:
    # the mean final (KL, E R) is within Monte Carlo error (|z| < 5, z from the
    # spread over seeds) of the exact mode's stationary point, and far (in z) from
    # the true gradient's.
    lm, reward = _models(3)
    res = rl.train_sweep(jax.random.key(7), lm, reward, jnp.asarray([BETA]),
                         num_seeds=16, algorithm="reinforce", kl_estimator="k2",
                         kl_mode="loss", kl_level="token", optimizer_fn=optax.adam,
                         learning_rate=0.02, num_steps=500, batch_size=64)
    final = np.stack([np.asarray(res.kl[0, :, -1]), np.asarray(res.reward[0, :, -1])])
    mean, se = final.mean(1), final.std(1, ddof=1) / np.sqrt(final.shape[1])
    runs = _exact_runs(3)
    for name, near in (("k2/loss/token", True), ("k1/reward_to_go/token", False)):
        target = np.array([runs[name].kl[-1], runs[name].reward[-1]])
        z = (mean - target) / se
        if near:
            assert np.all(np.abs(z) < 5), (name, z)
        else:
            assert np.max(np.abs(z)) > 5, (name, z)
    # the estimates along the way are of the batch: finite, and the trajectory exact
    np.testing.assert_allclose(_enum_value(_flat(jax.tree.map(lambda x: x[0, 0],
                                                              res.logits)), 3),
                               final[:, 0], rtol=1e-10)


# -- time-varying policies: trans_logits (n - 1, K, K) hold the tilt ----------------


def _varying(lm):
    """``P``'s own tables as a time-varying policy (``n − 1`` identical slices)."""
    return lm.log_init, jnp.stack([lm.log_trans] * (lm.length - 1))


@pytest.mark.parametrize("n", [3, 4])
def test_time_varying_true_gradient_reaches_the_tilt(n, x64):
    # The homogeneous class stops below the frontier for n >= 3 (the test above);
    # with one transition matrix per step the maximiser of E R - β KL, the
    # time-inhomogeneous tilt φ_{1/β} (backward messages), is in the class.
    lm, reward = _models(n)
    res = rl.train(jax.random.key(0), lm, reward, BETA, algorithm="exact",
                   kl_estimator="k1", kl_mode="reward_to_go", init_logits=_varying(lm),
                   optimizer_fn=optax.sgd, learning_rate=4.0, num_steps=1000)
    assert res.logits[1].shape == (n - 1, 3, 3)
    _assert_is_the_tilt(res, n)


def test_identical_slices_train_as_the_homogeneous_policy(x64):
    # (init, [B, B]) is the homogeneous chain (init, B): the same exact values (and
    # the same as enumeration); the gradients' chain rule is in test_kl_gradients.
    lm, reward = _models(3)
    logits = (jnp.array([0.2, -0.1, 0.0]),
              jnp.array([[0.5, 0.0, -0.5], [0.0, 1.0, 0.2], [-0.3, 0.4, 0.1]]))
    tied = (logits[0], jnp.stack([logits[1]] * 2))
    hom, var = (rl.evaluate(x, lm, reward) for x in (logits, tied))
    np.testing.assert_allclose([var.kl, var.reward], [hom.kl, hom.reward], rtol=1e-12)
    np.testing.assert_allclose(_enum_value(_flat(tied), 3), [var.kl, var.reward],
                               rtol=1e-12)
    # P's own time-inhomogeneous tables are the default policy of a tilted lm
    phi = markov.tilt(lm, reward, 1.0)
    res = rl.train(jax.random.key(0), phi, reward, BETA, algorithm="exact",
                   num_steps=1)
    assert res.logits[1].shape == (2, 3, 3) and abs(float(res.kl[0])) < 1e-12


# -- PPO and GRPO on chains ----------------------------------------------------------
# A time-varying policy with the true-KL cell (k1, reward-to-go): the exact stopping
# point of the cell is the tilt, from backward messages (an independent route).
# Adam with a small step: the final (KL, E R) of each seed jitters around the
# stopping point; the z-scores use the spread over seeds.
SEEDS, GROUP = 16, 4


@functools.cache
def _sampled_runs(algorithm, scale_rewards=True):
    with jax.enable_x64(True):
        lm, reward = _models(3)
        res = rl.train_sweep(jax.random.key(3), lm, reward, jnp.asarray([BETA]),
                             num_seeds=SEEDS, algorithm=algorithm, kl_estimator="k1",
                             kl_mode="reward_to_go", kl_level="token",
                             init_logits=_varying(lm), optimizer_fn=optax.adam,
                             learning_rate=0.02, num_steps=300, batch_size=64,
                             num_epochs=2, group_size=GROUP,
                             scale_rewards=scale_rewards)
        return jax.tree.map(lambda x: np.asarray(x[0]), res)


def _z_to_tilt(res, lam):
    lm, reward = _models(3)
    final = np.stack([res.kl[:, -1], res.reward[:, -1]])
    mean, se = final.mean(1), final.std(1, ddof=1) / np.sqrt(final.shape[1])
    s = markov.tilt_summary(lm, reward, lam)
    return (mean - np.array([float(s.kl), float(s.mean)])) / se


def _check_on_or_below_the_frontier(res):
    """Every 10th iterate of every seed (and the last): on or below the exact
    finite-n frontier; the last one's value by enumeration."""
    lm, reward = _models(3)
    for kl_row, rew_row in zip(res.kl, res.reward, strict=True):
        for kl, rew in zip(kl_row[::-10], rew_row[::-10], strict=True):
            front = float(markov.optimal_reward(lm, reward, max(float(kl), 0.0)))
            assert rew <= front + 1e-9, (kl, rew, front)
    last = jax.tree.map(lambda x: x[0], res.logits)
    np.testing.assert_allclose(_enum_value(_flat(last), 3),
                               (res.kl[0, -1], res.reward[0, -1]), rtol=1e-10)


def test_ppo_lands_on_the_tilt(x64):
    # PPO (2 epochs per batch, per-token clipped ratio, leave-one-out baseline)
    # with the true-KL cell: its exact stopping point is the tilt φ_{1/β}; the same
    # test resolves a change of β by G/(G - 1) = 4/3 (|z| > 5 at the tilt of β·4/3).
    res = _sampled_runs("ppo")
    _check_on_or_below_the_frontier(res)
    assert np.all(np.abs(_z_to_tilt(res, 1 / BETA)) < 5)
    assert np.max(np.abs(_z_to_tilt(res, (GROUP - 1) / (GROUP * BETA)))) > 5


def test_grpo_centred_advantages_scale_beta(x64):
    # GRPO's group mean includes the sample itself: E[(R_i − R̄_g) ∇log Q(y_i)] =
    # (1 − 1/G) ∇E R, so without the std division GRPO ascends
    # E R − β G/(G − 1) KL: it lands on the tilt at λ = (G − 1)/(G β), not at 1/β.
    res = _sampled_runs("grpo", scale_rewards=False)
    _check_on_or_below_the_frontier(res)
    assert np.all(np.abs(_z_to_tilt(res, (GROUP - 1) / (GROUP * BETA))) < 5)
    assert np.max(np.abs(_z_to_tilt(res, 1 / BETA))) > 5


def test_grpo_std_scaled_stays_below_the_frontier(x64):
    # Dividing by the group's sample std is a random, θ-dependent scale of the
    # reward term: no fixed β, no tilt to land on.  What is exact: every iterate is
    # on or below the frontier, and the trajectory is the iterates' exact value.
    _check_on_or_below_the_frontier(_sampled_runs("grpo"))


def test_ppo_min_clip_form_of_the_penalty(x64):
    # The clipped penalty in PPO's pessimistic form (its per-sample gradient is
    # checked against the hand-written one in test_kl_gradients): with the same
    # rollouts and big steps the ratios pass 1 + ε and the two forms train
    # differently; both trajectories are exact values of their iterates.  (The
    # configuration of _sampled_runs, the cell and step size as data: one
    # compilation.)
    lm, reward = _models(3)
    runs = {}
    for form in ("clip", "min"):
        res = rl.train_sweep(jax.random.key(5), lm, reward, jnp.asarray([BETA]),
                             num_seeds=SEEDS, algorithm="ppo", kl_estimator="k3",
                             kl_mode="reward_to_go", kl_weighting="clipped",
                             kl_clip_form=form, init_logits=_varying(lm),
                             optimizer_fn=optax.adam, learning_rate=0.3,
                             num_steps=300, batch_size=64, num_epochs=2,
                             group_size=GROUP)
        runs[form] = jax.tree.map(lambda x: np.asarray(x[0]), res)
        last = jax.tree.map(lambda x: x[0], runs[form].logits)
        np.testing.assert_allclose(_enum_value(_flat(last), 3),
                                   (runs[form].kl[0, -1], runs[form].reward[0, -1]),
                                   rtol=1e-10)
    assert np.max(np.abs(runs["clip"].kl[:, -1] - runs["min"].kl[:, -1])) > 1e-4


def test_evaluate_markov_by_enumeration(x64):
    lm, reward = _models(3)
    logits = (jnp.array([0.2, -0.1, 0.0]),
              jnp.array([[0.5, 0.0, -0.5], [0.0, 1.0, 0.2], [-0.3, 0.4, 0.1]]))
    kl, rew = _enum_value(_flat(logits), 3)
    value = rl.evaluate(logits, lm, reward)
    np.testing.assert_allclose([value.kl, value.reward], [kl, rew], rtol=1e-12)
    np.testing.assert_allclose(rl.objective(logits, lm, reward, 0.7), rew - 0.7 * kl,
                               rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"kl_mode": "reward_to_go", "kl_level": "sequence"}, "kl_mode='reward_to_go'"),
    ({"kl_level": "tokens"}, "kl_level must be one of"),
    ({"kl_weighting": "is"}, "kl_weighting must be one of"),
    ({"kl_clip_form": "max"}, r"kl_clip_form must be one of \('clip', 'min'\)"),
    ({"kl_mode": "penalty"}, "kl_mode must be one of"),
    ({"init_logits": jnp.zeros(3)}, "init_logits must be a pair"),
    ({"init_logits": (jnp.zeros(3), jnp.zeros((3, 3, 3)))},
     r"init_logits must be .*\(n - 1, K, K\).* got shapes \(3,\) and \(3, 3, 3\)"),
])
def test_markov_bad_input(x64, kwargs, match):
    lm, reward = _models(3)
    with pytest.raises(ValueError, match=match):
        rl.train(jax.random.key(0), lm, reward, 1.0, **kwargs)


def test_memoryless_rejects_markov_options(x64):
    lm = jaxalign.MemorylessLM.from_probs(jnp.asarray(MU), length=3)
    reward = jaxalign.LinearReward(jnp.asarray(R))
    with pytest.raises(ValueError, match="kl_level, kl_weighting and kl_clip_form"):
        rl.train(jax.random.key(0), lm, reward, 1.0, kl_level="sequence")
    with pytest.raises(ValueError, match="got 'token', 'on_policy' and 'min'"):
        rl.train(jax.random.key(0), lm, reward, 1.0, kl_clip_form="min")
    with pytest.raises(ValueError, match="kl_mode must be one of"):
        rl.train(jax.random.key(0), lm, reward, 1.0, kl_mode="reward_to_go")
    zero = jaxalign.MarkovLM.from_probs(jnp.asarray(MU), jnp.asarray(
        [[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]), length=3)
    with pytest.raises(ValueError, match="positive probability"):
        rl.train(jax.random.key(0), zero, reward, 1.0)
