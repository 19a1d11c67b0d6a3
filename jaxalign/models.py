"""Memoryless language models and linear rewards: immutable pytrees of arrays.

A :class:`MemorylessLM` draws a sequence of ``length`` tokens i.i.d. from a token
distribution ``p`` over ``K`` tokens; a :class:`LinearReward` scores a sequence by
``R(y) = sum_i r(y_i)``.  Model and reward are separate objects, so one can tilt by a
proxy reward and score by a gold one.

Construction validates concrete inputs and raises ``ValueError`` naming the argument,
the bad value and what is allowed.  Pytree unflattening (``jit``, ``vmap``,
``jax.tree.map``) bypasses validation, so batched or traced leaves are fine.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_key,
    check_length,
    check_positive_int,
    classic_threefry,
    device_array,
    float_dtype,
    is_concrete,
    log_tolerance,
)

__all__ = [
    "BaseModel",
    "MemorylessLM",
    "LinearReward",
    "PairReward",
    "TiltSummary",
    "check_compatible",
]


def _as_float_array(x: ArrayLike, name: str, what: str = "real") -> Array:
    """``x`` as a floating array (ints promoted), after a dtype check.

    Host data (lists, NumPy) stays a NumPy array until a model stores it: in a
    new process every eager ``jnp`` operation compiles a program first (building
    the CLI's model took 0.19 s that way)."""
    if is_concrete(x):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be {what}, got dtype {arr.dtype}")
        if not isinstance(x, jax.Array):
            return arr.astype(float_dtype(arr))
    x = jnp.asarray(x)
    return x.astype(float_dtype(x))


def _log_normalised(x: Array) -> Array:
    """``log(x / sum(x))`` over the last axis (a zero gives ``-inf``); in NumPy for
    host data (see :func:`_as_float_array`)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    with np.errstate(divide="ignore"):
        return xp.log(x) - xp.log(xp.sum(x, axis=-1, keepdims=True))


def _as_float_vector(x: ArrayLike, name: str) -> Array:
    x = _as_float_array(x, name, "a real vector")
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape (K,), a vector, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} must have K >= 2 entries, got K = {x.shape[0]}")
    return x


class TiltSummary(NamedTuple):
    r"""Sequence-level values of the KL-optimal policy ``Φ_λ ∝ P e^{λR}``.

    Attributes:
      log_partition: ``log E_P e^{λR}``.
      mean: ``E_Φ[R]``.
      variance: ``Var_Φ[R]``.
      kl: ``KL(Φ_λ‖P) = λ E_Φ[R] - log E_P e^{λR}``.
    """

    log_partition: Array
    mean: Array
    variance: Array
    kl: Array


@runtime_checkable
class BaseModel(Protocol):
    """What the exact routes, the samplers, the policies and the sweeps need from a
    base language model.  :class:`MemorylessLM` and :class:`jaxalign.MarkovLM` (a
    model with memory, whose KL-optimal policy is a time-inhomogeneous chain found
    by backward messages) implement it, and get every policy of
    :mod:`jaxalign.policies` exact through :func:`jaxalign.exact.policy_law` with
    no policy code of their own.  ``reward`` is whatever reward the model accepts
    (:class:`LinearReward` for both; :class:`PairReward` for a Markov model).

    Attributes:
      length: the sequence length ``n`` (static).
      num_tokens: the vocabulary size ``K``.
    """

    length: int

    @property
    def num_tokens(self) -> int: ...

    def reward_law(self, reward: Any, **options) -> Any:
        """The exact law of ``R`` (a :class:`jaxalign.exact.RewardLaw`)."""

    def sampler_stage(self, reward: Any) -> Any:
        """The two-stage token sampler of one sequence (``draw(key)`` raw random
        words, ``consume(words)`` the reward, or the tokens when ``reward=None``)."""

    def tilt(self, reward: Any, lam: Any) -> BaseModel:
        """The KL-optimal policy ``Φ_λ ∝ P e^{λR}`` as a model of its own (so it can
        be sampled token by token and its law computed); ``lam`` may be traced."""

    def tilt_summary(self, reward: Any, lam: Any) -> TiltSummary:
        """Closed forms of the tilt at ``λ``: ``log Z``, ``E R``, ``Var R``, KL."""

    def lam_for_kl(self, reward: Any, kl_budget: Any) -> Array:
        """The ``λ >= 0`` with ``KL(Φ_λ‖P) = kl_budget`` (``inf`` beyond the max)."""

    def max_kl(self, reward: Any) -> Array:
        """``sup_λ KL(Φ_λ‖P)``: the KL of the policy on the top reward class."""

    def limit_reward_per_token(self, reward: Any, delta: Any) -> Array:
        """``lim_n E_Φ[R]/n`` for the tilt with per-token budget ``δ`` (also the
        limit of best-of-``e^{nδ}``, Yang et al. 2024)."""

    def optimal_reward(self, reward: Any, kl_budget: Any) -> Array:
        """The finite-n frontier ``max E_Q R`` over ``KL(Q‖P) <= kl_budget``
        (the top reward once the budget reaches :meth:`max_kl`; ``inf`` allowed)."""

    def tilt_rates(self, reward: Any, lam: Any) -> TiltSummary:
        """The per-token limits of :meth:`tilt_summary` at a fixed ``λ``:
        ``Λ(λ)``, ``Λ'(λ)``, ``Λ''(λ)`` and the KL rate ``λΛ' - Λ`` (``ValueError``
        where the model has none)."""

    def lam_for_kl_rate(self, reward: Any, delta: Any) -> Array:
        """The ``λ_δ`` whose KL rate ``λΛ'(λ) - Λ(λ)`` is ``δ`` (per token)."""

    def replace(self, **changes) -> BaseModel:
        """A copy with some fields changed (e.g. ``length``), validated."""


def _new(cls, **fields):
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class MemorylessLM:
    r"""A memoryless (i.i.d.-token) language model.

    .. math::
        P(y_1, \dots, y_n) = \prod_{i=1}^n p(y_i), \qquad n = \texttt{length}.

    Attributes:
      log_probs: ``(K,)`` normalised per-token log-probabilities; ``-inf`` marks a
        zero-probability token, which is legal and handled exactly.
      length: the static sequence length ``n >= 1`` (a Python ``int``; part of the
        pytree structure, so changing it recompiles).

    Prefer the constructors :meth:`from_probs`, :meth:`from_logits`,
    :meth:`bernoulli`, :meth:`uniform`, :meth:`zipf` and :meth:`dirichlet`.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.3, 0.2], length=8)
      >>> lm.num_tokens, lm.length
      (3, 8)
    """

    log_probs: Array
    length: int

    def __post_init__(self):
        length = check_length(self.length)
        log_probs = _as_float_vector(self.log_probs, "log_probs")
        if is_concrete(log_probs):
            lp = np.asarray(log_probs)
            if np.any(np.isnan(lp)) or np.any(lp == np.inf):
                raise ValueError(
                    f"log_probs must be finite or -inf (zero probability), got {lp}"
                )
            total = float(np.exp(np.logaddexp.reduce(lp.astype(np.float64))))
            tol = log_tolerance(lp.dtype)
            if not abs(total - 1.0) <= tol:
                raise ValueError(
                    f"log_probs must be normalised: exp(log_probs) sums to {total!r}, "
                    f"allowed |sum - 1| <= {tol:.3g}"
                )
        object.__setattr__(self, "log_probs", device_array(log_probs))
        object.__setattr__(self, "length", length)

    # -- pytree protocol: unflattening never re-validates ------------------------
    def tree_flatten(self):
        return (self.log_probs,), self.length

    @classmethod
    def tree_unflatten(cls, length, children):
        return cls.unchecked(children[0], length)

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def from_probs(cls, probs: ArrayLike, *, length: int) -> MemorylessLM:
        """Model from token probabilities ``(K,)``: non-negative, finite, summing to 1.

        The sum must be within ``sqrt(eps)`` of 1 for the dtype (1.5e-8 in float64,
        3.5e-4 in float32); the probabilities are then renormalised exactly.
        Zero entries are allowed.

        Examples:
          >>> lm = MemorylessLM.from_probs([0.7, 0.3], length=4)
        """
        probs = _as_float_vector(probs, "probs")
        if is_concrete(probs):
            p = np.asarray(probs)
            if not np.all(np.isfinite(p)):
                raise ValueError(f"probs must be finite, got {p}")
            if np.any(p < 0):
                raise ValueError(f"probs must be non-negative, got {p}")
            total = float(np.sum(p, dtype=np.float64))
            tol = log_tolerance(p.dtype)
            if not abs(total - 1.0) <= tol:
                raise ValueError(
                    f"probs must sum to 1 (tolerance {tol:.3g}), got sum {total!r} "
                    f"for probs {p}"
                )
        return cls(_log_normalised(probs), length)

    @classmethod
    def from_logits(cls, logits: ArrayLike, *, length: int) -> MemorylessLM:
        """Model from unnormalised logits ``(K,)`` (finite, or ``-inf`` for zero mass).

        Examples:
          >>> lm = MemorylessLM.from_logits([0.0, 1.0, 2.0], length=4)
        """
        logits = _as_float_vector(logits, "logits")
        if is_concrete(logits):
            lg = np.asarray(logits)
            if np.any(np.isnan(lg)) or np.any(lg == np.inf):
                raise ValueError(f"logits must be finite or -inf, got {lg}")
            if np.all(lg == -np.inf):
                raise ValueError("logits must have at least one finite entry")
        return cls(jax.nn.log_softmax(logits), length)

    @classmethod
    def bernoulli(cls, q: float, *, length: int) -> MemorylessLM:
        """Two tokens ``(0, 1)`` with ``P(token 1) = q``, ``0 <= q <= 1``."""
        if is_concrete(q) and not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"q must be a probability in [0, 1], got {q!r}")
        q = jnp.asarray(q, dtype=float_dtype(q))
        return cls.from_probs(jnp.stack([1 - q, q]), length=length)

    @classmethod
    def uniform(cls, num_tokens: int, *, length: int) -> MemorylessLM:
        """Uniform distribution over ``num_tokens >= 2`` tokens."""
        num_tokens = check_positive_int(num_tokens, "num_tokens", minimum=2)
        return cls.from_logits(jnp.zeros(num_tokens), length=length)

    @classmethod
    def zipf(cls, num_tokens: int, exponent: float = 1.0, *, length: int
             ) -> MemorylessLM:
        """Zipf law ``p(k) ∝ k^{-exponent}`` over ranks ``k = 1..num_tokens``."""
        num_tokens = check_positive_int(num_tokens, "num_tokens", minimum=2)
        if not np.isfinite(exponent) or exponent < 0:
            raise ValueError(f"exponent must be finite and >= 0, got {exponent!r}")
        ranks = jnp.arange(1, num_tokens + 1, dtype=float_dtype(exponent))
        return cls.from_logits(-exponent * jnp.log(ranks), length=length)

    @classmethod
    def dirichlet(cls, key: PRNGKey, num_tokens: int, concentration: float = 1.0,
                  *, length: int) -> MemorylessLM:
        """Random token law drawn from a symmetric Dirichlet(``concentration``).

        Sampled in log space (log-gamma variates), so tiny concentrations give
        extreme but valid laws instead of NaNs.
        """
        check_key(key)
        num_tokens = check_positive_int(num_tokens, "num_tokens", minimum=2)
        if not np.isfinite(concentration) or concentration <= 0:
            raise ValueError(
                f"concentration must be finite and > 0, got {concentration!r}"
            )
        log_gammas = classic_threefry(jax.random.loggamma)(
            key, jnp.full(num_tokens, concentration)
        )
        return cls.from_logits(log_gammas, length=length)

    # -- derived views ----------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """K, the vocabulary size."""
        return self.log_probs.shape[-1]

    @property
    def probs(self) -> Array:
        """``(K,)`` token probabilities."""
        return jnp.exp(self.log_probs)

    def replace(self, **changes) -> MemorylessLM:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def unchecked(cls, log_probs: Array, length: int) -> MemorylessLM:
        """A model from normalised ``log_probs`` *without* validation: the
        constructor for traced or batched values (inside ``jit``/``vmap``)."""
        return _new(cls, log_probs=log_probs, length=length)

    # -- the base-model protocol (:class:`BaseModel`) ------------------------------
    def reward_law(self, reward: LinearReward, **options):
        """:func:`jaxalign.exact.reward_law` of this model."""
        from jaxalign import exact

        return exact.reward_law(self, reward, **options)

    def sampler_stage(self, reward: LinearReward | None):
        """The alias-table token sampler (see :mod:`jaxalign.sample`)."""
        from jaxalign import sample

        return sample._token_stage(self, reward)

    def tilt(self, reward: LinearReward, lam) -> MemorylessLM:
        """:func:`jaxalign.theory.tilt`: i.i.d. tokens from ``p_λ ∝ p e^{λr}``."""
        from jaxalign import theory

        return theory.tilt(self, reward, lam)

    def tilt_summary(self, reward: LinearReward, lam) -> TiltSummary:
        """``n`` times the per-token log-MGF, cumulants and KL of the tilt."""
        from jaxalign import theory

        n = self.length
        mean, var = theory.cumulants(self, reward, 2, lam)
        return TiltSummary(n * theory.log_mgf(self, reward, lam), n * mean, n * var,
                           theory.kl(self, reward, lam))

    def lam_for_kl(self, reward: LinearReward, kl_budget) -> Array:
        """:func:`jaxalign.theory.lam_for_kl`."""
        from jaxalign import theory

        return theory.lam_for_kl(self, reward, kl_budget)

    def max_kl(self, reward: LinearReward) -> Array:
        """:func:`jaxalign.theory.max_kl`."""
        from jaxalign import theory

        return theory.max_kl(self, reward)

    def limit_reward_per_token(self, reward: LinearReward, delta) -> Array:
        """:func:`jaxalign.theory.best_of_n_asymptotic_reward`: ``Λ'(λ_δ)``."""
        from jaxalign import theory

        return theory.best_of_n_asymptotic_reward(self, reward, delta)

    def optimal_reward(self, reward: LinearReward, kl_budget) -> Array:
        """:func:`jaxalign.theory.optimal_reward`."""
        from jaxalign import theory

        return theory.optimal_reward(self, reward, kl_budget)

    def tilt_rates(self, reward: LinearReward, lam) -> TiltSummary:
        """The per-token values of the tilt, those of every ``n`` (i.i.d. tokens):
        :meth:`tilt_summary` at length 1."""
        return self.replace(length=1).tilt_summary(reward, lam)

    def lam_for_kl_rate(self, reward: LinearReward, delta) -> Array:
        """:func:`jaxalign.theory.lam_for_kl` at length 1 (per-token budget)."""
        from jaxalign import theory

        return theory.lam_for_kl(self.replace(length=1), reward, delta)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class LinearReward:
    r"""A linear (additive) sequence reward.

    .. math::
        R(y_1, \dots, y_n) = \sum_{i=1}^n r(y_i).

    Attributes:
      token_rewards: ``(K,)`` finite per-token rewards ``r``.

    Examples:
      >>> import jaxalign
      >>> reward = jaxalign.LinearReward([0.0, 1.0, 2.0])
      >>> reward.num_tokens
      3
    """

    token_rewards: Array

    def __post_init__(self):
        r = _as_float_vector(self.token_rewards, "token_rewards")
        if is_concrete(r) and not np.all(np.isfinite(np.asarray(r))):
            raise ValueError(f"token_rewards must be finite, got {np.asarray(r)}")
        object.__setattr__(self, "token_rewards", device_array(r))

    def tree_flatten(self):
        return (self.token_rewards,), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls.unchecked(children[0])

    @classmethod
    def unchecked(cls, token_rewards: Array) -> LinearReward:
        """A reward *without* validation: the constructor for traced values."""
        return _new(cls, token_rewards=token_rewards)

    @property
    def num_tokens(self) -> int:
        """K, the vocabulary size."""
        return self.token_rewards.shape[-1]

    def __call__(self, tokens: ArrayLike) -> Array:
        """Sequence rewards ``sum_i r(tokens[..., i])`` for ``tokens (..., n)``."""
        return jnp.sum(self.token_rewards[jnp.asarray(tokens)], axis=-1)


