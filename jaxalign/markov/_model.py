"""The chain itself: :class:`MarkovLM`, its constructors and validation."""

from __future__ import annotations

import dataclasses

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
    device_array,
    is_concrete,
    log_tolerance,
)
from jaxalign.models import (
    LinearReward,
    MemorylessLM,
    PairReward,
    TiltSummary,
    _as_float_array,
    _as_float_vector,
    _log_normalised,
    _new,
)

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
        object.__setattr__(self, "log_init", device_array(log_init, dtype))
        object.__setattr__(self, "log_trans", device_array(log_trans, dtype))
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
        return cls(_log_normalised(init), _log_normalised(trans), length)

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

    def replace(self, **changes) -> MarkovLM:
        """A copy with some fields changed (validated: a time-inhomogeneous chain
        keeps its length, ``log_trans`` having one matrix per step)."""
        return dataclasses.replace(self, **changes)

    @property
    def trans_probs(self) -> Array:
        """``(K, K)`` (or ``(n - 1, K, K)``) transition probabilities."""
        return jnp.exp(self.log_trans)

    # -- the base-model protocol (:class:`jaxalign.models.BaseModel`) ----------------
    def reward_law(self, reward, **options):
        """:func:`jaxalign.markov.reward_law` of this chain."""
        return _api().reward_law(self, reward, **options)

    def sampler_stage(self, reward):
        """The token sampler of one sequence: ``draw(key)`` uniforms, ``consume``
        the tokens (``reward=None``) or the reward."""
        return _api()._sample._stage(self, reward)

    def tilt(self, reward, lam) -> MarkovLM:
        """:func:`jaxalign.markov.tilt`."""
        return _api().tilt(self, reward, lam)

    def tilt_summary(self, reward, lam) -> TiltSummary:
        """:func:`jaxalign.markov.tilt_summary`."""
        return _api().tilt_summary(self, reward, lam)

    def lam_for_kl(self, reward, kl_budget) -> Array:
        """:func:`jaxalign.markov.lam_for_kl`."""
        return _api().lam_for_kl(self, reward, kl_budget)

    def max_kl(self, reward) -> Array:
        """:func:`jaxalign.markov.max_kl`."""
        return _api().max_kl(self, reward)

    def limit_reward_per_token(self, reward, delta) -> Array:
        """:func:`jaxalign.markov.limit_reward_per_token`."""
        return _api().limit_reward_per_token(self, reward, delta)

    def optimal_reward(self, reward, kl_budget) -> Array:
        """:func:`jaxalign.markov.optimal_reward` (the finite-n frontier)."""
        return _api().optimal_reward(self, reward, kl_budget)

    def tilt_rates(self, reward, lam) -> TiltSummary:
        """:func:`jaxalign.markov.tilt_rates` (Perron root of ``P_λ``)."""
        return _api().tilt_rates(self, reward, lam)

    def lam_for_kl_rate(self, reward, delta) -> Array:
        """:func:`jaxalign.markov.lam_for_kl_rate`."""
        return _api().lam_for_kl_rate(self, reward, delta)


def _api():
    """The package (its functions live in sibling modules that import this one)."""
    import jaxalign.markov

    return jaxalign.markov


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
