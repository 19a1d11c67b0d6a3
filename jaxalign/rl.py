r"""RL baselines for memoryless and Markov policies: REINFORCE, PPO, GRPO,
exact-gradient ascent.

A memoryless policy is a vector of per-token logits ``θ (K,)``; it samples ``length``
tokens i.i.d. from ``π = softmax(θ)``.  All methods maximise the sequence-level
KL-regularised objective

.. math::
    J(\theta) = \mathbb{E}_{\pi}[R] - \beta\, \mathrm{KL}(\pi^{\otimes n} \| P), \qquad
    \beta = 1/\lambda,

whose maximiser is the tilt :math:`p_\lambda` (THEORY.md §1.3).  Because the policy is
memoryless, the exact ``(KL, reward)`` of every iterate is closed form
(``n Σ π log(π/p)`` and ``n Σ π r``), so any shortfall against the frontier belongs to
the algorithm, not to the policy class.

Conventions shared by all sampled methods: a batch holds ``batch_size`` sequences;
per-sequence losses are *sums* over tokens (so ``beta`` is the sequence-level
coefficient; GRPO's per-token mean equals this with ``beta`` and the learning rate
divided by ``n``); the KL penalty is one of the per-token estimators of Schulman
(``k1 = log π/p``, ``k2 = ½ (log π/p)²``, ``k3 = p/π − 1 − log p/π``, with ``x ~ π``),
either folded into the reward (``kl_mode="reward"``, score-function gradient) or added
to the loss (``kl_mode="loss"``, pathwise gradient through ``π`` with the samples held
fixed).  :func:`kl_estimator_gradient` gives the exact expected gradient of each
choice; in short (on-policy): reward-k1 gives ``∇KL(π‖P)``, loss-k1 gives ``0``,
loss-k2 gives ``∇KL(π‖P)`` and loss-k3 gives ``∇KL(P‖π)`` (the *reverse* KL).

Training loops are ``lax.scan`` over steps inside one jit; :func:`train_sweep` vmaps
them over seeds and ``beta`` values.

Markov policies (issue 13): with a :class:`jaxalign.MarkovLM` reference the same
:func:`train` / :func:`train_sweep` train a chain with tabular logits
``(init (K,), trans (K, K))`` (homogeneous) or ``(init (K,), trans (n − 1, K, K))``
(time-varying: the class of the KL-optimal tilt), the penalty any cell of
:data:`jaxalign.kl_gradients.GRID` (``kl_estimator``, ``kl_mode`` = the placement,
``kl_level``, ``kl_weighting``), with exact ``(KL, reward)`` trajectories by the
forward recursions of :mod:`jaxalign.markov`; ``algorithm="exact"`` follows each
cell's exact expected gradient to its stationary point.  The loop is a second step
function behind the same entry points: the memoryless one leans on closed forms (an
``O(K)`` policy value, an alias sampler, two KL choices) that a chain does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign import estimators, theory
from jaxalign import kl_gradients as kg
from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_key,
    check_positive_int,
    check_real,
    is_concrete,
    prng_jit,
    renamed_keyword,
)
from jaxalign.markov._finite import _chain_kl, _chain_mean
from jaxalign.markov._model import MarkovLM, _prepare
from jaxalign.models import LinearReward, MemorylessLM, check_compatible
from jaxalign.sample._kernels import _alias_table, _alias_tokens
from jaxalign.theory._renyi import _categorical_kl

__all__ = [
    "ALGORITHMS",
    "KL_ESTIMATORS",
    "KL_MODES",
    "TrainResult",
    "PolicyValue",
    "objective",
    "evaluate",
    "kl_estimator_gradient",
    "train",
    "train_sweep",
    "FrontierData",
    "frontier_data",
]

ALGORITHMS = ("exact", "reinforce", "ppo", "grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_MODES = ("reward", "loss")


class TrainResult(NamedTuple):
    """Output of :func:`train` (leading ``(num_betas, num_seeds)`` axes in a sweep).

    Index ``t`` of a trajectory describes the policy before update ``t``; the last
    entry of ``kl`` and ``reward`` is the final policy.
    """

    logits: Array  # (K,) final policy logits
    kl: Array  # (num_steps + 1,) exact KL(π_t^{⊗n} ‖ P)
    reward: Array  # (num_steps + 1,) exact E_{π_t}[R]
    kl_estimate: Array  # (num_steps,) batch mean of the chosen KL estimator (seq level)
    reward_estimate: Array  # (num_steps,) batch mean of R


class PolicyValue(NamedTuple):
    """Exact sequence-level KL and expected reward of a memoryless policy."""

    kl: Array  # KL(π^{⊗n} ‖ P)
    reward: Array  # E_π[R]


# -- closed forms ------------------------------------------------------------------


def _policy_value(logits: Array, base_log_probs: Array, token_rewards: Array,
                  length: int) -> PolicyValue:
    log_pi = jax.nn.log_softmax(logits)
    kl = length * _categorical_kl(log_pi, base_log_probs)
    return PolicyValue(kl, length * jnp.sum(jnp.exp(log_pi) * token_rewards))


def _check_base(lm: MemorylessLM) -> None:
    if is_concrete(lm.log_probs) and np.any(np.isneginf(np.asarray(lm.log_probs))):
        raise ValueError(
            "lm.log_probs must be finite for training (every token needs p(x) > 0, "
            "or the KL of a softmax policy is infinite), got "
            f"{np.asarray(lm.log_probs)}"
        )


def _check_logits(logits: ArrayLike, lm: MemorylessLM, name: str = "logits") -> Array:
    logits = jnp.asarray(logits)
    if logits.shape != lm.log_probs.shape:
        raise ValueError(
            f"{name} must have shape {lm.log_probs.shape} (K,), got {logits.shape}"
        )
    if logits.dtype != lm.log_probs.dtype:
        logits = logits.astype(lm.log_probs.dtype)
    check_real(logits, name)
    return logits


def evaluate(logits, lm: MemorylessLM | MarkovLM, reward) -> PolicyValue:
    r"""Exact KL to the base model and expected reward of a policy.

    Memoryless (``logits (K,)``, ``π = softmax(logits)``):

    .. math::
        \mathrm{KL} = n \sum_x \pi(x) \log\frac{\pi(x)}{p(x)}, \qquad
        \mathbb{E}_\pi R = n \sum_x \pi(x) r(x).

    Markov (``lm`` a :class:`jaxalign.MarkovLM`, ``logits`` the pair
    ``(init_logits (K,), trans_logits)`` of a chain ``Q``, ``trans_logits``
    ``(K, K)`` (homogeneous) or ``(n − 1, K, K)`` (time-varying)):
    ``KL(Q‖P)`` and ``E_Q R`` by the forward recursions of
    :func:`jaxalign.markov.chain_kl` and :func:`jaxalign.markov.chain_expected_reward`
    (``reward`` a :class:`jaxalign.LinearReward` or :class:`jaxalign.PairReward`).

    Args:
      logits: ``(K,)`` policy logits, or the Markov pair.
      lm: the base model ``P`` (its ``length`` is ``n``).
      reward: the reward used for scoring (e.g. the gold reward).

    Returns:
      A :class:`PolicyValue` of 0-d arrays.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(2, length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> float(evaluate(lm.log_probs, lm, r).reward)
      2.0
      >>> chain = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=4)
      >>> v = evaluate((chain.log_init, chain.log_trans + 0.3), chain, r)  # Q = P
      >>> round(float(v.kl), 12), round(float(v.reward), 12)
      (0.0, 2.0)
    """
    if isinstance(lm, MarkovLM):
        chain, flat, _ = _markov_setup(lm, reward, logits, "logits")
        return _markov_value_jit(flat, chain, lm.num_tokens, lm.length)
    check_compatible(lm, reward)
    logits = _check_logits(logits, lm)
    return _policy_value(logits, lm.log_probs, reward.token_rewards, lm.length)


def objective(logits, lm: MemorylessLM | MarkovLM, reward,
              beta: ArrayLike) -> Array:
    r"""Exact KL-regularised objective ``E_π R − β KL(π^{⊗n}‖P)`` of a policy.

    Memoryless: its maximiser over logits is the tilt ``p_λ`` with ``λ = 1/β``,
    with value ``n Λ(λ)/λ`` (THEORY.md §1.3).  Markov (``logits`` the pair of
    :func:`evaluate`): the maximiser over all laws is the time-inhomogeneous tilt
    :func:`jaxalign.markov.tilt`, which a homogeneous chain reaches only for
    ``n <= 2``, a time-varying one (``trans_logits (n − 1, K, K)``) for every
    ``n``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(2, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(objective(lm.log_probs, lm, r, 1.0)), 6)
      0.5
    """
    value = evaluate(logits, lm, reward)
    return value.reward - beta * value.kl


# -- KL estimators -------------------------------------------------------------------


def _k_of_log_ratio(log_ratio: Array, estimator: str) -> Array:
    # log_ratio = log p(x) - log π(x), x ~ π; the formulas live in jaxalign.estimators.
    return estimators.kl_estimator_terms(log_ratio)[KL_ESTIMATORS.index(estimator)]


def _check_choice(value, name: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _penalty_surrogate(logits: Array, base_log_probs: Array, estimator: str,
                       kl_mode: str) -> Array:
    # A per-token function whose gradient is the exact expected gradient of the
    # sampled penalty: score-function for "reward", pathwise for "loss".
    log_pi = jax.nn.log_softmax(logits)
    pi = jnp.exp(log_pi)
    k = _k_of_log_ratio(base_log_probs - log_pi, estimator)
    if kl_mode == "reward":
        return jnp.sum(pi * jax.lax.stop_gradient(k))
    return jnp.sum(jax.lax.stop_gradient(pi) * k)


def kl_estimator_gradient(logits: ArrayLike, lm: MemorylessLM, estimator: str = "k1",
                          kl_mode: str = "reward") -> Array:
    r"""Exact expected gradient (w.r.t. logits) of a sampled sequence-level KL penalty.

    For on-policy samples ``x ~ π`` and estimator ``k``:

    - ``kl_mode="reward"`` (score function): ``n Σ_x π(x) k(x) ∇log π(x)``;
    - ``kl_mode="loss"`` (pathwise, samples fixed): ``n Σ_x π(x) ∇k(x)``.

    Closed forms: reward-k1 and loss-k2 give ``∇KL(π‖P)``; loss-k1 gives ``0`` (no
    regularisation at all); loss-k3 (GRPO's choice) gives ``∇KL(P‖π)``, the reverse
    KL, so training with it converges to ``argmax E_π R − β KL(P‖π)``, not the tilt.

    Returns:
      ``(K,)`` gradient of the penalty (the loss adds ``β`` times it).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=2)
      >>> g = kl_estimator_gradient(jnp.array([0.3, 0.0]), lm, "k1", "loss")
      >>> [abs(round(float(v), 6)) for v in g]
      [0.0, 0.0]
    """
    _check_choice(estimator, "estimator", KL_ESTIMATORS)
    _check_choice(kl_mode, "kl_mode", KL_MODES)
    _check_base(lm)
    logits = _check_logits(logits, lm)
    surrogate = lambda th: _penalty_surrogate(th, lm.log_probs, estimator, kl_mode)
    return lm.length * jax.grad(surrogate)(logits)


# -- training ----------------------------------------------------------------------


class _Config(NamedTuple):
    algorithm: str
    length: int
    num_steps: int
    batch_size: int
    group_size: int
    num_epochs: int
    kl_mode: str
    kl_estimator: str
    optimizer_fn: Callable
    scale_rewards: bool


def _sample_tokens(key: PRNGKey, logits: Array, shape: tuple) -> Array:
    # The token sampler of jaxalign.sample: an alias table built from the current
    # policy, one 32-bit word per token.
    words = jax.random.bits(key, shape, jnp.uint32)
    return _alias_tokens(_alias_table(jax.nn.softmax(logits)), words)


def _group_advantages(scores: Array, cfg: _Config) -> Array:
    if cfg.algorithm == "grpo":
        groups = scores.reshape(-1, cfg.group_size)
        centred = groups - jnp.mean(groups, axis=1, keepdims=True)
        if cfg.scale_rewards:
            std = jnp.std(groups, axis=1, ddof=1, keepdims=True)
            centred = centred / (std + 1e-6)
        return centred.reshape(-1)
    # Leave-one-out mean baseline: keeps the score-function gradient unbiased.
    b = scores.shape[0]
    return scores - (jnp.sum(scores) - scores) / (b - 1)


def _opt_update(optimizer, grads, state, params):
    # optax mixes python floats and int32 step counts (Adam's bias correction), which
    # the strict dtype-promotion mode rejects; the promotion is harmless there.
    with jax.numpy_dtype_promotion("standard"):
        updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _train_one(key, base_log_probs, token_rewards, beta, learning_rate, clip_eps,
               init_logits, cfg: _Config) -> TrainResult:
    optimizer = cfg.optimizer_fn(learning_rate)
    n = cfg.length
    est, mode = cfg.kl_estimator, cfg.kl_mode

    def exact_loss(theta):
        log_pi = jax.nn.log_softmax(theta)
        gain = n * jnp.sum(jnp.exp(log_pi) * token_rewards)
        pen = n * _penalty_surrogate(theta, base_log_probs, est, mode)
        return -(gain - beta * pen)

    def token_terms(theta, tokens):
        log_pi_tok = jax.nn.log_softmax(theta)[tokens]
        k_tok = _k_of_log_ratio(base_log_probs[tokens] - log_pi_tok, est)
        return log_pi_tok, k_tok

    def step(carry, t):
        theta, opt_state = carry
        value = _policy_value(theta, base_log_probs, token_rewards, n)
        if cfg.algorithm == "exact":
            loss_fn = exact_loss
            kl_hat, reward_hat = value.kl, value.reward
            grads = jax.grad(loss_fn)(theta)
            theta, opt_state = _opt_update(optimizer, grads, opt_state, theta)
            return (theta, opt_state), (value.kl, value.reward, kl_hat, reward_hat)

        tokens = _sample_tokens(jax.random.fold_in(key, t), theta, (cfg.batch_size, n))
        rewards = jnp.sum(token_rewards[tokens], axis=-1)
        old_log_pi_tok, old_k_tok = token_terms(theta, tokens)
        kl_seq = jnp.sum(old_k_tok, axis=-1)
        scores = rewards - beta * kl_seq if mode == "reward" else rewards
        adv = jax.lax.stop_gradient(_group_advantages(scores, cfg))

        def sampled_loss(th):
            log_pi_tok, k_tok = token_terms(th, tokens)
            pen = beta * jnp.mean(jnp.sum(k_tok, -1)) if mode == "loss" else 0.0
            if cfg.algorithm == "reinforce":
                surr = adv * jnp.sum(log_pi_tok, axis=-1)
            else:
                ratio = jnp.exp(log_pi_tok - old_log_pi_tok)
                a = adv[:, None]
                clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
                surr = jnp.sum(jnp.minimum(ratio * a, clipped * a), axis=-1)
            return -jnp.mean(surr) + pen

        def epoch(c, _):
            th, st = c
            grads = jax.grad(sampled_loss)(th)
            return _opt_update(optimizer, grads, st, th), None

        (theta, opt_state), _ = jax.lax.scan(
            epoch, (theta, opt_state), None, length=cfg.num_epochs
        )
        out = (value.kl, value.reward, jnp.mean(kl_seq), jnp.mean(rewards))
        return (theta, opt_state), out

    with jax.numpy_dtype_promotion("standard"):
        carry = (init_logits, optimizer.init(init_logits))
    (theta, _), (kl, rew, kl_hat, rew_hat) = jax.lax.scan(
        step, carry, jnp.arange(cfg.num_steps))
    final = _policy_value(theta, base_log_probs, token_rewards, n)
    return TrainResult(
        theta,
        jnp.concatenate([kl, final.kl[None]]),
        jnp.concatenate([rew, final.reward[None]]),
        kl_hat,
        rew_hat,
    )


def _sweep_impl(key, base_log_probs, token_rewards, betas, learning_rate, clip_eps,
                init_logits, cfg: _Config, num_seeds: int) -> TrainResult:
    # Keys are derived inside the vmapped bodies (fold_in of the closed-over key):
    # vmapping a batch of keys into lax.scan trips JAX 0.10's key-reuse checker.
    def per_beta(beta):
        return jax.vmap(
            lambda i: _train_one(jax.random.fold_in(key, i), base_log_probs,
                                 token_rewards, beta, learning_rate, clip_eps,
                                 init_logits, cfg)
        )(jnp.arange(num_seeds))

    return jax.vmap(per_beta)(betas)


_sweep_jit = prng_jit("cfg", "num_seeds")(_sweep_impl)


# -- Markov policies -----------------------------------------------------------------
# The memoryless loop above leans on closed forms (a policy value in O(K), an alias
# sampler, two KL choices); a chain needs forward recursions, a scan per sequence and
# the 45 cells of jaxalign.kl_gradients.  The step below is the same algorithm
# structure (exact / REINFORCE / PPO / GRPO, optax, leave-one-out or group baselines,
# a lax.scan over steps vmapped over betas and seeds) on those pieces.


class _Chain(NamedTuple):
    """The reference chain and the reward as arrays (a pytree)."""

    lp0: Array  # (K,) log p(y_1)
    lp: Array  # (n - 1, K, K) log p_t(a, b)
    first: Array  # (K,) r_1
    pair: Array  # (K, K) r(a, b)


class _MarkovConfig(NamedTuple):
    algorithm: str
    length: int
    trans_shape: tuple  # (K, K) or (n - 1, K, K): the policy's transition logits
    num_steps: int
    batch_size: int
    group_size: int
    num_epochs: int
    structure: str  # the penalty's recursion (kl_gradients._structure); the rest of
    # the cell is data (_Penalty), so cells of one structure share a compilation
    optimizer_fn: Callable
    scale_rewards: bool


class _Penalty(NamedTuple):
    """The penalty cell as arrays (a pytree)."""

    cell: kg._Cell
    token: Array  # 0-d bool: level == "token"
    to_go: Array  # 0-d bool: placement == "reward_to_go"


def _markov_setup(lm: MarkovLM, reward, logits, name: str):
    """``(_Chain, θ flat, trans_shape)`` with validation (``logits=None``: ``P``'s
    own, time-varying when ``P`` is)."""
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    if is_concrete(log_trans) and not (np.all(np.isfinite(np.asarray(log_init)))
                                       and np.all(np.isfinite(np.asarray(log_trans)))):
        raise ValueError(
            "lm must give every token and transition a positive probability for "
            "training (the KL of a softmax policy is infinite otherwise), got a zero")
    k, n = lm.num_tokens, lm.length
    lp = log_trans if log_trans.ndim == 3 else jnp.broadcast_to(log_trans[None],
                                                                (n - 1, k, k))
    if logits is None:
        logits = (log_init, log_trans)
    flat = kg._flatten(logits, k, True, dtype, name, n)
    trans_shape = tuple(np.shape(logits[1]))  # (K, K) or (n - 1, K, K), checked
    return _Chain(log_init, lp.astype(dtype), first, pair), flat, trans_shape


def _per_token_log_q(flat: Array, y: Array, k: int) -> Array:
    """``(..., n)`` ``log q(y_t | y_{t-1})`` of sequences ``y (..., n)``."""
    return kg._per_token(*kg._tables(flat, k, True, y.shape[-1]), y)


def _markov_value(flat: Array, chain: _Chain, k: int, length: int) -> PolicyValue:
    lq0, lq = kg._tables(flat, k, True, length)
    return PolicyValue(_chain_kl(lq0, lq, chain.lp0, chain.lp, length),
                       _chain_mean(lq0, lq, chain.first, chain.pair, length))


_markov_value_jit = jax.jit(_markov_value, static_argnames=("k", "length"))


def _markov_reward(flat: Array, chain: _Chain, k: int, length: int) -> Array:
    lq0, lq = kg._tables(flat, k, True, length)
    return _chain_mean(lq0, lq, chain.first, chain.pair, length)


def _markov_train_one(key, chain: _Chain, penalty: _Penalty, beta, learning_rate,
                      clip_eps, init_flat, cfg: _MarkovConfig) -> TrainResult:
    optimizer = cfg.optimizer_fn(learning_rate)
    k, n = chain.lp0.shape[0], cfg.length
    cell, token, to_go = penalty
    structure = cfg.structure

    def k_value(y, lq_tok):
        x = lq_tok - kg._per_token(chain.lp0, chain.lp, y)
        per_token = jnp.sum(kg._basis(x) @ cell.c, axis=-1)
        sequence = kg._basis(jnp.sum(x, axis=-1)) @ cell.c
        return jnp.where(token, per_token, sequence)

    def step(carry, t):
        theta, opt_state = carry
        value = _markov_value(theta, chain, k, n)
        problem = kg._Problem(theta, theta, chain.lp0, chain.lp)
        if cfg.algorithm == "exact":
            g_reward = jax.grad(_markov_reward)(theta, chain, k, n)
            g_kl, _ = kg._moments_impl(problem, cell, structure, k, True, n,
                                       covariance=False)
            grads = -g_reward + beta * g_kl
            theta, opt_state = _opt_update(optimizer, grads, opt_state, theta)
            return (theta, opt_state), (value.kl, value.reward, value.kl, value.reward)

        draw, draw_key = kg._sampler(theta, k, True, n), jax.random.fold_in(key, t)
        y = jax.vmap(lambda i: draw(jax.random.fold_in(draw_key, i)))(
            jnp.arange(cfg.batch_size))
        rewards = chain.first[y[:, 0]] + jnp.sum(chain.pair[y[:, :-1], y[:, 1:]], -1)
        old_lq_tok = _per_token_log_q(theta, y, k)
        adv = jax.lax.stop_gradient(_group_advantages(rewards, cfg))

        def sampled_loss(th):
            lq_tok = _per_token_log_q(th, y, k)
            if cfg.algorithm == "reinforce":
                surr = adv * jnp.sum(lq_tok, axis=-1)
            else:
                ratio = jnp.exp(lq_tok - old_lq_tok)
                a = adv[:, None]
                clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
                surr = jnp.sum(jnp.minimum(ratio * a, clipped * a), axis=-1)
            pen = jax.vmap(lambda yi: kg._surrogate(th, yi, problem, cell, token, to_go,
                                                    k, True))(y)
            return -jnp.mean(surr) + beta * jnp.mean(pen)

        def epoch(c, _):
            th, st = c
            return _opt_update(optimizer, jax.grad(sampled_loss)(th), st, th), None

        (theta, opt_state), _ = jax.lax.scan(epoch, (theta, opt_state), None,
                                             length=cfg.num_epochs)
        out = (value.kl, value.reward, jnp.mean(k_value(y, old_lq_tok)),
               jnp.mean(rewards))
        return (theta, opt_state), out

    with jax.numpy_dtype_promotion("standard"):
        carry = (init_flat, optimizer.init(init_flat))
    (theta, _), (kl, rew, kl_hat, rew_hat) = jax.lax.scan(
        step, carry, jnp.arange(cfg.num_steps))
    final = _markov_value(theta, chain, k, n)
    return TrainResult(
        (theta[:k], theta[k:].reshape(cfg.trans_shape)),
        jnp.concatenate([kl, final.kl[None]]),
        jnp.concatenate([rew, final.reward[None]]),
        kl_hat,
        rew_hat,
    )


def _markov_sweep_impl(key, chain, penalty, betas, learning_rate, clip_eps, init_flat,
                       cfg: _MarkovConfig, num_seeds: int) -> TrainResult:
    def per_beta(beta):
        return jax.vmap(
            lambda i: _markov_train_one(jax.random.fold_in(key, i), chain, penalty,
                                        beta, learning_rate, clip_eps, init_flat, cfg)
        )(jnp.arange(num_seeds))

    return jax.vmap(per_beta)(betas)


_markov_sweep_jit = prng_jit("cfg", "num_seeds")(_markov_sweep_impl)


def _check_hyper(algorithm, learning_rate, num_steps, batch_size, group_size,
                 num_epochs, clip_eps, optimizer_fn):
    """The hyperparameters shared by memoryless and Markov training."""
    _check_choice(algorithm, "algorithm", ALGORITHMS)
    if is_concrete(learning_rate):
        lr = np.asarray(learning_rate)
        if lr.ndim != 0 or not np.isfinite(lr) or lr <= 0:
            raise ValueError(
                f"learning_rate must be a finite scalar > 0, got {learning_rate!r}"
            )
    if is_concrete(clip_eps):
        ce = np.asarray(clip_eps)
        if ce.ndim != 0 or not np.isfinite(ce) or ce <= 0:
            raise ValueError(f"clip_eps must be a finite scalar > 0, got {clip_eps!r}")
    num_steps = check_positive_int(num_steps, "num_steps")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    batch_size = check_positive_int(batch_size, "batch_size", minimum=2)
    if algorithm == "grpo":
        group_size = check_positive_int(group_size, "group_size", minimum=2)
        if batch_size % group_size:
            raise ValueError(
                f"batch_size must be a multiple of group_size for GRPO, got "
                f"batch_size={batch_size}, group_size={group_size}"
            )
    else:
        group_size = batch_size
    if algorithm in ("exact", "reinforce"):
        num_epochs = 1
    if not callable(optimizer_fn):
        raise ValueError(
            "optimizer_fn must be a callable learning_rate -> optax."
            f"GradientTransformation (e.g. optax.adam), got {optimizer_fn!r}"
        )
    return num_steps, batch_size, group_size, num_epochs


def _validate(lm, reward, algorithm, learning_rate, num_steps, batch_size, group_size,
              num_epochs, kl_mode, kl_estimator, clip_eps, optimizer_fn, init_logits,
              scale_rewards, kl_level="token", kl_weighting="on_policy",
              kl_clip_form="clip"):
    check_compatible(lm, reward)
    _check_base(lm)
    _check_choice(algorithm, "algorithm", ALGORITHMS)
    _check_choice(kl_mode, "kl_mode", KL_MODES)
    _check_choice(kl_estimator, "kl_estimator", KL_ESTIMATORS)
    if kl_level != "token" or kl_weighting != "on_policy" or kl_clip_form != "clip":
        raise ValueError(
            f"kl_level, kl_weighting and kl_clip_form choose a cell of "
            f"jaxalign.kl_gradients for a MarkovLM only; a MemorylessLM needs "
            f"kl_level='token', kl_weighting='on_policy' and kl_clip_form='clip', got "
            f"{kl_level!r}, {kl_weighting!r} and {kl_clip_form!r}")
    num_steps, batch_size, group_size, num_epochs = _check_hyper(
        algorithm, learning_rate, num_steps, batch_size, group_size, num_epochs,
        clip_eps, optimizer_fn)
    init = lm.log_probs if init_logits is None else _check_logits(
        init_logits, lm, "init_logits")
    dtype = lm.log_probs.dtype
    if reward.token_rewards.dtype != dtype:
        raise ValueError(
            f"lm and reward must share a float dtype, got {dtype} and "
            f"{reward.token_rewards.dtype}"
        )
    cfg = _Config(algorithm, lm.length, num_steps, batch_size, group_size, num_epochs,
                  kl_mode, kl_estimator, optimizer_fn, bool(scale_rewards))
    lr = jnp.asarray(learning_rate, dtype=dtype)
    ce = jnp.asarray(clip_eps, dtype=dtype)
    return cfg, lr, ce, init


def _validate_markov(lm, reward, algorithm, learning_rate, num_steps, batch_size,
                     group_size, num_epochs, kl_mode, kl_estimator, kl_level,
                     kl_weighting, clip_eps, optimizer_fn, init_logits, scale_rewards,
                     kl_clip_form):
    chain, init, trans_shape = _markov_setup(lm, reward, init_logits, "init_logits")
    _check_choice(kl_estimator, "kl_estimator", kg.ESTIMATORS)
    _check_choice(kl_mode, "kl_mode", kg.PLACEMENTS)
    _check_choice(kl_level, "kl_level", kg.LEVELS)
    _check_choice(kl_weighting, "kl_weighting", kg.WEIGHTINGS)
    _check_choice(kl_clip_form, "kl_clip_form", kg.CLIP_FORMS)
    if kl_level == "sequence" and kl_mode == "reward_to_go":
        raise ValueError(
            "kl_mode='reward_to_go' needs kl_level='token', got kl_level='sequence' "
            "(a sequence-level penalty arrives at the last token: use kl_mode="
            "'reward')")
    num_steps, batch_size, group_size, num_epochs = _check_hyper(
        algorithm, learning_rate, num_steps, batch_size, group_size, num_epochs,
        clip_eps, optimizer_fn)
    impl = kg.Implementation(kl_estimator, kl_mode, kl_level, kl_weighting)
    cfg = _MarkovConfig(algorithm, lm.length, trans_shape, num_steps, batch_size,
                        group_size, num_epochs, kg._structure(impl), optimizer_fn,
                        bool(scale_rewards))
    dtype = init.dtype
    ce = jnp.asarray(clip_eps, dtype=dtype)
    penalty = _Penalty(kg._cell(impl, ce, kl_clip_form == "min"),
                       jnp.asarray(kl_level == "token"),
                       jnp.asarray(kl_mode == "reward_to_go"))
    return cfg, chain, penalty, jnp.asarray(learning_rate, dtype=dtype), ce, init


def _default_kl(algorithm, kl_mode, kl_estimator):
    if kl_mode is None:
        kl_mode = "loss" if algorithm == "grpo" else "reward"
    if kl_estimator is None:
        kl_estimator = "k3" if algorithm == "grpo" else "k1"
    return kl_mode, kl_estimator


def train_sweep(key: PRNGKey, lm: MemorylessLM | MarkovLM, reward,
                betas: ArrayLike, *, num_seeds: int = 1, algorithm: str | None = None,
                learning_rate: float = 0.05, num_steps: int = 200,
                batch_size: int = 32, group_size: int = 8, num_epochs: int = 4,
                kl_mode: str | None = None, kl_estimator: str | None = None,
                kl_level: str = "token", kl_weighting: str = "on_policy",
                kl_clip_form: str = "clip",
                clip_eps: float = 0.2, optimizer_fn: Callable = optax.adam,
                init_logits=None,
                scale_rewards: bool = True, method: str | None = None) -> TrainResult:
    r"""Train memoryless or Markov policies for every ``beta`` and seed, in one
    compiled call.

    Maximises ``E_π R − β KL(π^{⊗n}‖P)`` (see the module docstring) with:

    - ``"exact"``: autodiff of the closed-form objective (no sampling); with the default
      ``kl_mode="reward"``, ``kl_estimator="k1"`` it is the true gradient and converges
      to the tilt ``p_{1/β}``.  Other estimator/mode pairs use their exact expected
      gradient (:func:`kl_estimator_gradient`), which shows where each drives training.
    - ``"reinforce"``: score-function gradient with a leave-one-out mean baseline.
    - ``"ppo"``: ``num_epochs`` full-batch steps on the token-level clipped surrogate
      ``min(ρA, clip(ρ, 1±ε)A)`` with ``ρ = π_θ(x)/π_old(x)``; leave-one-out baseline,
      no critic (the state is trivial for a memoryless policy).
    - ``"grpo"``: as PPO, with group-relative advantages ``(s − mean_g)/(std_g + 1e-6)``
      over groups of ``group_size`` (``scale_rewards=False`` drops the division) and by
      default the k3 penalty in the loss.  The group mean includes the sample
      itself, ``E[(R_i − R̄_g) ∇log π(y_i)] = (1 − 1/G) ∇E R`` (``G`` the group
      size), while the penalty is not scaled: with ``scale_rewards=False`` GRPO
      ascends ``E R − β G/(G − 1) KL``, the exact objective at the effective
      ``β_eff = β G/(G − 1)`` (its maximiser the tilt at ``λ = (G − 1)/(G β)``).
      The std division multiplies the reward term by a random, ``θ``-dependent
      ``1/(std_g + 1e-6)`` (about ``β σ_R`` in the role of ``β``): no fixed
      effective ``β``, and in general no tilt at its stopping point.

    Seeds use ``fold_in(key, seed_index)``; the same seeds are used for every ``beta``.

    **Markov policies** (``lm`` a :class:`jaxalign.MarkovLM`, every transition
    ``> 0``; ``reward`` a :class:`jaxalign.LinearReward` or
    :class:`jaxalign.PairReward`): the policy is a chain with tabular logits
    ``θ = (init_logits (K,), trans_logits)``, ``trans_logits`` ``(K, K)``
    (homogeneous) or ``(n − 1, K, K)`` (time-varying, one matrix per step, the
    layout of a time-inhomogeneous :class:`jaxalign.MarkovLM`), and the penalty is one
    cell ``(kl_estimator, kl_mode, kl_level, kl_weighting)`` of
    :data:`jaxalign.kl_gradients.GRID` (``kl_mode`` is the placement:
    ``"reward"``, ``"reward_to_go"`` or ``"loss"``).  ``"exact"`` follows
    ``∇E_Q[R] − β E[g]`` with ``∇E_Q[R]`` by autodiff of the forward recursion of
    :func:`jaxalign.markov.chain_expected_reward` and ``E[g]`` the cell's exact
    expected gradient at ``θ = θ_old`` (:func:`jaxalign.kl_gradients.gradient_moments`),
    so it converges to the cell's stationary point; the sampled algorithms draw
    ``batch_size`` chains from ``Q_θ``, use the score function of ``R`` with the
    leave-one-out (REINFORCE) or group (GRPO) baseline, PPO's per-token clipped
    ratio ``q_θ(y_t|y_{t−1})/q_old(y_t|y_{t−1})``, and add ``β`` times the mean
    of the cell's surrogate loss (the one
    :func:`jaxalign.kl_gradients.monte_carlo_gradient` differentiates; weighted
    cells use ``θ_old`` of the rollout and ``clip_eps``).
    The trajectories are exact: ``KL(Q_t‖P)`` by
    :func:`jaxalign.markov.chain_kl` and ``E_{Q_t} R`` by
    :func:`jaxalign.markov.chain_expected_reward`.  The maximiser of the objective
    over all laws is the time-inhomogeneous tilt :func:`jaxalign.markov.tilt`; a
    homogeneous chain reaches it for ``n <= 2`` only, so for longer chains even the
    true gradient stops below the frontier :func:`jaxalign.markov.optimal_reward`;
    a time-varying one reaches it for every ``n`` (the true gradient's stopping
    point is the tilt, on the frontier).

    Args:
      key: typed PRNG key.
      lm: base model ``P`` (all ``p(x) > 0``); its ``length`` is ``n``.
      reward: the training reward (gold, or a proxy); a
        :class:`jaxalign.LinearReward` (or a :class:`jaxalign.PairReward` for a
        Markov ``lm``).
      betas: ``(num_betas,)`` KL coefficients ``β ≥ 0`` (``β = 1/λ``).
      num_seeds: independent runs per ``beta``.
      algorithm: one of :data:`ALGORITHMS` (default ``"reinforce"``; the former
        name ``method=`` still works, with a ``DeprecationWarning``).
      learning_rate: step size ``> 0`` passed to ``optimizer_fn``.
      num_steps: number of sampled batches (outer steps) ``>= 1``.
      batch_size: sequences per batch ``>= 2``.
      group_size: GRPO group size ``>= 2``, dividing ``batch_size``.
      num_epochs: PPO/GRPO optimisation passes over each batch.
      kl_mode: ``"reward"`` or ``"loss"`` (default ``"loss"`` for GRPO, else
        ``"reward"``); ``"reward_to_go"`` too for a Markov ``lm``.
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default ``"k3"`` for GRPO, else
        ``"k1"``).
      kl_level: ``"token"`` (``Σ_t k(ℓ_t)``) or ``"sequence"`` (``k(ℓ)``); Markov
        only.
      kl_weighting: ``"on_policy"``, ``"ratio"`` or ``"clipped"`` (clip range
        ``clip_eps``); Markov only.
      kl_clip_form: how ``kl_weighting="clipped"`` weights the penalty term
        ``x``: ``"clip"`` (``w̃ x``, ``w̃`` the ratio clipped to ``1 ± ε``) or
        ``"min"`` (PPO's ``max(w x, clip(w, 1 ± ε) x)``, i.e.
        ``min(w A, clip(w) A)`` with ``A = −x``; see
        :func:`jaxalign.kl_gradients.gradient_moments`); Markov only.
      clip_eps: PPO/GRPO clipping ``ε > 0``.
      optimizer_fn: ``learning_rate -> optax.GradientTransformation``.
      init_logits: ``(K,)`` initial logits (default: the base ``log_probs``); for a
        Markov ``lm`` the pair ``(init_logits (K,), trans_logits)`` with
        ``trans_logits`` ``(K, K)`` or ``(n − 1, K, K)`` (the policy's form;
        default: ``P``'s own tables, time-varying when ``P`` is).
      scale_rewards: GRPO divides advantages by the group std.

    Returns:
      A :class:`TrainResult` with leading axes ``(num_betas, num_seeds)``
      (``logits`` the pair ``(init, trans)`` for a Markov ``lm``, ``trans`` of the
      form of ``init_logits``).

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(3, length=4)
      >>> r = jaxalign.LinearReward([0.0, 0.5, 1.0])
      >>> res = train_sweep(jax.random.key(0), lm, r, jnp.array([0.5, 1.0]),
      ...                   num_seeds=2, num_steps=10, batch_size=8)
      >>> res.kl.shape
      (2, 2, 11)
    """
    check_key(key)
    algorithm = renamed_keyword(algorithm, method, old="method", new="algorithm",
                                default="reinforce")
    kl_mode, kl_estimator = _default_kl(algorithm, kl_mode, kl_estimator)
    markov = isinstance(lm, MarkovLM)
    if markov:
        cfg, chain, penalty, lr, ce, init = _validate_markov(
            lm, reward, algorithm, learning_rate, num_steps, batch_size, group_size,
            num_epochs, kl_mode, kl_estimator, kl_level, kl_weighting, clip_eps,
            optimizer_fn, init_logits, scale_rewards, kl_clip_form)
    else:
        cfg, lr, ce, init = _validate(
            lm, reward, algorithm, learning_rate, num_steps, batch_size, group_size,
            num_epochs, kl_mode, kl_estimator, clip_eps, optimizer_fn, init_logits,
            scale_rewards, kl_level, kl_weighting, kl_clip_form)
    num_seeds = check_positive_int(num_seeds, "num_seeds")
    betas = jnp.asarray(betas)
    if betas.ndim != 1:
        raise ValueError(f"betas must have shape (num_betas,), got {betas.shape}")
    check_real(betas, "betas", minimum=0.0)
    betas = betas.astype(init.dtype)
    if markov:
        return _markov_sweep_jit(key, chain, penalty, betas, lr, ce, init, cfg=cfg,
                                 num_seeds=num_seeds)
    return _sweep_jit(key, lm.log_probs, reward.token_rewards, betas, lr, ce, init,
                      cfg=cfg, num_seeds=num_seeds)


def train(key: PRNGKey, lm: MemorylessLM | MarkovLM, reward, beta: float,
          **kwargs) -> TrainResult:
    r"""Train one memoryless or Markov policy for one ``beta`` (see
    :func:`train_sweep`).

    Returns a :class:`TrainResult` without batch axes.  Bad hyperparameters (``beta <
    0``, ``learning_rate <= 0``, ``num_steps < 1``, GRPO ``group_size < 2``) raise
    ``ValueError``.

    Examples:
      >>> import jax, optax, jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(2, length=2)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> res = train(jax.random.key(0), lm, r, 1.0, algorithm="exact",
      ...             optimizer_fn=optax.sgd, learning_rate=0.5, num_steps=500)
      >>> round(float(jax.nn.softmax(res.logits)[1]), 4)  # e/(1+e)
      0.7311
      >>> chain = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=3)
      >>> res = train(jax.random.key(0), chain, r, 1.0, algorithm="reinforce",
      ...             kl_mode="loss", kl_estimator="k2", kl_level="sequence",
      ...             num_steps=5, batch_size=4)
      >>> res.logits[1].shape, res.kl.shape
      ((2, 2), (6,))
    """
    if "num_seeds" in kwargs:
        raise ValueError("train runs one seed; use train_sweep for num_seeds")
    check_real(beta, "beta", minimum=0.0)
    if is_concrete(beta) and np.ndim(beta) != 0:
        raise ValueError(f"beta must be a scalar, got shape {np.shape(beta)}")
    dtype = lm.log_init.dtype if isinstance(lm, MarkovLM) else lm.log_probs.dtype
    betas = jnp.reshape(jnp.asarray(beta, dtype=dtype), (1,))
    res = train_sweep(key, lm, reward, betas, num_seeds=1, **kwargs)
    return jax.tree.map(lambda x: x[0, 0], res)


# -- frontier data -------------------------------------------------------------------


class FrontierData(NamedTuple):
    """KL-reward frontier with best-of-N and trained-policy points (plot data).

    ``algorithms`` holds static string labels; every other field is an array.
    """

    lams: Array  # (L,) tilt grid λ
    tilt_kl: Array  # (L,) KL(p_λ^{⊗n} ‖ P), the frontier's abscissa
    tilt_reward: Array  # (L,) E_{p_λ} R, the frontier
    num_candidates: Array  # (C,) best-of-N sizes
    bon_kl: Array  # (C,) exact KL(π_BoN ‖ P)
    bon_reward: Array  # (C,) exact E_BoN R
    betas: Array  # (B,) KL coefficients used for training
    algorithm_kl: Array  # (A, B, num_seeds) exact KL of the trained policies
    algorithm_reward: Array  # (A, B, num_seeds) exact E R of the trained policies
    algorithms: tuple  # (A,) RL algorithm names


def frontier_data(key: PRNGKey, lm: MemorylessLM, reward: LinearReward,
                  betas: ArrayLike, *,
                  algorithms: tuple = ("reinforce", "ppo", "grpo"),
                  num_candidates: ArrayLike = (1, 2, 4, 8, 16, 32, 64, 128),
                  num_points: int = 64, algorithm_kwargs: dict | None = None,
                  methods: tuple | None = None, method_kwargs: dict | None = None,
                  **train_kwargs) -> FrontierData:
    r"""Everything needed for the KL-reward frontier figure, exactly evaluated.

    - the frontier ``(n(λΛ'(λ) − Λ(λ)), nΛ'(λ))`` on ``λ ∈ [0, 2/min β]``
      (``num_points`` values), from the closed form of the tilt;
    - best-of-N points (``jaxalign.exact.best_of_n``, uniform ties);
    - the final exact ``(KL, reward)`` of policies trained by each algorithm for each
      ``β`` and seed (:func:`train_sweep`).

    Args:
      key: typed PRNG key (algorithm ``i`` uses ``fold_in(key, i)``).
      lm, reward: base model and reward.
      betas: ``(B,)`` KL coefficients ``β > 0``.
      algorithms: names from :data:`ALGORITHMS`.
      num_candidates: best-of-N sizes ``N >= 1``.
      num_points: size of the tilt grid.
      algorithm_kwargs: per-algorithm overrides of ``train_kwargs``, e.g.
        ``{"ppo": {"learning_rate": 0.02}}``.
      methods, method_kwargs: deprecated names of ``algorithms`` and
        ``algorithm_kwargs``.
      **train_kwargs: passed to :func:`train_sweep` (``num_seeds``, ``num_steps`` …).

    Returns:
      A :class:`FrontierData`.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(3, length=4)
      >>> r = jaxalign.LinearReward([0.0, 0.5, 1.0])
      >>> d = frontier_data(jax.random.key(0), lm, r, jnp.array([1.0]),
      ...                   algorithms=("reinforce",), num_steps=5, batch_size=4)
      >>> d.algorithm_kl.shape
      (1, 1, 1)
    """
    from jaxalign import exact  # exact imports theory; keep rl import-light

    check_key(key)
    check_compatible(lm, reward)
    if methods is not None:
        algorithms = renamed_keyword(None, methods, old="methods", new="algorithms")
    algorithm_kwargs = renamed_keyword(algorithm_kwargs, method_kwargs,
                                       old="method_kwargs", new="algorithm_kwargs")
    betas = jnp.asarray(betas, dtype=lm.log_probs.dtype)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must have shape (B,), B >= 1, got {betas.shape}")
    check_real(betas, "betas", minimum=0.0)
    if is_concrete(betas) and np.any(np.asarray(betas) <= 0):
        raise ValueError(f"betas must be > 0, got {np.asarray(betas)}")
    for a in algorithms:
        _check_choice(a, "algorithms entry", ALGORITHMS)
    num_points = check_positive_int(num_points, "num_points", minimum=2)
    algorithm_kwargs = dict(algorithm_kwargs or {})
    unknown = set(algorithm_kwargs) - set(algorithms)
    if unknown:
        raise ValueError(
            f"algorithm_kwargs names algorithms {sorted(unknown)} not in algorithms "
            f"{algorithms}")

    dtype = lm.log_probs.dtype
    lams = jnp.linspace(0.0, 2.0 / jnp.min(betas), num_points, dtype=dtype)
    tilt_kl = jax.vmap(theory.kl, in_axes=(None, None, 0))(lm, reward, lams)
    tilt_reward = jax.vmap(theory.expected_reward, in_axes=(None, None, 0))(
        lm, reward, lams)

    nc = np.asarray(num_candidates)
    bon = exact.best_of_n(lm, reward, num_candidates=nc)

    kls, rewards = [], []
    for i, algorithm in enumerate(algorithms):
        kwargs = {**train_kwargs, **algorithm_kwargs.get(algorithm, {})}
        res = train_sweep(jax.random.fold_in(key, i), lm, reward, betas,
                          algorithm=algorithm, **kwargs)
        kls.append(res.kl[..., -1])
        rewards.append(res.reward[..., -1])
    return FrontierData(
        lams, tilt_kl, tilt_reward, jnp.asarray(nc, dtype=dtype),
        jnp.asarray(bon.kl, dtype=dtype), jnp.asarray(bon.expected_reward, dtype=dtype),
        betas, jnp.stack(kls), jnp.stack(rewards), tuple(algorithms))