def _as_float_matrix(x: ArrayLike, name: str) -> Array:
    x = _as_float_array(x, name, "a real matrix")
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must have shape (K, K), a square matrix, got shape "
                         f"{x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} must have K >= 2 rows, got K = {x.shape[0]}")
    return x


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class PairReward:
    r"""A reward on consecutive token pairs (for models with memory).

    .. math::
        R(y_1, \dots, y_n) = r_1(y_1) + \sum_{t=2}^n r(y_{t-1}, y_t).

    A :class:`LinearReward` ``r`` is the pair reward ``r(a, b) = r(b)`` with
    ``r_1 = r``.

    Attributes:
      pair_rewards: ``(K, K)`` finite rewards ``r(a, b)`` of the step ``a -> b``.
      first_rewards: ``(K,)`` finite rewards ``r_1`` of the first token (zeros when
        not given).

    Examples:
      >>> import jaxalign
      >>> reward = jaxalign.PairReward([[1.0, 0.0], [0.0, 1.0]])  # rewards repeats
      >>> float(reward([0, 0, 1, 1]))
      2.0
    """

    pair_rewards: Array
    first_rewards: Array | None = None

    def __post_init__(self):
        r = _as_float_matrix(self.pair_rewards, "pair_rewards")
        first = self.first_rewards
        first = jnp.zeros(r.shape[0], r.dtype) if first is None else first
        first = _as_float_vector(first, "first_rewards")
        if first.shape[0] != r.shape[0]:
            raise ValueError(
                f"first_rewards must have K = {r.shape[0]} entries like pair_rewards, "
                f"got K = {first.shape[0]}")
        for name, x in (("pair_rewards", r), ("first_rewards", first)):
            if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
                raise ValueError(f"{name} must be finite, got {np.asarray(x)}")
        dtype = jnp.result_type(r.dtype, first.dtype)
        object.__setattr__(self, "pair_rewards", device_array(r, dtype))
        object.__setattr__(self, "first_rewards", device_array(first, dtype))

    def tree_flatten(self):
        return (self.pair_rewards, self.first_rewards), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls.unchecked(*children)

    @classmethod
    def unchecked(cls, pair_rewards: Array, first_rewards: Array) -> PairReward:
        """A reward *without* validation: the constructor for traced values."""
        return _new(cls, pair_rewards=pair_rewards, first_rewards=first_rewards)

    @classmethod
    def from_linear(cls, reward: LinearReward) -> PairReward:
        """The pair form ``r(a, b) = r(b)``, ``r_1 = r`` of a :class:`LinearReward`."""
        r = reward.token_rewards
        return cls.unchecked(jnp.broadcast_to(r[None, :], (r.shape[0], r.shape[0])), r)

    @property
    def num_tokens(self) -> int:
        """K, the vocabulary size."""
        return self.pair_rewards.shape[-1]

    def __call__(self, tokens: ArrayLike) -> Array:
        """Sequence rewards for ``tokens (..., n)``."""
        tokens = jnp.asarray(tokens)
        steps = self.pair_rewards[tokens[..., :-1], tokens[..., 1:]]
        return self.first_rewards[tokens[..., 0]] + jnp.sum(steps, axis=-1)


def check_compatible(lm: MemorylessLM, reward: LinearReward) -> None:
    """Raise ``ValueError`` if model and reward disagree on the vocabulary size K."""
    if not isinstance(lm, MemorylessLM):
        raise ValueError(f"lm must be a MemorylessLM, got {type(lm).__name__}")
    if not isinstance(reward, LinearReward):
        raise ValueError(f"reward must be a LinearReward, got {type(reward).__name__}")
    if lm.num_tokens != reward.num_tokens:
        raise ValueError(
            f"model and reward disagree on the vocabulary size: lm has K = "
            f"{lm.num_tokens} tokens, reward has K = {reward.num_tokens}"
        )
