r"""First-order Markov language models: exact finite-n alignment with memory.

A :class:`MarkovLM` draws ``y_1 ~ μ`` and ``y_t | y_{t-1} = a ~ P(a, ·)``; the
reward is a :class:`jaxalign.LinearReward` ``R = Σ_t r(y_t)`` or a
:class:`jaxalign.PairReward` ``R = r_1(y_1) + Σ_{t≥2} r(y_{t-1}, y_t)``.  With
``μ_λ = μ∘e^{λ r_1}`` and ``P_λ(a, b) = P(a, b) e^{λ r(a, b)}`` (THEORY §11):

.. math::
    Z_n(\lambda) = E_P e^{\lambda R} = \mu_\lambda P_\lambda^{n-1} \mathbf 1,
    \qquad h_n = \mathbf 1,\ h_t = P_\lambda h_{t+1},

and the KL-optimal policy ``φ_λ ∝ P e^{λR}`` is the time-inhomogeneous chain
``φ(y_1 = a) = μ_λ(a) h_1(a) / Z_n``, ``φ(y_t = b | y_{t-1} = a) = P_λ(a, b)
h_t(b) / h_{t-1}(a)``.  Everything here runs in log space (``n = 10^4`` and beyond
without underflow), in the dtype of the inputs (float64 for the exact checks):

- :func:`log_partition`, :func:`log_messages`, :func:`tilt`,
  :func:`tilt_summary` (``log Z``, ``E R``, ``Var R``, KL), :func:`kl`,
  :func:`reverse_kl`, :func:`expected_reward`, :func:`max_kl`,
  :func:`lam_for_kl`, :func:`optimal_reward` (the finite-n frontier);
- :func:`chain_kl` and :func:`chain_expected_reward` for any two chains (forward
  recursions, terms that never cancel);
- :func:`myopic_tilt` (the token-level tilt) and :func:`lookahead_gap`;
  :func:`power_chain` (``P^α`` normalised, a twisted chain) and
  :func:`temperature_chain` (token-level temperature ``1/α``), compared by
  :func:`chain_kl`;
- :func:`reward_law`: the exact law of ``R`` for lattice rewards (a log-space
  DP over (state, reward)), the same :class:`jaxalign.exact.RewardLaw` as the
  memoryless law, so :func:`jaxalign.exact.policy_law` makes every policy of
  :mod:`jaxalign.policies` exact for Markov models;
- :func:`perron`, :func:`scgf`, :func:`cumulant_rates`,
  :func:`limit_reward_per_token`, :func:`rate_function`, :func:`renyi_rate`:
  Perron–Frobenius asymptotics (``Λ(λ) = log ρ(P_λ)``, the twisted chain
  ``Q_λ``, rates per token);
- :func:`sample`: token-level sampling of any chain (a scan over ``t``).

A time-inhomogeneous chain (the tilt) is a :class:`MarkovLM` whose ``log_trans``
has shape ``(n - 1, K, K)``; every function accepts it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._numerics import lse
from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_key,
    check_length,
    check_positive_int,
    classic_threefry,
    is_concrete,
    log_tolerance,
    renamed_keyword,
)
from jaxalign.models import (
    LinearReward,
    MemorylessLM,
    PairReward,
    TiltSummary,
    _as_float_array,
    _as_float_vector,
    _new,
)

__all__ = [
    "MarkovLM",
    "LookaheadGap",
    "log_partition",
    "log_messages",
    "tilt",
    "tilt_summary",
    "kl",
    "reverse_kl",
    "expected_reward",
    "max_kl",
    "lam_for_kl",
    "optimal_reward",
    "chain_kl",
    "chain_expected_reward",
    "myopic_tilt",
    "lookahead_gap",
    "power_chain",
    "temperature_chain",
    "reward_law",
    "PerronResult",
    "perron",
    "scgf",
    "cumulant_rates",
    "limit_reward_per_token",
    "rate_function",
    "renyi_rate",
    "sample",
]


# ----------------------------------------------------------------------------- model


def _check_log_rows(x: np.ndarray, name: str, axis=-1) -> None:
    """Concrete log-probabilities: finite or -inf, each row normalised."""
    if np.any(np.isnan(x)) or np.any(x == np.inf):
        raise ValueError(f"{name} must be finite or -inf (zero probability), got {x}")
    totals = np.exp(lse(x.astype(np.float64), axis=axis))
    tol = log_tolerance(x.dtype)
    bad = np.abs(totals - 1.0) > tol
    if np.any(bad):
        raise ValueError(
            f"{name} must be normalised: exp({name}) rows sum to "
            f"{np.asarray(totals)[bad].ravel()[:4].tolist()}, allowed |sum - 1| <= "
            f"{tol:.3g}")


def _check_prob_rows(p: np.ndarray, name: str) -> None:
    """Concrete probabilities: finite, non-negative, each row summing to 1."""
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be finite, got {p}")
    if np.any(p < 0):
        raise ValueError(f"{name} must be non-negative, got {p}")
    totals = np.sum(p, axis=-1, dtype=np.float64)
    tol = log_tolerance(p.dtype)
    bad = np.abs(totals - 1.0) > tol
    if np.any(bad):
        raise ValueError(
            f"{name} rows must sum to 1 (tolerance {tol:.3g}), got row sums "
            f"{np.asarray(totals)[bad].ravel()[:4].tolist()}")


def _trans_shape_check(trans: Array, name: str, num_tokens: int, length: int):
    shape = trans.shape
    k = num_tokens
    if shape != (k, k) and shape != (length - 1, k, k):
        raise ValueError(
            f"{name} must have shape (K, K) = ({k}, {k}) (K from the initial law) or "
            f"(length - 1, K, K) = ({length - 1}, {k}, {k}), got shape {shape}")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class MarkovLM:
    r"""A first-order Markov language model.

    .. math::
        P(y_1, \dots, y_n) = \mu(y_1) \prod_{t=2}^n P_t(y_{t-1}, y_t),
        \qquad n = \texttt{length}.

    Attributes:
      log_init: ``(K,)`` normalised log initial law ``log μ``.
      log_trans: ``(K, K)`` log transition matrix ``log P`` (rows normalised), or
        ``(n - 1, K, K)`` for a time-inhomogeneous chain (``log_trans[t]`` is the
        step from position ``t`` to ``t + 1``, 0-based), such as the tilt.
        ``-inf`` marks a zero probability, which is legal and exact.
      length: the static sequence length ``n >= 1``.

    Construction validates concrete inputs: entries finite or ``-inf``, every row
    normalised within ``sqrt(eps)`` of the dtype (1.5e-8 in float64), shapes
    consistent; otherwise ``ValueError`` naming the argument.  Prefer the
    constructors :meth:`from_probs`, :meth:`from_logits`, :meth:`dirichlet`,
    :meth:`sticky` and :meth:`from_memoryless`.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.from_probs([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]],
      ...                                   length=6)
      >>> lm.num_tokens, lm.length, lm.is_homogeneous
      (2, 6, True)
    """

    log_init: Array
    log_trans: Array
    length: int

    def __post_init__(self):
        length = check_length(self.length)
        log_init = _as_float_vector(self.log_init, "log_init")
        log_trans = _as_float_array(self.log_trans, "log_trans")
        _trans_shape_check(log_trans, "log_trans", log_init.shape[0], length)
        if is_concrete(log_init):
            _check_log_rows(np.asarray(log_init), "log_init")
        if is_concrete(log_trans) and log_trans.size:
            _check_log_rows(np.asarray(log_trans), "log_trans")
        dtype = jnp.result_type(log_init.dtype, log_trans.dtype)
        object.__setattr__(self, "log_init", log_init.astype(dtype))
        object.__setattr__(self, "log_trans", log_trans.astype(dtype))
        object.__setattr__(self, "length", length)

    def tree_flatten(self):
        return (self.log_init, self.log_trans), self.length

    @classmethod
    def tree_unflatten(cls, length, children):
        return cls.unchecked(children[0], children[1], length)

    @classmethod
    def unchecked(cls, log_init: Array, log_trans: Array, length: int) -> MarkovLM:
        """A chain *without* validation: the constructor for traced values."""
        return _new(cls, log_init=log_init, log_trans=log_trans, length=length)

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def from_probs(cls, init: ArrayLike, trans: ArrayLike, *, length: int
                   ) -> MarkovLM:
        """Chain from probabilities: ``init (K,)`` and ``trans (K, K)`` (or
        ``(length - 1, K, K)``), non-negative, finite, every row summing to 1
        within ``sqrt(eps)``; rows are then renormalised exactly.  Zero entries are
        allowed.

        Examples:
          >>> lm = MarkovLM.from_probs([1.0, 0.0], [[0.0, 1.0], [1.0, 0.0]],
          ...                          length=3)  # alternates 0, 1, 0
        """
        init = _as_float_vector(init, "init")
        trans = _as_float_array(trans, "trans")
        _trans_shape_check(trans, "trans", init.shape[0], length)
        if is_concrete(init):
            _check_prob_rows(np.asarray(init), "init")
        if is_concrete(trans):
            _check_prob_rows(np.asarray(trans), "trans")
        log_init = jnp.log(init) - jnp.log(jnp.sum(init))
        log_trans = jnp.log(trans) - jnp.log(jnp.sum(trans, axis=-1, keepdims=True))
        return cls(log_init, log_trans, length)

    @classmethod
    def from_logits(cls, init_logits: ArrayLike, trans_logits: ArrayLike, *,
                    length: int) -> MarkovLM:
        """Chain from unnormalised logits (finite or ``-inf``; at least one finite
        entry per row), normalised by ``log_softmax``.

        Examples:
          >>> lm = MarkovLM.from_logits([0.0, 0.0], [[2.0, 0.0], [0.0, 2.0]],
          ...                           length=4)
        """
        init_logits = _as_float_vector(init_logits, "init_logits")
        trans_logits = _as_float_array(trans_logits, "trans_logits")
        _trans_shape_check(trans_logits, "trans_logits", init_logits.shape[0],
                           length)
        for name, x in (("init_logits", init_logits), ("trans_logits", trans_logits)):
            if is_concrete(x):
                a = np.asarray(x)
                if np.any(np.isnan(a)) or np.any(a == np.inf):
                    raise ValueError(f"{name} must be finite or -inf, got {a}")
                if a.size and np.any(np.all(a == -np.inf, axis=-1)):
                    raise ValueError(f"{name} must have a finite entry in every row")
        return cls(jax.nn.log_softmax(init_logits), jax.nn.log_softmax(
            trans_logits, axis=-1), length)

    @classmethod
    def dirichlet(cls, key: PRNGKey, num_tokens: int, concentration: float = 1.0,
                  *, length: int) -> MarkovLM:
        """Random chain: the initial law and every row of ``P`` drawn independently
        from a symmetric Dirichlet(``concentration``), in log space (log-gamma
        variates).

        Examples:
          >>> import jax
          >>> lm = MarkovLM.dirichlet(jax.random.key(0), 4, 0.5, length=10)
          >>> lm.log_trans.shape
          (4, 4)
        """
        check_key(key)
        num_tokens = check_positive_int(num_tokens, "num_tokens", minimum=2)
        if not np.isfinite(concentration) or concentration <= 0:
            raise ValueError(
                f"concentration must be finite and > 0, got {concentration!r}")
        log_gammas = classic_threefry(jax.random.loggamma)(
            key, jnp.full((num_tokens + 1, num_tokens), concentration))
        return cls.from_logits(log_gammas[0], log_gammas[1:], length=length)

    @classmethod
    def sticky(cls, probs: ArrayLike, stickiness: float, *, length: int
               ) -> MarkovLM:
        r"""The sticky chain: stay with probability ``s``, otherwise draw from ``p``.

        .. math::
            P = s I + (1 - s) \mathbf 1 p^\top, \qquad \mu = p,

        so ``p`` is stationary and ``s = 0`` is the memoryless model.

        Examples:
          >>> lm = MarkovLM.sticky([0.5, 0.5], 0.8, length=5)
          >>> [round(float(x), 3) for x in jnp.exp(lm.log_trans[0])]
          [0.9, 0.1]
        """
        probs = _as_float_vector(probs, "probs")
        if is_concrete(stickiness) and not 0.0 <= float(stickiness) <= 1.0:
            raise ValueError(f"stickiness must be in [0, 1], got {stickiness!r}")
        if is_concrete(probs):
            _check_prob_rows(np.asarray(probs), "probs")
        s = jnp.asarray(stickiness, probs.dtype)
        k = probs.shape[0]
        trans = s * jnp.eye(k, dtype=probs.dtype) + (1 - s) * probs[None, :]
        return cls.from_probs(probs, trans, length=length)

    @classmethod
    def from_memoryless(cls, lm: MemorylessLM) -> MarkovLM:
        """The memoryless model as a chain: ``μ = p`` and every row of ``P`` is
        ``p`` (a rank-one chain).

        Examples:
          >>> import jaxalign
          >>> m = MarkovLM.from_memoryless(jaxalign.MemorylessLM.bernoulli(0.3,
          ...                                                              length=4))
          >>> m.length
          4
        """
        if not isinstance(lm, MemorylessLM):
            raise ValueError(f"lm must be a MemorylessLM, got {type(lm).__name__}")
        k = lm.num_tokens
        return cls(lm.log_probs, jnp.broadcast_to(lm.log_probs[None, :], (k, k)),
                   lm.length)

    # -- derived views ----------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """K, the vocabulary size."""
        return self.log_init.shape[-1]

    @property
    def is_homogeneous(self) -> bool:
        """Whether one transition matrix serves every step."""
        return self.log_trans.ndim == 2

    @property
    def init_probs(self) -> Array:
        """``(K,)`` initial law ``μ``."""
        return jnp.exp(self.log_init)

    @property
    def trans_probs(self) -> Array:
        """``(K, K)`` (or ``(n - 1, K, K)``) transition probabilities."""
        return jnp.exp(self.log_trans)

    # -- the base-model protocol (:class:`jaxalign.models.BaseModel`) ----------------
    def reward_law(self, reward, **options):
        """:func:`jaxalign.markov.reward_law` of this chain."""
        return reward_law(self, reward, **options)

    def sampler_stage(self, reward):
        """The token sampler of one sequence: ``draw(key)`` uniforms, ``consume``
        the tokens (``reward=None``) or the reward."""
        return _stage(self, reward)

    def tilt(self, reward, lam) -> MarkovLM:
        """:func:`jaxalign.markov.tilt`."""
        return tilt(self, reward, lam)

    def tilt_summary(self, reward, lam) -> TiltSummary:
        """:func:`jaxalign.markov.tilt_summary`."""
        return tilt_summary(self, reward, lam)

    def lam_for_kl(self, reward, kl_budget) -> Array:
        """:func:`jaxalign.markov.lam_for_kl`."""
        return lam_for_kl(self, reward, kl_budget)

    def max_kl(self, reward) -> Array:
        """:func:`jaxalign.markov.max_kl`."""
        return max_kl(self, reward)

    def limit_reward_per_token(self, reward, delta) -> Array:
        """:func:`jaxalign.markov.limit_reward_per_token`."""
        return limit_reward_per_token(self, reward, delta)


# ----------------------------------------------------------------------- validation


def _pair_form(reward, num_tokens: int, name: str = "reward"):
    """``(first (K,), pair (K, K))`` of a linear or pair reward."""
    if isinstance(reward, LinearReward):
        reward = PairReward.from_linear(reward)
    elif not isinstance(reward, PairReward):
        raise ValueError(f"{name} must be a LinearReward or a PairReward, got "
                         f"{type(reward).__name__}")
    if reward.num_tokens != num_tokens:
        raise ValueError(
            f"model and {name} disagree on the vocabulary size: the chain has K = "
            f"{num_tokens} tokens, {name} has K = {reward.num_tokens}")
    return reward.first_rewards, reward.pair_rewards


def _check_model(lm, name: str = "lm") -> None:
    if not isinstance(lm, MarkovLM):
        raise ValueError(f"{name} must be a MarkovLM, got {type(lm).__name__}")


def _prepare(lm: MarkovLM, reward):
    _check_model(lm)
    first, pair = _pair_form(reward, lm.num_tokens)
    dtype = jnp.result_type(lm.log_init.dtype, first.dtype)
    return (lm.log_init.astype(dtype), lm.log_trans.astype(dtype),
            first.astype(dtype), pair.astype(dtype), dtype)


def _scalar(value, name: str, dtype, *, minimum=None, allow_inf=False) -> Array:
    if is_concrete(value):
        arr = np.asarray(value)
        if arr.shape != () or arr.dtype.kind not in "biuf" or np.isnan(arr):
            raise ValueError(f"{name} must be a real scalar, got {value!r}")
        if not allow_inf and not np.isfinite(arr):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if minimum is not None and arr < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    arr = jnp.asarray(value)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar (shape ()), got shape {arr.shape}; "
                         "use jax.vmap to evaluate a batch")
    return arr.astype(dtype)


# ------------------------------------------------------------------------ recursions


def _step(log_trans: Array, i) -> Array:
    """The ``(K, K)`` log transition of step ``i`` (0-based)."""
    if log_trans.ndim == 2:
        return log_trans
    if log_trans.shape[0] == 0:  # n = 1: no step is ever taken (traced only)
        return jnp.zeros(log_trans.shape[1:], log_trans.dtype)
    return log_trans[i]


def _backward(log_trans, pair, lam, length: int) -> Array:
    """``(n, K)`` log backward messages, ``log h[n-1] = 0``."""
    k = pair.shape[0]
    last = jnp.zeros(k, pair.dtype)

    def body(lh, i):
        lh = jax.nn.logsumexp(_step(log_trans, i) + lam * pair + lh[None, :], axis=1)
        return lh, lh

    _, hs = jax.lax.scan(body, last, jnp.arange(length - 1), reverse=True)
    return jnp.concatenate([hs, last[None, :]], axis=0)


def _log_z(log_init, log_trans, first, pair, lam, length: int) -> Array:
    lh = _backward(log_trans, pair, lam, length)
    return jax.nn.logsumexp(log_init + lam * first + lh[0])


def _tilt_arrays(log_init, log_trans, first, pair, lam, length: int):
    lh = _backward(log_trans, pair, lam, length)
    init = jax.nn.log_softmax(log_init + lam * first + lh[0])

    def one(i):
        return jax.nn.log_softmax(_step(log_trans, i) + lam * pair + lh[i + 1][None, :],
                                  axis=1)

    k = pair.shape[0]
    if length > 1:
        trans = jax.vmap(one)(jnp.arange(length - 1))
    else:
        trans = jnp.zeros((0, k, k), pair.dtype)
    return init, trans


def _kl_terms(lp: Array, lq: Array) -> Array:
    """Terms of ``KL(q‖p)`` over the last axis, each ``>= 0``, summing to the KL
    without cancellation (``theory._kl_terms``); ``inf`` where ``q > 0 = p``."""
    from jaxalign.theory._tilt import _kl_terms as terms

    p, q = jnp.exp(lp), jnp.exp(lq)
    on = (p > 0) & (q > 0)
    ell = jnp.where(on, lq - jnp.where(on, lp, 0.0), 0.0)
    return jnp.where(on, terms(p, q, ell), jnp.where(q > 0, jnp.inf, p))


def _chain_kl(q_init, q_trans, p_init, p_trans, length: int) -> Array:
    m = jnp.exp(q_init)
    total = jnp.sum(_kl_terms(p_init, q_init))

    def body(carry, i):
        m, total = carry
        lq, lp = _step(q_trans, i), _step(p_trans, i)
        rows = jnp.sum(_kl_terms(lp, lq), axis=1)
        total = total + jnp.sum(jnp.where(m > 0, m * rows, 0.0))
        return (m @ jnp.exp(lq), total), None

    (_, total), _ = jax.lax.scan(body, (m, total), jnp.arange(length - 1))
    return total


def _chain_mean(q_init, q_trans, first, pair, length: int) -> Array:
    m = jnp.exp(q_init)

    def body(carry, i):
        m, total = carry
        q = jnp.exp(_step(q_trans, i))
        total = total + m @ jnp.sum(q * pair, axis=1)
        return (m @ q, total), None

    (_, total), _ = jax.lax.scan(body, (m, m @ first), jnp.arange(length - 1))
    return total


def _moments(log_init, log_trans, first, pair, lam, length: int):
    """``(log Z, E R, Var R)``: forward-mode derivatives of the log-space recursion
    (nested ``jvp``, cheaper to compile than reverse mode through the scan)."""
    one = jnp.ones_like(lam)

    def log_z(l):
        return _log_z(log_init, log_trans, first, pair, l, length)

    def first_order(l):
        return jax.jvp(log_z, (l,), (one,))

    (logz, mean), (_, var) = jax.jvp(first_order, (lam,), (one,))
    return logz, mean, var


class _Core(NamedTuple):
    log_partition: Array
    mean: Array
    variance: Array
    kl: Array
    reverse_kl: Array


@functools.partial(jax.jit, static_argnames="length")
def _core(log_init, log_trans, first, pair, lam, length: int) -> _Core:
    logz, mean, var = _moments(log_init, log_trans, first, pair, lam, length)
    init, trans = _tilt_arrays(log_init, log_trans, first, pair, lam, length)
    kl_ = _chain_kl(init, trans, log_init, log_trans, length)
    rev = _chain_kl(log_init, log_trans, init, trans, length)
    return _Core(logz, mean, var, kl_, rev)


def _core_of(lm, reward, lam) -> _Core:
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    lam = _scalar(lam, "lam", dtype)
    return _core(log_init, log_trans, first, pair, lam, lm.length)


# --------------------------------------------------------------------------- public


def log_partition(lm: MarkovLM, reward, lam: ArrayLike) -> Array:
    r"""The log partition function ``log Z_n(λ)`` in log space.

    .. math::
        Z_n(\lambda) = E_P e^{\lambda R} = \mu_\lambda P_\lambda^{n-1} \mathbf 1.

    Args:
      lm: the chain.
      reward: a :class:`LinearReward` or :class:`PairReward`.
      lam: a finite real scalar ``λ`` (traceable).

    Returns:
      A 0-d array.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=3)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(log_partition(lm, r, 1.0)), 6)  # 3 log((1 + e)/2)
      1.860344
    """
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    lam = _scalar(lam, "lam", dtype)
    return _log_z_jit(log_init, log_trans, first, pair, lam, lm.length)


_log_z_jit = jax.jit(_log_z, static_argnames="length")


def log_messages(lm: MarkovLM, reward, lam: ArrayLike) -> Array:
    r"""The ``(n, K)`` log backward messages ``log h_t``, ``t = 1..n`` (row ``t - 1``).

    .. math::
        h_n = \mathbf 1, \qquad h_t(a) = \sum_b P_\lambda(a, b)\, h_{t+1}(b),

    so ``h_t(a) = E[e^{λ Σ_{s>t} r} | y_t = a]``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=2)
      >>> h = log_messages(lm, jaxalign.LinearReward([0.0, 1.0]), 1.0)
      >>> [round(float(x), 6) for x in h[0]]  # log((1 + e)/2) from either state
      [0.620115, 0.620115]
    """
    _, log_trans, _, pair, dtype = _prepare(lm, reward)
    lam = _scalar(lam, "lam", dtype)
    return _backward_jit(log_trans, pair, lam, lm.length)


_backward_jit = jax.jit(_backward, static_argnames="length")
_tilt_jit = jax.jit(_tilt_arrays, static_argnames="length")


def tilt(lm: MarkovLM, reward, lam: ArrayLike) -> MarkovLM:
    r"""The KL-optimal policy ``φ_λ ∝ P e^{λR}``: a time-inhomogeneous chain.

    .. math::
        \varphi(y_1 = a) = \frac{\mu_\lambda(a) h_1(a)}{Z_n}, \qquad
        \varphi(y_t = b \mid y_{t-1} = a) = \frac{P_\lambda(a, b) h_t(b)}{h_{t-1}(a)}.

    Returns a :class:`MarkovLM` with ``log_trans`` of shape ``(n - 1, K, K)`` (rows
    normalised exactly by ``log_softmax``).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=4)
      >>> phi = tilt(lm, jaxalign.LinearReward([0.0, 1.0]), 1.0)
      >>> phi.log_trans.shape
      (3, 2, 2)
    """
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    lam = _scalar(lam, "lam", dtype)
    init, trans = _tilt_jit(log_init, log_trans, first, pair, lam, lm.length)
    return MarkovLM.unchecked(init, trans, lm.length)


def tilt_summary(lm: MarkovLM, reward, lam: ArrayLike) -> TiltSummary:
    r"""``log Z_n``, ``E_φ R``, ``Var_φ R`` and ``KL(φ_λ‖P)`` of the tilt at ``λ``.

    .. math::
        E_\varphi R = \partial_\lambda \log Z_n, \quad
        \mathrm{Var}_\varphi R = \partial^2_\lambda \log Z_n, \quad
        \mathrm{KL}(\varphi_\lambda\|P) = \lambda E_\varphi R - \log Z_n,

    the derivatives by autodiff of the log-space recursion, the KL by the forward
    recursion of :func:`chain_kl` (non-negative terms, no cancellation at small λ).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=4)
      >>> s = tilt_summary(lm, jaxalign.LinearReward([0.0, 1.0]), 0.0)
      >>> float(s.mean), float(s.variance), float(s.kl)
      (2.0, 1.0, 0.0)
    """
    core = _core_of(lm, reward, lam)
    return TiltSummary(core.log_partition, core.mean, core.variance, core.kl)


def kl(lm: MarkovLM, reward, lam: ArrayLike) -> Array:
    r"""``KL(φ_λ‖P) = λ E_φ[R] - log Z_n(λ)`` (see :func:`tilt_summary`).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=10)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(kl(lm, r, 50.0)), 6)  # ~ 10 log 2
      6.931472
    """
    return _core_of(lm, reward, lam).kl


def reverse_kl(lm: MarkovLM, reward, lam: ArrayLike) -> Array:
    r"""``KL(P‖φ_λ) = log Z_n(λ) - λ E_P[R]`` by the forward recursion.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(reverse_kl(lm, r, 1.0)), 5)  # log((1 + e)/2) - 1/2
      0.12011
    """
    return _core_of(lm, reward, lam).reverse_kl


def expected_reward(lm: MarkovLM, reward, lam: ArrayLike) -> Array:
    r"""``E_{φ_λ}[R] = ∂_λ log Z_n(λ)``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.9, length=4)
      >>> float(expected_reward(lm, jaxalign.LinearReward([0.0, 1.0]), 0.0))
      2.0
    """
    return _core_of(lm, reward, lam).mean


def chain_kl(q: MarkovLM, p: MarkovLM) -> Array:
    r"""Exact ``KL(Q‖P)`` between two chains of the same ``K`` and length.

    .. math::
        \mathrm{KL}(Q\|P) = \mathrm{KL}(q_1\|p_1) + \sum_{t=2}^n \sum_a Q(y_{t-1} = a)
        \,\mathrm{KL}(Q_t(a, \cdot)\|P_t(a, \cdot)),

    by a forward recursion over the marginals of ``Q``, every term ``>= 0``
    (``inf`` when ``Q`` puts mass where ``P`` has none).

    Examples:
      >>> import jaxalign
      >>> p = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=3)
      >>> q = jaxalign.MarkovLM.sticky([0.5, 0.5], 1.0, length=3)
      >>> round(float(chain_kl(q, p)), 6)  # two steps of log 2
      1.386294
    """
    _check_model(q, "q")
    _check_model(p, "p")
    if q.num_tokens != p.num_tokens or q.length != p.length:
        raise ValueError(
            f"q and p must have the same K and length, got K = {q.num_tokens}, "
            f"{p.num_tokens} and length = {q.length}, {p.length}")
    dtype = jnp.result_type(q.log_init.dtype, p.log_init.dtype)
    return _chain_kl_jit(q.log_init.astype(dtype), q.log_trans.astype(dtype),
                         p.log_init.astype(dtype), p.log_trans.astype(dtype),
                         q.length)


_chain_kl_jit = jax.jit(_chain_kl, static_argnames="length")
_chain_mean_jit = jax.jit(_chain_mean, static_argnames="length")


def chain_expected_reward(q: MarkovLM, reward) -> Array:
    r"""``E_Q[R]`` under any chain, by the forward recursion of its marginals.

    .. math::
        E_Q R = \sum_a q_1(a) r_1(a) + \sum_{t=2}^n \sum_{a, b} Q(y_{t-1} = a)
        Q_t(a, b)\, r(a, b).

    Examples:
      >>> import jaxalign
      >>> q = jaxalign.MarkovLM.sticky([0.25, 0.75], 0.3, length=4)
      >>> float(chain_expected_reward(q, jaxalign.LinearReward([0.0, 1.0])))
      3.0
    """
    log_init, log_trans, first, pair, _ = _prepare(q, reward)
    return _chain_mean_jit(log_init, log_trans, first, pair, q.length)


# ---------------------------------------------------------------- top class, budgets


def _top(log_init, log_trans, first, pair, length: int):
    """``(R_max, log P(R = R_max))`` by a max-plus backward recursion, with ties
    within a relative ``1e-12`` of the reward scale."""
    scale = (jnp.max(jnp.abs(pair)) + jnp.max(jnp.abs(first))) * length + 1.0
    tol = 1e-12 * scale
    k = pair.shape[0]

    def combine(log_w, cand):
        best = jnp.max(cand, axis=-1)
        ties = cand >= best[..., None] - tol
        return best, jax.nn.logsumexp(jnp.where(ties, log_w, -jnp.inf), axis=-1)

    def body(carry, i):
        v, lv = carry
        lp = _step(log_trans, i)
        cand = jnp.where(lp > -jnp.inf, pair + v[None, :], -jnp.inf)
        return combine(lp + lv[None, :], cand), None

    zero = jnp.zeros(k, pair.dtype)
    (v, lv), _ = jax.lax.scan(body, (zero, zero), jnp.arange(length - 1),
                              reverse=True)
    cand = jnp.where(log_init > -jnp.inf, first + v, -jnp.inf)
    return combine(log_init + lv, cand)


_top_jit = jax.jit(_top, static_argnames="length")


def max_kl(lm: MarkovLM, reward) -> Array:
    r"""``sup_λ KL(φ_λ‖P) = -log P(R = R_max)``: the KL of the policy on the top
    reward class (by a max-plus recursion; rewards within ``1e-12`` of the scale
    ``n max|r|`` count as tied).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=3)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(max_kl(lm, r)), 6)  # -log P(1, 1, 1) = -log(0.5 * 0.75^2)
      1.268511
    """
    log_init, log_trans, first, pair, _ = _prepare(lm, reward)
    return -_top_jit(log_init, log_trans, first, pair, lm.length)[1]


def _solve_lam(log_init, log_trans, first, pair, budget, length: int):
    _, log_top = _top(log_init, log_trans, first, pair, length)
    kl_max = -log_top

    def kl_and_slope(lam):
        logz, mean, var = _moments(log_init, log_trans, first, pair, lam, length)
        return lam * mean - logz, lam * var

    valid = (budget > 0) & (budget < kl_max)
    target = jnp.where(valid, budget, 0.5 * jnp.where(kl_max > 0, kl_max, 1.0))
    width = (jnp.max(pair) - jnp.min(pair) + jnp.max(first) - jnp.min(first)) * length
    lam = _solve_kl(kl_and_slope, target, width)
    # λE - log Z cancels at small λ (relative error ~1e-5 at Δ = 1e-12): two
    # Newton steps on the KL of the forward recursion (non-negative terms) polish.
    for _ in range(2):
        init, trans = _tilt_arrays(log_init, log_trans, first, pair, lam, length)
        k = _chain_kl(init, trans, log_init, log_trans, length)
        slope = kl_and_slope(lam)[1]
        lam = lam - jnp.where(slope > 0, (k - target) / slope, 0.0)
    lam = jnp.where(valid, lam, 0.0)
    return jnp.where(budget >= kl_max, jnp.inf, lam)


def _solve_kl(kl_and_slope, target, width):
    """The ``λ > 0`` with ``kl(λ) = target > 0`` for an increasing ``kl``,
    ``kl_and_slope(λ) = (kl, dkl/dλ)``: a bracket from ``kl(λ) <= λ² W² / 8``
    (``Var R <= W²/4`` for ``R`` in an interval of width ``W``), checked and
    widened by factors of 4, then safeguarded Newton in ``log λ``."""
    from jaxalign.theory._tilt import _bracketed_newton

    width = jnp.where(width > 0, width, 1.0)
    lo = jnp.sqrt(8 * target) / width
    # The bound holds at finite n; a rate's asymptotic variance can exceed W²/4.
    tiny = jnp.finfo(lo.dtype).tiny * 16
    lo = jax.lax.while_loop(lambda c: (kl_and_slope(c)[0] > target) & (c > tiny),
                            lambda c: 0.25 * c, lo)
    big = jnp.finfo(lo.dtype).max / 16
    hi = jax.lax.while_loop(lambda c: (kl_and_slope(c)[0] < target) & (c < big),
                            lambda c: 4.0 * c, 4.0 * lo)

    def fn(y):
        lam = jnp.exp(y)
        k, slope = kl_and_slope(lam)
        return jnp.log(k) - jnp.log(target), lam * slope / k

    y0 = 0.5 * (jnp.log(lo) + jnp.log(hi))
    return jnp.exp(_bracketed_newton(fn, jnp.log(lo), jnp.log(hi), y0))


_solve_lam_jit = jax.jit(_solve_lam, static_argnames="length")


def lam_for_kl(lm: MarkovLM, reward, kl_budget: ArrayLike) -> Array:
    r"""The ``λ >= 0`` with ``KL(φ_λ‖P) = Δ`` (``inf`` once ``Δ >= max_kl``).

    .. math::
        \lambda_\Delta:\ \lambda E_{\varphi_\lambda} R - \log Z_n(\lambda) = \Delta,

    by safeguarded Newton in ``log λ`` on ``λ E R - log Z`` (``d KL/dλ = λ Var_φ R``,
    forward-mode derivatives of ``log Z``) inside a ``lax.while_loop``, then two
    Newton steps on the KL of :func:`chain_kl` (no cancellation): ``KL(φ_λ‖P)``
    matches ``Δ`` to ~1e-13 relative for ``Δ >= 1e-8`` up to just below
    :func:`max_kl`, ~2e-10 at ``Δ = 1e-12`` (the chain's log-probabilities carry
    absolute rounding ``~eps`` against log-ratios ``~λ``).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(kl(lm, r, lam_for_kl(lm, r, 0.5))), 10)
      0.5
    """
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    budget = _scalar(kl_budget, "kl_budget", dtype, minimum=0.0, allow_inf=True)
    return _solve_lam_jit(log_init, log_trans, first, pair, budget, lm.length)


def optimal_reward(lm: MarkovLM, reward, kl_budget: ArrayLike) -> Array:
    r"""The finite-n frontier: ``max E_Q R`` over ``KL(Q‖P) <= Δ``, attained by
    ``φ_{λ_Δ}`` (``R_max`` once ``Δ >= max_kl``).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=4)
      >>> float(optimal_reward(lm, jaxalign.LinearReward([0.0, 1.0]), 100.0))
      4.0
    """
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    budget = _scalar(kl_budget, "kl_budget", dtype, minimum=0.0, allow_inf=True)
    lam = _solve_lam_jit(log_init, log_trans, first, pair, budget, lm.length)
    return _mean_or_top(log_init, log_trans, first, pair, lam, lm.length)


@functools.partial(jax.jit, static_argnames="length")
def _mean_or_top(log_init, log_trans, first, pair, lam, length: int):
    top, _ = _top(log_init, log_trans, first, pair, length)
    finite = jnp.where(jnp.isfinite(lam), lam, 0.0)
    mean = _moments(log_init, log_trans, first, pair, finite, length)[1]
    return jnp.where(jnp.isfinite(lam), mean, top)




# ---------------------------------------------------------------- myopic tilt, gaps


def myopic_tilt(lm: MarkovLM, reward, lam: ArrayLike) -> MarkovLM:
    r"""The token-level (myopic) tilt: every step tilted without look-ahead.

    .. math::
        \tilde\varphi(y_1 = a) \propto \mu(a) e^{\lambda r_1(a)}, \qquad
        \tilde\varphi(b \mid a) = \frac{P(a, b) e^{\lambda r(a, b)}}
        {\sum_{b'} P(a, b') e^{\lambda r(a, b')}}.

    It equals ``φ_λ`` only when the messages ``h_t`` are constant (memoryless).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=4)
      >>> myopic_tilt(lm, jaxalign.LinearReward([0.0, 1.0]), 1.0).is_homogeneous
      True
    """
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    lam = _scalar(lam, "lam", dtype)
    return MarkovLM.unchecked(jax.nn.log_softmax(log_init + lam * first),
                              jax.nn.log_softmax(log_trans + lam * pair, axis=-1),
                              lm.length)


class LookaheadGap(NamedTuple):
    """What the myopic tilt ``φ̃_λ`` loses against the KL-optimal policy.

    Attributes (0-d arrays):
      myopic_kl: ``KL(φ̃_λ‖P)``.
      myopic_reward: ``E_φ̃[R]``.
      optimal_reward: the frontier at the same KL, ``E_{φ_{λ'}}[R]`` with
        ``KL(φ_{λ'}‖P) = KL(φ̃_λ‖P)``.
      reward_shortfall: ``optimal_reward - myopic_reward >= 0``.
      kl_to_myopic: ``KL(φ_λ‖φ̃_λ)`` at the same ``λ``.
    """

    myopic_kl: Array
    myopic_reward: Array
    optimal_reward: Array
    reward_shortfall: Array
    kl_to_myopic: Array


def lookahead_gap(lm: MarkovLM, reward, lam: ArrayLike) -> LookaheadGap:
    r"""The look-ahead gap of the myopic tilt (see :class:`LookaheadGap`).

    .. math::
        \mathrm{gap} = \max_{\mathrm{KL}(Q\|P) \le \tilde\Delta} E_Q R
        - E_{\tilde\varphi_\lambda} R \ge 0, \qquad
        \tilde\Delta = \mathrm{KL}(\tilde\varphi_\lambda\|P).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=4)  # memoryless
      >>> gap = lookahead_gap(lm, jaxalign.LinearReward([0.0, 1.0]), 1.0)
      >>> abs(float(gap.reward_shortfall)) < 1e-9, abs(float(gap.kl_to_myopic)) < 1e-12
      (True, True)
    """
    myopic = myopic_tilt(lm, reward, lam)
    kl_m = chain_kl(myopic, lm)
    reward_m = chain_expected_reward(myopic, reward)
    best = optimal_reward(lm, reward, kl_m)
    return LookaheadGap(kl_m, reward_m, best, best - reward_m,
                        chain_kl(tilt(lm, reward, lam), myopic))


# ------------------------------------------------------------ power and temperature


def _alpha(alpha, dtype) -> Array:
    alpha = _scalar(alpha, "alpha", dtype, minimum=0.0)
    if is_concrete(alpha) and float(alpha) == 0.0:
        raise ValueError("alpha must be > 0, got 0.0")
    return alpha


@functools.partial(jax.jit, static_argnames="length")
def _power_arrays(log_init, log_trans, alpha, length: int):
    k = log_init.shape[0]
    zero_first, zero_pair = jnp.zeros(k, log_init.dtype), jnp.zeros((k, k),
                                                                    log_init.dtype)
    scaled = jnp.where(log_trans > -jnp.inf, alpha * log_trans, -jnp.inf)
    init = jnp.where(log_init > -jnp.inf, alpha * log_init, -jnp.inf)
    return _tilt_arrays(init, scaled, zero_first, zero_pair, jnp.zeros_like(alpha),
                        length)


def power_chain(lm: MarkovLM, alpha: ArrayLike) -> MarkovLM:
    r"""The power distribution ``P(y)^α / Σ_y P(y)^α`` as a (time-inhomogeneous)
    chain: the twist of the elementwise power ``P^{∘α}``.

    .. math::
        h_n = \mathbf 1,\ h_t = P^{\circ\alpha} h_{t+1}, \qquad
        \pi(y_t = b \mid y_{t-1} = a) = \frac{P(a, b)^\alpha h_t(b)}{h_{t-1}(a)}.

    Low-temperature sampling of a sequence (Karan & Du 2025) is this chain, not
    :func:`temperature_chain`, unless the messages are constant (memoryless).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=4)
      >>> power_chain(lm, 2.0).log_trans.shape
      (3, 2, 2)
    """
    _check_model(lm)
    alpha = _alpha(alpha, lm.log_init.dtype)
    init, trans = _power_arrays(lm.log_init, lm.log_trans, alpha, lm.length)
    return MarkovLM.unchecked(init, trans, lm.length)


def temperature_chain(lm: MarkovLM, alpha: ArrayLike) -> MarkovLM:
    r"""Token-level sampling at temperature ``1/α``: ``μ^α`` and every row of
    ``P^{∘α}`` normalised.

    .. math::
        \tilde\pi(b \mid a) = \frac{P(a, b)^\alpha}{\sum_{b'} P(a, b')^\alpha}.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=4)
      >>> t = temperature_chain(lm, 2.0)
      >>> [round(float(x), 3) for x in jnp.exp(t.log_trans[0])]  # .75^2, .25^2
      [0.9, 0.1]
    """
    _check_model(lm)
    alpha = _alpha(alpha, lm.log_init.dtype)

    def scaled(x):
        return jax.nn.log_softmax(jnp.where(x > -jnp.inf, alpha * x, -jnp.inf),
                                  axis=-1)

    return MarkovLM.unchecked(scaled(lm.log_init), scaled(lm.log_trans), lm.length)


# ------------------------------------------------------------------- law of R (DP)

# exp(x - max) underflows below -745: entries more than e^700 below their column's
# largest are dropped by the scaled product, which changes a result by a relative
# K e^{-700 - c} at most when the result is at least e^{-c} of that largest entry;
# results below e^{-600} of it (reachable only through dropped states) are redone
# with the exact log-sum-exp.
_SCALED_RANGE = 700.0
_SAFE_RANGE = 600.0


def _log_matmul(f: Array, log_p: Array) -> Array:
    """``log Σ_a exp(f[a, s]) P(a, b)`` for ``f (K, L)``: ``(K, L)`` indexed ``[b, s]``.

    A matrix product scaled per column (all terms positive, so relative accuracy
    ``~K eps``), exact log-sum-exp where underflow could matter (see above).
    """
    m = jnp.max(f, axis=0, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    shifted = f - m
    out = jnp.log(jnp.exp(log_p).T @ jnp.exp(shifted)) + m
    dropped = jnp.any(jnp.isfinite(f) & (shifted < -_SCALED_RANGE), axis=0)
    deep = dropped & jnp.any(~(out - m >= -_SAFE_RANGE), axis=0)

    def exact():
        full = jax.nn.logsumexp(f[:, None, :] + log_p[:, :, None], axis=0)
        return jnp.where(deep[None, :], full, out)

    return jax.lax.cond(jnp.any(deep), exact, lambda: out)


@functools.partial(jax.jit, static_argnames=("length", "size", "shifts"))
def _law_dp(log_init, log_trans, k_first, k_pair, k_col, length: int, size: int,
            shifts: tuple[int, ...] | None):
    """``log P(S = s)``, ``s = 0..size-1``, by the (state, S) recursion: one scaled
    product per step and a shift of row ``b`` by ``k_col[b]`` (``shifts=None``,
    linear rewards), or one product per distinct step ``j`` of ``k(a, b)``."""
    k = log_init.shape[0]
    d = (size - 1) // length
    # Only S <= (t + 1) d is reachable after t steps: the buffer grows in phases
    # (steps up to n/8, n/4, n/2, n), two thirds of the work of a full one.
    ends = sorted({min(max(length * q // 8, 1), length - 1)
                   for q in (1, 2, 4, 8)} | {length - 1}) if length > 1 else []
    widths = [min(size, (e + 1) * d + 1) for e in ends]
    f = jnp.full((k, widths[0] if widths else size), -jnp.inf, log_init.dtype)
    f = f.at[jnp.arange(k), k_first].set(log_init)

    def shift(t, by):  # out[b, s] = t[b, s - by[b]]
        cols = jnp.arange(t.shape[1])
        idx = cols[None, :] - by[:, None]
        moved = jnp.take_along_axis(t, jnp.clip(idx, 0, t.shape[1] - 1), axis=1)
        return jnp.where(idx >= 0, moved, -jnp.inf)

    def step(f, i):
        lp = _step(log_trans, i)
        if shifts is None:
            return shift(_log_matmul(f, lp), k_col), None
        new = jnp.full_like(f, -jnp.inf)
        for j in shifts:
            t = _log_matmul(f, jnp.where(k_pair == j, lp, -jnp.inf))
            new = jnp.logaddexp(new, shift(t, jnp.full(k, j)))
        return new, None

    begin = 0
    for e, w in zip(ends, widths, strict=True):
        if e > begin:
            f = jnp.pad(f, ((0, 0), (0, w - f.shape[1])), constant_values=-jnp.inf)
            f, _ = jax.lax.scan(step, f, jnp.arange(begin, e))
            begin = e
    f = jnp.pad(f, ((0, 0), (0, size - f.shape[1])), constant_values=-jnp.inf)
    return jax.nn.logsumexp(f, axis=0)


def _lattice_of(log_init, log_trans, first, pair, span, rtol, max_steps, dtype):
    from jaxalign.exact._lattice import _LATTICE_RTOL, _detect_lattice, _snap

    on_first = np.isfinite(log_init)
    on_pair = np.any(np.isfinite(log_trans.reshape(-1, *pair.shape)), axis=0)
    values = np.concatenate([first[on_first], pair[on_pair]])
    if span is not None:
        if not (np.isfinite(span) and span > 0):
            raise ValueError(f"span must be a finite number > 0, got {span!r}")
        a, h, _, err = _snap(values, float(span))
    else:
        if rtol is None:
            rtol = _LATTICE_RTOL.get(np.dtype(dtype), 1e-9)
        if not (np.isfinite(rtol) and 0 < rtol < 1):
            raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
        a, h, _, err = _detect_lattice(values, float(rtol), int(max_steps))
    k_first = np.where(on_first, np.rint((first - a) / h), 0).astype(np.int64)
    k_pair = np.where(on_pair, np.rint((pair - a) / h), 0).astype(np.int64)
    return a, h, k_first, k_pair, on_pair, err


def _law_numpy(lm, reward, span=None, rtol=None, max_steps=1_000_000,
               algorithm="lattice", max_types=None):
    if algorithm != "lattice":
        raise ValueError(
            f"algorithm must be 'lattice' for a MarkovLM, got {algorithm!r}")
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    log_init, log_trans, first, pair = (
        np.asarray(x, np.float64) for x in (log_init, log_trans, first, pair))
    a, h, k_first, k_pair, on_pair, err = _lattice_of(
        log_init, log_trans, first, pair, span, rtol, max_steps, dtype)
    n, k = lm.length, lm.num_tokens
    d = int(max(k_first.max(), k_pair.max()))
    size = n * d + 1
    from jaxalign.exact._lattice import _available_memory

    # The DP holds (state, S) tables in float64 with a few temporaries of that size.
    need, have = 64 * k * size, _available_memory()
    if need > have:
        raise ValueError(
            f"the chain's lattice law needs K x (n * max_k + 1) = {k} x {size} DP "
            f"entries: estimated peak memory {need / 2**30:.3g} GiB, more than the "
            f"{have / 2**30:.3g} GiB available; pass a coarser span=h or a shorter "
            "length")
    # k(a, b) = k(b) wherever P(a, b) > 0 (linear rewards): one product per step.
    k_col = np.max(np.where(on_pair, k_pair, 0), axis=0)
    linear = bool(np.all((k_pair == k_col[None, :]) | ~on_pair))
    shifts = None if linear else tuple(int(j) for j in np.unique(k_pair))
    with jax.enable_x64(True):
        log_pmf = np.asarray(_law_dp(
            jnp.asarray(log_init), jnp.asarray(log_trans), jnp.asarray(k_first),
            jnp.asarray(k_pair), jnp.asarray(k_col), n, size, shifts))
    rel = 2.2e-16 * (k + 4) * n
    values = n * a + h * np.arange(size, dtype=np.float64)
    return values, log_pmf, float(n * a), float(h), float(err), rel, np.dtype(dtype)


def reward_law(lm: MarkovLM, reward, *, span: float | None = None,
               rtol: float | None = None, max_steps: int = 1_000_000,
               algorithm: str | None = None, max_types: int | None = None,
               method: str | None = None):
    r"""The exact law of ``R`` for a chain and a lattice reward.

    Every reward term (first-token and step rewards with positive probability) is
    ``a + h k`` with integers ``k`` (detected as in
    :func:`jaxalign.exact.reward_law`, or snapped with ``span=h``), so
    ``R = n a + h S`` and the DP over (state, ``S``)

    .. math::
        f_1(b, k_1(b)) = \mu(b), \qquad
        f_t(b, s) = \sum_a f_{t-1}(a, s - k(a, b))\, P_t(a, b), \qquad
        P(S = s) = \sum_b f_n(b, s)

    runs in log space, jitted (a ``lax.scan`` over ``t``, float64 whatever the x64
    mode): each step is a matrix product scaled per ``s`` column (all
    terms positive, so every probability keeps *relative* accuracy, deep tails
    included), with an exact log-sum-exp where a state more than ``e^{700}``
    below its column's largest could matter.  Cost ``O(n^2 K^2 d)`` for
    ``d = max k``; ``rel_error`` reports ``2.2e-16 (K + 4) n``.  Float64 NumPy;
    not traceable.

    Args:
      lm: the chain (homogeneous or not).
      reward: a :class:`LinearReward` or :class:`PairReward`.
      span, rtol, max_steps: the lattice, as for :func:`jaxalign.exact.reward_law`.
      algorithm: ``"lattice"`` (the only algorithm for chains; ``method=`` is its
        deprecated former name).
      max_types: accepted for the common signature; unused.

    Returns:
      A :class:`jaxalign.exact.RewardLaw`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.from_probs([1.0, 0.0], [[0.5, 0.5], [0.0, 1.0]],
      ...                                   length=3)
      >>> law = reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
      >>> [round(float(x), 3) for x in jnp.exp(law.log_pmf)]
      [0.25, 0.25, 0.5, 0.0]
    """
    from jaxalign.exact._lattice import _to_law

    algorithm = renamed_keyword(algorithm, method, old="method", new="algorithm",
                                default="lattice")
    return _to_law(*_law_numpy(lm, reward, span, rtol, max_steps, algorithm,
                               max_types))


# ------------------------------------------------------- Perron–Frobenius asymptotics

_SQUARINGS = 6  # power iteration on M^64: 64 times fewer sweeps
_MAX_SWEEPS = 10_000


def _check_primitive(lm: MarkovLM, function: str) -> None:
    """``ValueError`` unless the chain is homogeneous, irreducible and aperiodic
    (primitive: ``A^m > 0`` for ``m = (K - 1)^2 + 1``, Wielandt) where concrete."""
    if not lm.is_homogeneous:
        raise ValueError(f"{function} needs a time-homogeneous chain (log_trans of "
                         f"shape (K, K)), got shape {lm.log_trans.shape}")
    if not is_concrete(lm.log_trans):
        return
    a = (np.asarray(lm.log_trans) > -np.inf).astype(np.float64)
    power, m = np.eye(len(a)), (len(a) - 1) ** 2 + 1
    base = a
    while m:
        if m & 1:
            power = (power @ base > 0).astype(np.float64)
        m >>= 1
        base = (base @ base > 0).astype(np.float64)
    if not np.all(power > 0):
        raise ValueError(
            f"{function} needs an irreducible aperiodic (primitive) chain: the "
            "transition support of lm has no power that is positive everywhere")


def _normalise(x: Array) -> Array:
    return x - jax.nn.logsumexp(x)


def _perron_vector(log_m: Array) -> Array:
    """Log right Perron vector of ``exp(log_m)`` (``Σ e^v = 1``), by power
    iteration on ``M^64`` in log space (``log_m`` primitive)."""
    power = log_m
    for _ in range(_SQUARINGS):
        power = jax.nn.logsumexp(power[:, :, None] + power[None, :, :], axis=1)
        power = power - jnp.max(power)
    tol = 64 * jnp.finfo(log_m.dtype).eps

    def sweep(x):
        return _normalise(jax.nn.logsumexp(power + x[None, :], axis=1))

    def cond(c):
        i, x, y = c
        return (i < _MAX_SWEEPS) & (jnp.max(jnp.abs(x - y)) > tol)

    def body(c):
        i, _, y = c
        return i + 1, y, sweep(y)

    x0 = _normalise(jnp.zeros(log_m.shape[0], log_m.dtype))
    return jax.lax.while_loop(cond, body, (0, x0, sweep(x0)))[2]


class _Perron(NamedTuple):
    log_rho: Array  # () log ρ
    log_right: Array  # (K,) log v
    log_left: Array  # (K,) log u, u·v = 1
    log_twisted: Array  # (K, K) log Q(a, b) = log M(a, b) v(b) / (ρ v(a))
    stationary: Array  # (K,) π = u∘v


def _perron(log_m: Array) -> _Perron:
    v = _perron_vector(log_m)
    u = _perron_vector(log_m.T)
    mv = jax.nn.logsumexp(log_m + v[None, :], axis=1)
    log_uv = jax.nn.logsumexp(u + v)
    # Rayleigh quotient u·Mv / u·v: second-order accurate in the vectors.
    log_rho = jax.nn.logsumexp(u + mv) - log_uv
    twisted = jax.nn.log_softmax(log_m + v[None, :], axis=1)
    stationary = jax.nn.softmax(u + v)
    return _Perron(log_rho, v, u - log_uv, twisted, stationary)


@jax.custom_jvp
def _log_rho(log_m: Array) -> Array:
    return _perron(log_m).log_rho


@_log_rho.defjvp
def _log_rho_jvp(primals, tangents):
    # d log ρ = Σ_{ab} π(a) Q(a, b) d log M(a, b)  (ρ' = u·(dM)v / u·v).
    (log_m,), (dlog_m,) = primals, tangents
    pp = _perron(log_m)
    weight = pp.stationary[:, None] * jnp.exp(pp.log_twisted)
    return pp.log_rho, jnp.sum(jnp.where(weight > 0, weight * dlog_m, 0.0))


def _tilted_matrix(log_trans, pair, lam):
    return log_trans + lam * pair


class PerronResult(NamedTuple):
    """The Perron–Frobenius quantities of ``P_λ(a, b) = P(a, b) e^{λ r(a, b)}``.

    Attributes:
      scgf: ``Λ(λ) = log ρ(P_λ)``, the scaled cumulant generating function per
        token.
      log_right: ``(K,)`` log right Perron vector ``v`` (``Σ v = 1``).
      log_left: ``(K,)`` log left Perron vector ``u`` (``u·v = 1``).
      log_twisted: ``(K, K)`` log twisted chain
        ``Q_λ(a, b) = P_λ(a, b) v(b) / (ρ v(a))``.
      stationary: ``(K,)`` its stationary law ``π_λ = u∘v``.
      reward_rate: ``Λ'(λ) = Σ π_λ(a) Q_λ(a, b) r(a, b)``.
      kl_rate: ``λΛ'(λ) - Λ(λ) = Σ π_λ(a) KL(Q_λ(a, ·)‖P(a, ·))``, from the
        second form (non-negative terms).
    """

    scgf: Array
    log_right: Array
    log_left: Array
    log_twisted: Array
    stationary: Array
    reward_rate: Array
    kl_rate: Array


def _rates(log_trans, pair, lam, pp: _Perron | None = None) -> tuple[Array, Array]:
    pp = _perron(_tilted_matrix(log_trans, pair, lam)) if pp is None else pp
    q = jnp.exp(pp.log_twisted)
    reward = pp.stationary @ jnp.sum(jnp.where(q > 0, q * pair, 0.0), axis=1)
    kl_ = pp.stationary @ jnp.sum(_kl_terms(log_trans, pp.log_twisted), axis=1)
    return reward, kl_


@jax.jit
def _perron_result(log_trans, pair, lam) -> PerronResult:
    pp = _perron(_tilted_matrix(log_trans, pair, lam))
    return PerronResult(*pp, *_rates(log_trans, pair, lam, pp))


def _prepare_perron(lm, reward, function):
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    _check_primitive(lm, function)
    return log_trans, pair, dtype


def perron(lm: MarkovLM, reward, lam: ArrayLike) -> PerronResult:
    r"""Perron root, vectors and twisted chain of ``P_λ`` (THEORY §11).

    .. math::
        \Lambda(\lambda) = \log\rho(P_\lambda), \quad
        Q_\lambda(a, b) = \frac{P_\lambda(a, b) v(b)}{\rho v(a)}, \quad
        \pi_\lambda = u \circ v, \quad \Lambda'(\lambda) = \pi_\lambda Q_\lambda r,

    so ``log Z_n(λ)/n → Λ(λ)`` and ``KL(φ_λ‖P)/n → λΛ' - Λ``.  The vectors come
    from power iteration on ``P_λ^{64}`` in log space (no ``eig``: it runs on every
    backend); ``Λ`` has an exact derivative (``custom_jvp``, ``ρ' = u·(∂P_λ) v /
    u·v``), higher ones by forward mode through the iteration
    (:func:`cumulant_rates`).  The initial law and first-token rewards do not enter.

    Raises:
      ValueError: a time-inhomogeneous chain, or one that is not irreducible and
        aperiodic.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=1)
      >>> pr = perron(lm, jaxalign.LinearReward([0.0, 1.0]), 1.0)
      >>> round(float(pr.scgf), 6)  # memoryless: log((1 + e)/2)
      0.620115
    """
    log_trans, pair, dtype = _prepare_perron(lm, reward, "perron")
    lam = _scalar(lam, "lam", dtype)
    return _perron_result(log_trans, pair, lam)


def scgf(lm: MarkovLM, reward, lam: ArrayLike) -> Array:
    r"""``Λ(λ) = log ρ(P_λ) = lim_n log Z_n(λ)/n``, differentiable in ``λ``
    (``Λ' = π_λ Q_λ r`` exactly).

    Examples:
      >>> import jax
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(jax.grad(lambda l: scgf(lm, r, l))(0.0)), 12)  # E_π r
      0.5
    """
    log_trans, pair, dtype = _prepare_perron(lm, reward, "scgf")
    lam = _scalar(lam, "lam", dtype)
    return _scgf_jit(log_trans, pair, lam)


@jax.jit
def _scgf_jit(log_trans, pair, lam):
    return _log_rho(_tilted_matrix(log_trans, pair, lam))


@functools.partial(jax.jit, static_argnames="order")
def _cumulants(log_trans, pair, lam, order: int) -> Array:
    def derivative(fn):
        def d(l):
            return jax.jvp(fn, (l,), (jnp.ones_like(l),))[1]
        return d

    fn = lambda l: _log_rho(_tilted_matrix(log_trans, pair, l))
    out = []
    for _ in range(order):
        fn = derivative(fn)
        out.append(fn(lam))
    return jnp.stack(out)


def cumulant_rates(lm: MarkovLM, reward, order: int, lam: ArrayLike = 0.0) -> Array:
    r"""``(order,)`` cumulant rates ``Λ^{(k)}(λ) = lim_n κ_k(R)/n`` under ``φ_λ``
    (``Λ''`` is the asymptotic variance, autocovariances included), by nested
    forward-mode derivatives.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=1)
      >>> [round(float(c), 9) for c in cumulant_rates(lm, jaxalign.LinearReward(
      ...     [0.0, 1.0]), 2)]
      [0.5, 0.25]
    """
    order = check_positive_int(order, "order")
    log_trans, pair, dtype = _prepare_perron(lm, reward, "cumulant_rates")
    lam = _scalar(lam, "lam", dtype)
    return _cumulants(log_trans, pair, lam, order)


def _solve_rate(log_trans, pair, delta):
    def kl_and_slope(lam):
        (_, kl_), (drate, _) = jax.jvp(lambda l: _rates(log_trans, pair, l),
                                       (lam,), (jnp.ones_like(lam),))
        return kl_, lam * drate

    return _solve_kl(kl_and_slope, delta, jnp.max(pair) - jnp.min(pair))


@jax.jit
def _limit_reward(log_trans, pair, delta):
    safe = jnp.where(delta > 0, delta, 1.0)
    lam = _solve_rate(log_trans, pair, safe)
    lam = jnp.where(delta > 0, lam, 0.0)
    return _rates(log_trans, pair, lam)[0]


def limit_reward_per_token(lm: MarkovLM, reward, delta: ArrayLike) -> Array:
    r"""``lim_n E_{φ}[R]/n`` for the KL-optimal policy with budget ``KL = nδ``:
    ``Λ'(λ_δ)`` with ``λ_δ Λ'(λ_δ) - Λ(λ_δ) = δ`` (the KL rate of the twisted
    chain).  At or beyond the largest KL rate the solve runs ``λ`` up to the dtype's max
    and returns the top reward rate (the largest mean reward of a cycle of the
    chain) as the limit of ``Λ'``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=1)
      >>> round(float(limit_reward_per_token(lm, jaxalign.LinearReward([0.0, 1.0]),
      ...                                    0.0)), 12)
      0.5
    """
    log_trans, pair, dtype = _prepare_perron(lm, reward, "limit_reward_per_token")
    delta = _scalar(delta, "delta", dtype, minimum=0.0)
    return _limit_reward(log_trans, pair, delta)


@jax.jit
def _rate_function(log_trans, pair, x):
    from jaxalign.theory._tilt import _bracketed_newton

    def fn(lam):
        (rate, _), (drate, _) = jax.jvp(lambda l: _rates(log_trans, pair, l), (lam,),
                                        (jnp.ones_like(lam),))
        return rate - x, drate

    big = jnp.asarray(1e6, x.dtype)
    lo = jax.lax.while_loop(lambda c: (fn(c)[0] > 0) & (c > -big), lambda c: 4 * c,
                            -jnp.ones_like(x))
    hi = jax.lax.while_loop(lambda c: (fn(c)[0] < 0) & (c < big), lambda c: 4 * c,
                            jnp.ones_like(x))
    inside = (fn(lo)[0] <= 0) & (fn(hi)[0] >= 0)
    lam = _bracketed_newton(fn, lo, hi, jnp.zeros_like(x))
    lam = jnp.where(inside, lam, 0.0)
    rate = _perron(_tilted_matrix(log_trans, pair, lam))
    value = _rates(log_trans, pair, lam, rate)[1]  # I(Λ'(λ)) = KL rate, no cancel
    value = value + lam * (x - _rates(log_trans, pair, lam, rate)[0])
    return jnp.where(inside, value, jnp.inf)


def rate_function(lm: MarkovLM, reward, x: ArrayLike) -> Array:
    r"""The rate function of ``R/n`` under the chain (Gärtner–Ellis).

    .. math::
        I(x) = \sup_\lambda\, [\lambda x - \Lambda(\lambda)]
        = \lambda_x \Lambda'(\lambda_x) - \Lambda(\lambda_x),
        \qquad \Lambda'(\lambda_x) = x,

    the KL rate of the twisted chain ``Q_{λ_x}`` (non-negative terms), so
    ``P(R ≈ n x) = e^{-n I(x) + o(n)}``.  ``inf`` where no ``|λ| <= 10^6`` reaches
    ``x`` (outside the range of cycle means).  The best-of-``e^{nδ}`` reward
    per token ``x* >= Λ'(0)`` solves ``I(x*) = δ`` and equals
    :func:`limit_reward_per_token`.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=1)
      >>> round(float(rate_function(lm, jaxalign.LinearReward([0.0, 1.0]), 0.5)), 12)
      0.0
    """
    log_trans, pair, dtype = _prepare_perron(lm, reward, "rate_function")
    x = _scalar(x, "x", dtype)
    return _rate_function(log_trans, pair, x)


def renyi_rate(q: MarkovLM, p: MarkovLM, alpha: ArrayLike) -> Array:
    r"""Rényi divergence rate between two chains (Rached, Alajaji & Campbell 2001).

    .. math::
        \lim_n \frac{1}{n} D_\alpha(Q^n\|P^n) = \frac{1}{\alpha - 1}
        \log\rho\big([Q(a, b)^\alpha P(a, b)^{1-\alpha}]\big), \qquad
        \alpha > 0,\ \alpha \ne 1.

    Examples:
      >>> import jaxalign
      >>> p = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.0, length=1)
      >>> round(float(renyi_rate(p, p, 2.0)), 12)
      0.0
    """
    _check_model(q, "q")
    _check_model(p, "p")
    _check_primitive(q, "renyi_rate")
    _check_primitive(p, "renyi_rate")
    if q.num_tokens != p.num_tokens:
        raise ValueError(f"q and p must have the same K, got {q.num_tokens} and "
                         f"{p.num_tokens}")
    dtype = jnp.result_type(q.log_trans.dtype, p.log_trans.dtype)
    alpha = _scalar(alpha, "alpha", dtype, minimum=0.0)
    if is_concrete(alpha) and float(alpha) in (0.0, 1.0):
        raise ValueError(f"alpha must be > 0 and != 1, got {float(alpha)!r}")
    return _renyi_rate(q.log_trans.astype(dtype), p.log_trans.astype(dtype), alpha)


@jax.jit
def _renyi_rate(log_q, log_p, alpha):
    on = (log_q > -jnp.inf) & (log_p > -jnp.inf)
    log_m = jnp.where(on, alpha * jnp.where(on, log_q, 0.0)
                      + (1 - alpha) * jnp.where(on, log_p, 0.0), -jnp.inf)
    return _perron(log_m).log_rho / (alpha - 1)


# ------------------------------------------------------------------------ sampling


def _stage(lm: MarkovLM, reward):
    from jaxalign.sample._kernels import _Stage

    length, k = lm.length, lm.num_tokens
    dtype = lm.log_init.dtype
    cdf_init = jnp.cumsum(jnp.exp(lm.log_init))
    cdf_trans = jnp.cumsum(jnp.exp(lm.log_trans), axis=-1)

    def pick(cdf, u):
        return jnp.minimum(jnp.sum(cdf[:-1] <= u * cdf[-1]), k - 1)

    def draw(key):
        return jax.random.uniform(key, (length,), dtype)

    def tokens_of(u):
        first = pick(cdf_init, u[0])

        def body(a, i):
            b = pick(_step(cdf_trans, i)[a], u[i + 1])
            return b, b

        _, rest = jax.lax.scan(body, first, jnp.arange(length - 1))
        return jnp.concatenate([first[None], rest])

    if reward is None:
        return _Stage(draw, tokens_of)
    first_r, pair_r = _pair_form(reward, k)

    def consume(u):
        y = tokens_of(u)
        return first_r[y[0]] + jnp.sum(pair_r[y[:-1], y[1:]])

    return _Stage(draw, consume)


@functools.partial(jax.jit, static_argnames="num_samples")
def _sample_impl(key, lm, num_samples: int):
    stage = _stage(lm, None)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_samples))
    return jax.vmap(lambda kk: stage.consume(stage.draw(kk)))(keys)


def sample(key: PRNGKey, lm: MarkovLM, num_samples: int) -> Array:
    r"""``(num_samples, n)`` token sequences drawn from a chain (base or tilted).

    Sample ``i`` uses the key ``fold_in(key, i)`` and ``n`` uniforms, turned into
    tokens by inverse CDFs along a scan over ``t``: exact in law.

    Examples:
      >>> import jax
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 1.0, length=5)
      >>> y = sample(jax.random.key(0), lm, 3)
      >>> y.shape, bool((y == y[:, :1]).all())  # s = 1: constant sequences
      ((3, 5), True)
    """
    check_key(key)
    _check_model(lm)
    num_samples = check_positive_int(num_samples, "num_samples")
    return classic_threefry(_sample_impl)(key, lm, num_samples)

