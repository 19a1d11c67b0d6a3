r"""Exact expected gradients of sampled KL penalties, memoryless and Markov (issue 13).

A policy ``q_θ`` and a reference ``p`` over ``n``-token sequences: both memoryless
(``θ`` = logits ``(K,)``, ``p`` a :class:`jaxalign.MemorylessLM`) or both Markov
(``θ`` = ``(init_logits (K,), trans_logits)``, ``p`` a :class:`jaxalign.MarkovLM`,
possibly time-inhomogeneous).  The policy's ``trans_logits`` are ``(K, K)`` (a
homogeneous chain) or ``(n − 1, K, K)`` (time-varying: ``trans_logits[t − 2]``
gives ``q(y_t | y_{t−1})``, the layout of an inhomogeneous ``MarkovLM``), so the
policy class contains the KL-optimal tilt :func:`jaxalign.markov.tilt`, which a
homogeneous chain reaches only for ``n ≤ 2``.  With the log-ratio

.. math::
    \ell_t = \log q(y_t \mid y_{t-1}) - \log p(y_t \mid y_{t-1}), \qquad
    \ell = \sum_t \ell_t, \qquad s_t = \nabla_\theta \log q(y_t \mid y_{t-1}),

and Schulman's estimators of ``KL(q‖p)``, ``k_1 = ℓ``, ``k_2 = ℓ²/2``,
``k_3 = e^{−ℓ} − 1 + ℓ``, an *implementation* of a sampled KL penalty is one cell
of the grid (:class:`Implementation`, :data:`GRID`):

- ``estimator``: ``"k1"``, ``"k2"``, ``"k3"``;
- ``level``: ``"token"`` (``Σ_t k(ℓ_t)``) or ``"sequence"`` (``k(ℓ)``);
- ``placement``: ``"reward"`` (score function, ``k · Σ_t s_t``),
  ``"reward_to_go"`` (token level: ``Σ_t s_t Σ_{u≥t} k(ℓ_u)``) or ``"loss"``
  (``∇_θ k`` with the samples held fixed);
- ``weighting``: ``"on_policy"`` (``y ~ q_θ``), ``"ratio"`` (``y ~ q_old``, the
  penalty weighted by ``w = q_θ/q_old``, per token at the token level and for the
  whole sequence at the sequence level) or ``"clipped"`` (``w`` clipped to
  ``[1 − c, 1 + c]``: ``w̃ = w`` strictly inside, the constant bound outside;
  or, ``clip_form="min"``, PPO's pessimistic ``max(w x, clip(w) x)`` of a penalty
  term ``x``, i.e. ``min(w A, clip(w) A)`` with ``A = −x``).
  A reward is computed at rollout time (from ``q_old``) and held fixed; a loss
  uses ``ℓ`` of ``q_θ``.

:func:`gradient_moments` gives the exact mean and the per-sample covariance of the
gradient estimate of one implementation, by forward recursions over the chain (no
sampling, no enumeration): every estimate is a linear read-out of a feature vector
``v_t`` (cumulative scores, sums of ``k``, ``(1, ℓ, ℓ², e^{−ℓ})``, the product of
the ratios) that evolves linearly, ``v_t = M_t(y_{t−1}, y_t) v_{t−1}``, so its
first and second moments follow the chain in ``O(n K² m³)`` for ``m`` features
(``M_t`` per step: the laws, log-ratios and scores of step ``t``).
:func:`true_gradients` gives ``∇KL(q‖p)`` and ``∇KL(p‖q)`` (autodiff of the forward
recursions of the KLs), :func:`summary` the table (cosine, relative bias,
variance per sample, and which divergence each implementation is the gradient of),
:func:`value_moments` the exact mean and variance of the *values* ``Σ_t k(ℓ_t)`` and
``k(ℓ)`` for every prefix length, and :func:`monte_carlo_gradient` an independent
Monte Carlo estimate (autodiff of each implementation's surrogate loss).

The identities (all exact, at ``θ = θ_old`` for the weighted rows):

- ``k1`` in the reward (with or without reward-to-go) gives ``∇KL(q‖p)``; ``k1``
  as a loss gives ``0``.
- Per-token ``k2`` as a loss gives ``E[Σ_t ℓ_t s_t]``: ``∇KL(q‖p)`` when neither
  model has memory, a *partial* gradient for chains (it drops
  ``Σ_t E[s_t Σ_{u>t} ℓ_u]``, the effect of ``θ`` on the states visited later).
  Sequence-level ``k2`` as a loss gives ``∇KL(q‖p)``.
- Sequence-level ``k3`` as a loss gives ``∇KL(p‖q)`` (per-token: the same for
  memoryless models, partial for chains); sequence-level ``k3`` in the reward
  (per-token too without memory) gives ``∇KL(q‖p) − ∇KL(p‖q)``; ``k2`` in the
  reward is the gradient of no divergence.
- Off-policy, ``∇(w k_3) = w ℓ ∇log q`` and ``∇(w k_2) = w ℓ (1 + ℓ/2) ∇log q``:
  at one step ``w·k3`` (and ``w·k1``) is unbiased for ``∇KL(q‖p)``, ``w·k2`` is
  not (with the whole-sequence ratio this holds at any ``θ_old``: exact
  importance sampling).  With per-token ratios, ``w_t·k3`` gives the per-token
  ``k2`` loss.  Clipping is inactive at ``θ = θ_old`` for ``c > 0``; ``c = 0``
  freezes the weight.

Everything runs in the dtype of the inputs (float64 for exact values); ``p`` must
give every token (transition) a positive probability, or ``ℓ`` is infinite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_key,
    check_positive_int,
    is_concrete,
    prng_jit,
)
from jaxalign.markov._finite import _chain_kl
from jaxalign.markov._model import MarkovLM
from jaxalign.models import MemorylessLM

__all__ = [
    "ESTIMATORS",
    "PLACEMENTS",
    "LEVELS",
    "WEIGHTINGS",
    "GRID",
    "Implementation",
    "GradientMoments",
    "TrueGradients",
    "Summary",
    "ValueMoments",
    "GradientEstimate",
    "divergence_of",
    "gradient_moments",
    "true_gradients",
    "summary",
    "value_moments",
    "monte_carlo_gradient",
]

ESTIMATORS = ("k1", "k2", "k3")
PLACEMENTS = ("reward", "reward_to_go", "loss")
LEVELS = ("token", "sequence")
WEIGHTINGS = ("on_policy", "ratio", "clipped")

# k and its derivative k' as coefficients on the basis (1, x, x², e^{−x}).
_K = {"k1": (0.0, 1.0, 0.0, 0.0), "k2": (0.0, 0.0, 0.5, 0.0),
      "k3": (-1.0, 1.0, 0.0, 1.0)}
_DK = {"k1": (1.0, 0.0, 0.0, 0.0), "k2": (0.0, 1.0, 0.0, 0.0),
       "k3": (1.0, 0.0, 0.0, -1.0)}


class Implementation(NamedTuple):
    """One cell of the grid: how a sampled KL penalty enters the gradient.

    Attributes:
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      placement: ``"reward"``, ``"reward_to_go"`` (token level only) or ``"loss"``.
      level: ``"token"`` or ``"sequence"``.
      weighting: ``"on_policy"``, ``"ratio"`` or ``"clipped"``.

    Examples:
      >>> Implementation("k3", "loss", "sequence").name
      'k3/loss/sequence/on_policy'
    """

    estimator: str
    placement: str
    level: str
    weighting: str = "on_policy"

    @property
    def name(self) -> str:
        """``estimator/placement/level/weighting``."""
        return "/".join(self)


def _grid() -> tuple:
    cells = []
    for weighting in WEIGHTINGS:
        for level in LEVELS:
            for placement in PLACEMENTS:
                if level == "sequence" and placement == "reward_to_go":
                    continue
                for estimator in ESTIMATORS:
                    cells.append(Implementation(estimator, placement, level,
                                                weighting))
    return tuple(cells)


GRID = _grid()
"""Every valid :class:`Implementation` (45: sequence-level reward-to-go is the
reward itself, a sequence-level reward arriving at the last token)."""


class GradientMoments(NamedTuple):
    """Exact moments of one implementation's per-sample gradient estimate ``g(y)``.

    ``D = K`` (memoryless), ``K + K²`` (Markov: the initial logits, then the
    transition logits row by row) or ``K + (n − 1) K²`` (time-varying Markov: the
    initial logits, then each step's transition logits row by row).

    Attributes:
      mean: ``(D,)`` ``E[g]``, the expected update direction of the penalty.
      covariance: ``(D, D)`` ``Cov[g]`` for one sample.
    """

    mean: Array
    covariance: Array


class TrueGradients(NamedTuple):
    """The two KLs between ``q_θ`` and ``p`` and their exact gradients in ``θ``."""

    kl_qp: Array  # KL(q‖p)
    kl_pq: Array  # KL(p‖q)
    grad_kl_qp: Array  # (D,)
    grad_kl_pq: Array  # (D,)


class Summary(NamedTuple):
    """The table of :func:`summary`: one row per implementation.

    Attributes:
      implementations: ``(R,)`` the rows.
      mean: ``(R, D)`` the exact expected gradients.
      covariance: ``(R, D, D)`` their per-sample covariances.
      cosine: ``(R,)`` cosine of ``mean`` with ``∇KL(q‖p)`` (``nan`` where
        ``mean`` vanishes, below ``1e-9`` of ``‖∇KL(q‖p)‖``).
      relative_bias: ``(R,)`` ``‖mean − ∇KL(q‖p)‖ / ‖∇KL(q‖p)‖``.
      variance: ``(R,)`` the trace of the per-sample covariance.
      divergence: ``(R,)`` what ``mean`` is the gradient of (:func:`divergence_of`).
      kl_qp, kl_pq, grad_kl_qp, grad_kl_pq: as in :class:`TrueGradients`.
    """

    implementations: tuple
    mean: Array
    covariance: Array
    cosine: Array
    relative_bias: Array
    variance: Array
    divergence: tuple
    kl_qp: Array
    kl_pq: Array
    grad_kl_qp: Array
    grad_kl_pq: Array


class ValueMoments(NamedTuple):
    """Exact mean and variance under ``q`` of the estimator *values*, for every
    prefix length ``t = 1..n`` (rows ``k1, k2, k3``).

    Attributes:
      length: ``(n,)`` the prefix lengths ``1..n``.
      token_mean, token_variance: ``(3, n)`` of ``Σ_{s≤t} k(ℓ_s)``.
      sequence_mean, sequence_variance: ``(3, n)`` of ``k(Σ_{s≤t} ℓ_s)``.
    """

    length: Array
    token_mean: Array
    token_variance: Array
    sequence_mean: Array
    sequence_variance: Array


class GradientEstimate(NamedTuple):
    """A Monte Carlo estimate of an implementation's expected gradient.

    Attributes:
      mean: ``(D,)`` the sample mean of ``g(y)``.
      stderr: ``(D,)`` its standard errors.
      variance: 0-d, the trace of the sample covariance (per sample).
      num_samples: the sample size (a Python int).
    """

    mean: Array
    stderr: Array
    variance: Array
    num_samples: int


# ------------------------------------------------------------------- validation


def _check_choice(value, name: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _implementation(estimator, placement, level, weighting) -> Implementation:
    impl = Implementation(_check_choice(estimator, "estimator", ESTIMATORS),
                          _check_choice(placement, "placement", PLACEMENTS),
                          _check_choice(level, "level", LEVELS),
                          _check_choice(weighting, "weighting", WEIGHTINGS))
    if level == "sequence" and placement == "reward_to_go":
        raise ValueError(
            "placement='reward_to_go' needs level='token', got level='sequence' (a "
            "sequence-level reward arrives at the last token: its reward-to-go is "
            "the whole reward, placement='reward')")
    return impl


class _Problem(NamedTuple):
    """Everything the recursions need, as arrays (a pytree) + static facts."""

    flat: Array  # (D,) θ
    old: Array  # (D,) θ_old
    lp0: Array  # (K,) log p(y_1)
    lp: Array  # (n - 1, K, K) log p_t(a, b)


def _reference(p):
    if isinstance(p, MemorylessLM):
        lp = p.log_probs
        k = lp.shape[0]
        return lp, jnp.broadcast_to(lp[None, None, :], (p.length - 1, k, k)), False
    if isinstance(p, MarkovLM):
        k = p.num_tokens
        trans = p.log_trans
        if trans.ndim == 2:
            trans = jnp.broadcast_to(trans[None], (p.length - 1, k, k))
        return p.log_init, trans, True
    raise ValueError(f"p must be a MemorylessLM or a MarkovLM, got {type(p).__name__}")


def _flatten(params, k: int, markov: bool, dtype, name: str, length: int) -> Array:
    """``θ`` as one vector: the logits ``(K,)``, or ``init (K,)`` then the
    transition logits row-major (``(K, K)``, or ``(n - 1, K, K)`` step by step)."""
    if markov:
        if isinstance(params, MarkovLM | MemorylessLM) or not isinstance(
                params, tuple | list) or len(params) != 2:
            raise ValueError(
                f"{name} must be a pair (init_logits (K,), trans_logits (K, K) or "
                f"(n - 1, K, K)) with K = {k}, n = {length} for a MarkovLM p, got "
                f"{_describe(params)}")
        init, trans = (jnp.asarray(x) for x in params)
        if init.shape != (k,) or trans.shape not in ((k, k), (length - 1, k, k)):
            raise ValueError(
                f"{name} must be (init_logits (K,), trans_logits (K, K) or "
                f"(n - 1, K, K)) with K = {k} (p's vocabulary) and n = {length} (p's "
                f"length), got shapes {init.shape} and {trans.shape}")
        flat = jnp.concatenate([init.astype(dtype), trans.astype(dtype).ravel()])
    else:
        message = (f"{name} must be logits of shape (K,) = ({k},) for a MemorylessLM "
                   f"p, got {_describe(params)}")
        if isinstance(params, MarkovLM | MemorylessLM):
            raise ValueError(message)
        try:
            flat = jnp.asarray(params)
        except (TypeError, ValueError):
            raise ValueError(message) from None
        if flat.shape != (k,):
            raise ValueError(f"{name} must have shape (K,) = ({k},) (p's vocabulary), "
                             f"got shape {flat.shape}")
        flat = flat.astype(dtype)
    if is_concrete(flat) and not np.all(np.isfinite(np.asarray(flat))):
        raise ValueError(f"{name} must be finite logits, got {np.asarray(flat)}")
    return flat


def _describe(x) -> str:
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of {len(x)} entries"
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__}" + (f" of shape {shape}" if shape is not None else "")


def _problem(params, p, old_params):
    lp0, lp, markov = _reference(p)
    if is_concrete(lp0) and (not np.all(np.isfinite(np.asarray(lp0)))
                             or not np.all(np.isfinite(np.asarray(lp)))):
        raise ValueError(
            "p must give every token and transition a positive probability (the "
            "log-ratio log q - log p is infinite where p = 0 < q), got a zero")
    k = lp0.shape[0]
    flat = _flatten(params, k, markov, lp0.dtype, "params", p.length)
    if old_params is None:
        return _Problem(flat, flat, lp0, lp), markov, p.length
    old = _flatten(old_params, k, markov, lp0.dtype, "old_params", p.length)
    if old.shape != flat.shape:
        raise ValueError(
            f"old_params must have the form of params (both homogeneous, "
            f"trans_logits (K, K), or both time-varying, (n - 1, K, K)), got "
            f"{old.shape[0]} logits for {flat.shape[0]}")
    return _Problem(flat, old, lp0, lp), markov, p.length


def _check_clip(clip, dtype) -> Array:
    if is_concrete(clip):
        arr = np.asarray(clip)
        if arr.shape != () or arr.dtype.kind not in "biuf" or not np.isfinite(arr) \
                or arr < 0:
            raise ValueError(
                f"clip must be a finite real scalar >= 0 (the weight is clipped to "
                f"[1 - clip, 1 + clip]), got {clip!r}")
    return jnp.asarray(clip).astype(dtype)


def _at_old(problem: _Problem) -> bool:
    """Whether θ = θ_old (True when it cannot be told: traced values)."""
    if problem.old is problem.flat:
        return True
    if not (is_concrete(problem.old) and is_concrete(problem.flat)):
        return True
    return bool(np.array_equal(np.asarray(problem.old), np.asarray(problem.flat)))


# --------------------------------------------------------------------- the policy


def _chain(flat: Array, k: int, markov: bool, length: int) -> MarkovLM:
    """The policy ``θ`` as a chain: ``(K, K)`` transitions when ``θ`` holds one
    matrix (homogeneous; for a memoryless policy every row is its law), or
    ``(n − 1, K, K)`` (time-varying; the number of slices is read from ``θ``'s
    size)."""
    if markov:
        slices = (flat.shape[0] - k) // (k * k)
        trans = jax.nn.log_softmax(flat[k:].reshape(slices, k, k), axis=-1)
        init = jax.nn.log_softmax(flat[:k])
        return MarkovLM.unchecked(init, trans[0] if slices == 1 else trans, length)
    lq = jax.nn.log_softmax(flat)
    return MarkovLM.unchecked(lq, jnp.broadcast_to(lq, (k, k)), length)


def _tables(flat: Array, k: int, markov: bool, length: int):
    """``(log q(y_1) (K,), log q_t(b | a) (n - 1, K, K))`` of the policy ``θ``: one
    transition matrix per step, whether ``θ`` holds one (homogeneous, repeated) or
    ``n − 1`` (time-varying)."""
    chain = _chain(flat, k, markov, length)
    return chain.log_init, jnp.broadcast_to(chain.log_trans, (length - 1, k, k))


def _per_token(lq0: Array, lq: Array, y: Array) -> Array:
    """``(..., n)`` ``log q(y_1), log q_t(y_t | y_{t−1})`` of sequences ``y (..., n)``
    under a chain given as ``(log init (K,), log steps (n − 1, K, K))``."""
    steps = jnp.arange(y.shape[-1] - 1)
    return jnp.concatenate([lq0[y[..., :1]], lq[steps, y[..., :-1], y[..., 1:]]],
                           axis=-1)


def _scores(flat: Array, k: int, markov: bool, length: int):
    """``(s_1 (K, D), s (n − 1, K, K, D))``: ``∇_θ log q`` of the first token and of
    each step."""
    return jax.jacfwd(lambda f: _tables(f, k, markov, length))(flat)


# ------------------------------------------------- linear features on the chain
# Each feature process is a vector v_t with v_t = M(y_{t-1}, y_t) v_{t-1}; the
# builders take per-transition data with any leading batch shape (K,) or (K, K).


def _add(x: Array) -> Array:
    """``(1, X)`` with ``X += x``."""
    one, zero = jnp.ones_like(x), jnp.zeros_like(x)
    return jnp.stack([jnp.stack([one, zero], -1), jnp.stack([x, one], -1)], -2)


def _blocks(rows: list) -> Array:
    """A block matrix from a list of rows of ``(..., r, c)`` blocks."""
    return jnp.concatenate([jnp.concatenate(r, -1) for r in rows], -2)


def _add_vector(s: Array) -> Array:
    """``(1, S)`` with ``S += s`` (``s (..., D)``)."""
    batch, d = s.shape[:-1], s.shape[-1]
    one = jnp.ones(batch + (1, 1), s.dtype)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=s.dtype), batch + (d, d))
    return _blocks([[one, jnp.zeros(batch + (1, d), s.dtype)], [s[..., None], eye]])


def _reward_to_go(s: Array, k: Array) -> Array:
    """``(1, C, G)`` with ``C += s``, ``G += k C`` (so ``G = Σ_t s_t Σ_{u≥t} k_u``)."""
    batch, d = s.shape[:-1], s.shape[-1]
    one = jnp.ones(batch + (1, 1), s.dtype)
    row = jnp.zeros(batch + (1, d), s.dtype)
    zero = jnp.zeros(batch + (d, d), s.dtype)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=s.dtype), batch + (d, d))
    return _blocks([[one, row, row], [s[..., None], eye, zero],
                    [(k[..., None] * s)[..., None], k[..., None, None] * eye, eye]])


def _powers(x: Array) -> Array:
    """``(1, ℓ, ℓ², e^{−ℓ})`` with ``ℓ += x``."""
    one, zero, e = jnp.ones_like(x), jnp.zeros_like(x), jnp.exp(-x)
    rows = [[one, zero, zero, zero], [x, one, zero, zero], [x * x, 2 * x, one, zero],
            [zero, zero, zero, e]]
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def _kron(a: Array, b: Array) -> Array:
    ma, mb = a.shape[-1], b.shape[-1]
    out = jnp.einsum("...ij,...kl->...ikjl", a, b)
    return out.reshape(out.shape[:-4] + (ma * mb, ma * mb))


def _basis(x: Array) -> Array:
    return jnp.stack([jnp.ones_like(x), x, x * x, jnp.exp(-x)], -1)


_STRUCTURES = ("token_reward", "token_reward_to_go", "token_loss", "sequence")


def _structure(impl: Implementation) -> str:
    if impl.level == "sequence":
        return "sequence"
    return {"reward": "token_reward", "reward_to_go": "token_reward_to_go",
            "loss": "token_loss"}[impl.placement]


def _size(structure: str, d: int) -> int:
    return {"token_reward": 2 * (d + 1), "token_reward_to_go": 2 * d + 1,
            "token_loss": d + 1, "sequence": 4 * (d + 1)}[structure]


def _start(structure: str, d: int, dtype) -> Array:
    v = np.zeros(_size(structure, d))
    v[0] = 1.0
    if structure == "sequence":
        v[3] = 1.0  # e^{−ℓ} = 1 at ℓ = 0
    return jnp.asarray(v, dtype)


def _readout(structure: str, d: int, coef: Array) -> Array:
    """``(D, m)``: the estimate ``g = R v_n``."""
    rows = np.arange(d)
    if structure == "sequence":
        pick = np.zeros((d, d + 1))
        pick[rows, 1 + rows] = 1.0
        weights = jnp.asarray(pick, coef.dtype)[:, :, None] * coef[None, None, :]
        return weights.reshape(d, 4 * (d + 1))
    out = np.zeros((d, _size(structure, d)))
    first = {"token_loss": 1 + rows, "token_reward": 2 * (1 + rows) + 1,
             "token_reward_to_go": d + 1 + rows}[structure]
    out[rows, first] = 1.0
    return jnp.asarray(out, coef.dtype)


class _Cell(NamedTuple):
    """Per-implementation arrays (a pytree; vmapped over rows of one structure)."""

    use_old_law: Array  # 0-d: 1 samples from q_old, 0 from q_θ
    k_from_old: Array  # 0-d: 1 evaluates k at ℓ of q_old (rewards), 0 at ℓ of q_θ
    c: Array  # (4,) k on the basis
    dc: Array  # (4,) k' on the basis
    mode: Array  # 0-d: 0 on-policy, 1 ratio, 2 clipped
    reward: Array  # 0-d: 1 for a reward placement
    clip: Array  # 0-d
    min_form: Array  # 0-d: 1 for PPO's max(w x, clip(w) x) (clip_form="min")


def _cell(impl: Implementation, clip: Array, min_form=False) -> _Cell:
    dtype = clip.dtype
    def f(v): return jnp.asarray(v, dtype)
    reward = impl.placement != "loss"
    return _Cell(f(impl.weighting != "on_policy"), f(reward), f(_K[impl.estimator]),
                 f(_DK[impl.estimator]), f(WEIGHTINGS.index(impl.weighting)),
                 f(reward), clip, f(min_form))


def _step_data(cell: _Cell, lq_th, lq_old, lp):
    """Per-transition ``(law, x, dw, w̃, w)`` of one step: the sampling law, the
    log-ratio ``k`` is evaluated at, the weight's derivative factor ``ι w``, the
    (clipped) weight and the ratio."""
    old = cell.use_old_law
    lq_law = old * lq_old + (1 - old) * lq_th
    x_law, x_th = lq_law - lp, lq_th - lp
    x = cell.k_from_old * x_law + (1 - cell.k_from_old) * x_th
    w = jnp.exp(lq_th - lq_law)
    bound = jnp.clip(w, 1 - cell.clip, 1 + cell.clip)
    # ι: whether the weight w (not its constant bound) multiplies the penalty x.
    # Clip form: w inside (1 − c, 1 + c).  Min form: max(w x, clip(w) x) takes w
    # x where w x ≥ clip(w) x, by the sign of x: a reward's (reward-to-go) sum
    # counts as >= 0 (exact for k2, k3; for k1 only at θ = θ_old, where w = 1 =
    # clip(w) and the tie goes to w x), a loss's k(ℓ_t) is per token.
    sign = jnp.where(cell.reward > 0, 1.0, _basis(x_th) @ cell.c)
    inside = jnp.where(cell.min_form > 0, w * sign >= bound * sign,
                       (w > 1 - cell.clip) & (w < 1 + cell.clip)).astype(w.dtype)
    w_clip = jnp.where(inside > 0, w, bound)
    on, ratio = (cell.mode == 0).astype(w.dtype), (cell.mode == 1).astype(w.dtype)
    clipped = 1 - on - ratio
    # The derivative factor of the weight (ι w) and the weight itself (w̃): on
    # policy a reward has the score function (factor 1), a loss no weight at all.
    dw = on * cell.reward + ratio * w + clipped * inside * w
    wt = on + ratio * w + clipped * w_clip
    return jnp.exp(lq_law), x, dw, wt, w


def _matrices(structure: str, cell: _Cell, x, s, dw, wt, w):
    basis = _basis(x)
    k, dk = basis @ cell.c, basis @ cell.dc
    if structure == "token_loss":
        return _add_vector((dw * k + wt * dk)[..., None] * s)
    if structure == "token_reward":
        return _kron(_add_vector(dw[..., None] * s), _add(k))
    if structure == "token_reward_to_go":
        return _reward_to_go(dw[..., None] * s, k)
    # sequence: the product of the ratios (1 on policy), S, and (1, ℓ, ℓ², e^{−ℓ})
    mult = jnp.where(cell.mode == 1, w, jnp.ones_like(w))
    return _kron(_kron(mult[..., None, None], _add_vector(s)), _powers(x))


def _sequence_coef(cell: _Cell) -> Array:
    """``α c + β c'``: ``g = W S (α k + β k')`` at the sequence level."""
    on = cell.mode == 0
    active = (cell.mode == 1) | ((cell.mode == 2) & ((cell.clip > 0)
                                                     | (cell.min_form > 0)))
    act = active.astype(cell.c.dtype)
    alpha = jnp.where(cell.reward > 0, jnp.where(on, 1.0, act),
                      jnp.where(on, 0.0, act))
    beta = jnp.where(cell.reward > 0, 0.0, 1.0)
    return alpha * cell.c + beta * cell.dc


def _moments_impl(problem: _Problem, cell: _Cell, structure: str, k: int,
                  markov: bool, length: int, covariance: bool = True):
    lq0_th, lq_th = _tables(problem.flat, k, markov, length)
    lq0_old, lq_old = _tables(problem.old, k, markov, length)
    s0, s = _scores(problem.flat, k, markov, length)
    d = s.shape[-1]
    law0, x0, dw0, wt0, w0 = _step_data(cell, lq0_th, lq0_old, problem.lp0)
    v0 = _start(structure, d, s.dtype)
    m0 = _matrices(structure, cell, x0, s0, dw0, wt0, w0)
    u = jnp.einsum("kij,j->ki", m0, v0)
    mean = law0[:, None] * u
    # Without the covariance (training), the second moments are not carried.
    second = (law0[:, None, None] * u[:, :, None] * u[:, None, :] if covariance
              else jnp.zeros((), u.dtype))

    def body(carry, step):
        mean, second = carry
        lq_th_t, lq_old_t, s_t, lp = step
        law, x, dw, wt, w = _step_data(cell, lq_th_t, lq_old_t, lp)
        m = _matrices(structure, cell, x, s_t, dw, wt, w)
        mean = jnp.einsum("ab,abij,aj->bi", law, m, mean)
        if covariance:
            t = jnp.einsum("abij,ajk->abik", m, second)
            second = jnp.einsum("ab,abik,ablk->bil", law, t, m)
        return (mean, second), None

    (mean, second), _ = jax.lax.scan(body, (mean, second),
                                     (lq_th, lq_old, s, problem.lp))
    readout = _readout(structure, d, _sequence_coef(cell))
    g = readout @ jnp.sum(mean, axis=0)
    if not covariance:
        return g, None
    gg = readout @ jnp.sum(second, axis=0) @ readout.T
    return g, gg - g[:, None] * g[None, :]


def _structure_rows(problem: _Problem, clip: Array, min_form: Array, structure: str,
                    k: int, markov: bool, length: int):
    """``(R, D)`` means and ``(R, D, D)`` covariances of every :data:`GRID` row of
    one structure, vmapped."""
    impls = [impl for impl in GRID if _structure(impl) == structure]
    cells = jax.tree.map(lambda *xs: jnp.stack(xs),
                         *[_cell(i, clip, min_form) for i in impls])
    return jax.vmap(lambda c: _moments_impl(problem, c, structure, k, markov,
                                            length))(cells)


_one_jit = jax.jit(_moments_impl, static_argnames=("structure", "k", "markov",
                                                    "length"))


def _grid_impl(problem: _Problem, clip: Array, min_form: Array, k: int, markov: bool,
               length: int, structures: tuple):
    # Every GRID row of the structures asked for, and the true gradients, in one
    # program: one compilation per model shape and set of structures.  Off θ_old
    # the sequence-level clipped rows are not meaningful and :func:`summary`
    # refuses to return them.
    rows = {st: _structure_rows(problem, clip, min_form, st, k, markov, length)
            for st in structures}
    return rows, _true_impl(problem, k, markov, length)


CLIP_FORMS = ("clip", "min")


def _check_sequence_clip(impl: Implementation, problem: _Problem,
                         clip_form: str = "clip") -> None:
    if impl.weighting != "clipped" or _at_old(problem):
        return
    if impl.level == "sequence":
        # The clip of W = Π_t w_t keeps or drops the whole sequence's term: its
        # expectation needs the joint law of (W, ℓ, S), not a linear feature of the
        # chain; only a sum over all K^n sequences gives it.
        raise ValueError(
            "weighting='clipped' at level='sequence' needs old_params equal to params "
            "(θ = θ_old) for exact values: the clip of the sequence ratio has no "
            "forward-backward form; use monte_carlo_gradient, or weighting='ratio'")
    if clip_form == "min" and impl.estimator == "k1" and impl.placement != "loss":
        raise ValueError(
            "clip_form='min' with estimator='k1' in a reward needs old_params equal "
            "to params (θ = θ_old) for exact values: PPO's max(w x, clip(w) x) picks "
            "its branch by the sign of the (reward-to-go) sum of k1 = ℓ, which the "
            "forward recursion does not carry; use monte_carlo_gradient, or "
            "estimator='k2' or 'k3' (sums >= 0)")


def gradient_moments(params, p, estimator: str = "k1", placement: str = "reward",
                     level: str = "token", weighting: str = "on_policy", *,
                     old_params=None, clip: ArrayLike = 0.2,
                     clip_form: str = "clip") -> GradientMoments:
    r"""Exact mean and per-sample covariance of one implementation's gradient.

    The per-sample estimate ``g(y)`` (``ι = 1{1 − c < w < 1 + c}``, ``w̃`` the
    clipped weight, ``S = Σ_t s_t``, ``k_t = k(ℓ_t)``):

    .. math::
        \text{token reward:}\ g = \sum_t \iota_t w_t s_t \sum_u k_u, \quad
        \text{reward-to-go:}\ g = \sum_t \iota_t w_t s_t \sum_{u \ge t} k_u, \quad
        \text{token loss:}\ g = \sum_t (\iota_t w_t k_t + \tilde w_t k'_t)\, s_t,

    at the sequence level ``g = ι w k(ℓ) S`` (reward) and
    ``g = (ι w k(ℓ) + w̃ k'(ℓ)) S`` (loss).  On policy ``w = 1``, a reward keeps
    its score function and a loss has no weight: ``g = Σ_t k'(ℓ_t) s_t`` or
    ``k'(ℓ) S``.  Rewards use ``ℓ`` of the sampling policy, losses ``ℓ`` of
    ``q_θ``.  ``E[g]`` and ``Cov[g]`` are exact sums over all ``K^n`` sequences
    by forward recursions of the moments of linear features (module docstring).

    Args:
      params: the policy: logits ``(K,)`` for a memoryless ``p``, or the pair
        ``(init_logits (K,), trans_logits)`` for a Markov ``p``, ``trans_logits``
        ``(K, K)`` (homogeneous) or ``(n − 1, K, K)`` (time-varying, step by
        step).
      p: the reference, a :class:`jaxalign.MemorylessLM` or
        :class:`jaxalign.MarkovLM` (every probability > 0); its ``length`` is
        ``n``.
      estimator, placement, level, weighting: the implementation (module
        docstring); ``placement="reward_to_go"`` needs ``level="token"``.
      old_params: the sampling policy ``θ_old`` of the weighted rows (default
        ``θ``: the first step of an update), of the form of ``params``; ignored on
        policy.  At the sequence level with ``weighting="clipped"`` it must equal
        ``params``.
      clip: ``c >= 0``, the clip range of ``weighting="clipped"``.
      clip_form: how ``weighting="clipped"`` weights a penalty term ``x`` (the
        reward's ``Σ k`` or reward-to-go, or a loss's ``k``), with ``w`` the ratio:
        ``"clip"``, ``w̃ x`` (``w̃ = w`` inside ``(1 − c, 1 + c)``, the bound
        outside: ``ι = 1{1 − c < w < 1 + c}``); ``"min"``, PPO's pessimistic
        ``max(w x, clip(w, 1 − c, 1 + c) x)``, i.e. PPO's
        ``min(w A, clip(w) A)`` with the advantage ``A = −x`` of a cost, the
        branch ``w x`` where ``w x >= clip(w) x`` (ties included), so
        ``ι = 1{w ≥ 1 − c}`` where ``x ≥ 0`` and ``1{w ≤ 1 + c}`` where
        ``x < 0``, and ``w̃ = w`` where ``ι = 1``.  Exact off ``θ_old`` except
        for ``k1`` in a reward (the sign of its sum is not carried; refused).

    Returns:
      A :class:`GradientMoments` with ``mean (D,)`` and ``covariance (D, D)``
      (``D = K``; ``K + K²`` for Markov, or ``K + (n − 1) K²`` time-varying,
      transition logits row-major).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> p = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=3)
      >>> g = gradient_moments(jnp.array([0.4, 0.0]), p, "k1", "loss")
      >>> [round(abs(float(v)), 12) for v in g.mean]  # k1 as a loss: no gradient
      [0.0, 0.0]
    """
    impl = _implementation(estimator, placement, level, weighting)
    problem, markov, length = _problem(params, p, old_params)
    clip = _check_clip(clip, problem.lp0.dtype)
    _check_choice(clip_form, "clip_form", CLIP_FORMS)
    _check_sequence_clip(impl, problem, clip_form)
    mean, cov = _one_jit(problem, _cell(impl, clip, clip_form == "min"),
                         _structure(impl), problem.lp0.shape[0], markov, length)
    return GradientMoments(mean, cov)


# ------------------------------------------------------------ true gradients


def _true_impl(problem: _Problem, k: int, markov: bool, length: int):
    def kls(flat):
        lq0, lq = _tables(flat, k, markov, length)
        return jnp.stack([_chain_kl(lq0, lq, problem.lp0, problem.lp, length),
                          _chain_kl(problem.lp0, problem.lp, lq0, lq, length)])

    values = kls(problem.flat)
    grads = jax.jacrev(kls)(problem.flat)
    return TrueGradients(values[0], values[1], grads[0], grads[1])


_true_jit = jax.jit(_true_impl, static_argnames=("k", "markov", "length"))
_grid_jit = jax.jit(_grid_impl, static_argnames=("k", "markov", "length",
                                                  "structures"))


def true_gradients(params, p) -> TrueGradients:
    r"""``KL(q_θ‖p)``, ``KL(p‖q_θ)`` and their exact gradients in ``θ``.

    .. math::
        \mathrm{KL}(Q\|P) = \mathrm{KL}(q_1\|p_1) + \sum_{t=2}^n \sum_a
        Q(y_{t-1} = a)\, \mathrm{KL}(Q(a, \cdot)\|P_t(a, \cdot)),

    by forward recursions of the marginals (:func:`jaxalign.markov.chain_kl`'s),
    differentiated by autodiff.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> p = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=2)
      >>> t = true_gradients(jnp.zeros(2), p)  # q = p
      >>> float(t.kl_qp), float(t.kl_pq), [float(v) for v in t.grad_kl_qp]
      (0.0, 0.0, [0.0, 0.0])
      >>> chain = jaxalign.MarkovLM.from_probs([0.5, 0.5], [[0.8, 0.2], [0.3, 0.7]],
      ...                                      length=3)
      >>> phi = jaxalign.markov.tilt(chain, jaxalign.LinearReward([0.0, 1.0]), 1.0)
      >>> t = true_gradients((phi.log_init, phi.log_trans), chain)  # time-varying
      >>> phi.log_trans.shape, t.grad_kl_qp.shape  # D = K + (n - 1) K^2
      ((2, 2, 2), (10,))
    """
    problem, markov, length = _problem(params, p, None)
    return _true_jit(problem, problem.lp0.shape[0], markov, length)


# ---------------------------------------------------------------------- labels


def divergence_of(implementation: Implementation, *, markov: bool,
                  clip: float = 0.2, at_old: bool = True,
                  clip_form: str = "clip") -> str:
    r"""What an implementation's expected gradient is the gradient of (the
    identities of the module docstring; ``at_old``: ``θ = θ_old``).

    One of ``"KL(q||p)"``, ``"KL(p||q)"``, ``"KL(q||p) - KL(p||q)"``, ``"0"``,
    ``"partial KL(q||p)"`` (``E[Σ_t ℓ_t s_t]``, the per-step KL gradients with the
    visited states frozen), ``"partial KL(p||q)"`` (``−E[Σ_t e^{−ℓ_t} s_t]``),
    ``"none"``, or ``"n/a (theta != theta_old)"`` for weighted rows off ``θ_old``
    (except the sequence-level ratio in a loss, ``E_old[∇(w k(ℓ))] = ∇E_q[k(ℓ)]``
    at any ``θ_old``).

    Examples:
      >>> divergence_of(Implementation("k2", "loss", "token"), markov=True)
      'partial KL(q||p)'
      >>> divergence_of(Implementation("k3", "loss", "sequence"), markov=True)
      'KL(p||q)'
    """
    est, place, level, weighting = _implementation(*implementation)
    # at θ_old the min form's tie w x = clip(w) x goes to w x: the ratio, any c
    frozen = weighting == "clipped" and clip == 0 and _check_choice(
        clip_form, "clip_form", CLIP_FORMS) == "clip"
    # E_old[∇(w k(ℓ_θ))] = ∇ E_θ[k(ℓ_θ)] for the whole-sequence ratio: exact
    # importance sampling, at any θ_old.
    exact_is = weighting == "ratio" and level == "sequence" and place == "loss"
    if weighting != "on_policy" and not at_old and not exact_is:
        return "n/a (theta != theta_old)"
    token_markov = level == "token" and markov
    if place != "loss":
        if frozen:
            return "0"
        if est == "k1":
            return "KL(q||p)"
        if est == "k2" or token_markov:
            return "none"
        return "KL(q||p) - KL(p||q)"
    active = weighting == "ratio" or (weighting == "clipped" and not frozen)
    if active:  # the gradient of w k is (k + k') s at w = 1
        if est == "k2":
            return "none"
        return "partial KL(q||p)" if token_markov else "KL(q||p)"
    if est == "k1":
        return "0"
    if est == "k2":
        return "partial KL(q||p)" if token_markov else "KL(q||p)"
    return "partial KL(p||q)" if token_markov else "KL(p||q)"


def summary(params, p, *, old_params=None, clip: ArrayLike = 0.2,
            implementations=GRID, clip_form: str = "clip") -> Summary:
    r"""The table of every implementation against ``∇KL(q‖p)``.

    Per row: the exact expected gradient ``g``, ``cos(g, ∇KL(q‖p))``, the relative
    bias ``‖g − ∇KL(q‖p)‖ / ‖∇KL(q‖p)‖``, the variance per sample
    ``tr Cov[g(y)]`` (divide by the batch size for a batch mean) and the divergence
    ``g`` is the gradient of (:func:`divergence_of`).

    Args:
      params, p, old_params, clip, clip_form: as in :func:`gradient_moments`.
      implementations: the rows (default :data:`GRID`); sequence-level clipped
        rows (and with ``clip_form="min"`` the clipped ``k1`` rewards) need
        ``old_params`` equal to ``params``.

    Returns:
      A :class:`Summary`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> p = jaxalign.MarkovLM.from_probs([0.5, 0.5], [[0.8, 0.2], [0.3, 0.7]],
      ...                                  length=3)
      >>> params = (jnp.zeros(2), jnp.zeros((2, 2)))
      >>> rows = [Implementation("k1", "reward_to_go", "token")]
      >>> s = summary(params, p, implementations=rows)
      >>> round(float(s.relative_bias[0]), 12), s.divergence[0]
      (0.0, 'KL(q||p)')
    """
    problem, markov, length = _problem(params, p, old_params)
    clip = _check_clip(clip, problem.lp0.dtype)
    _check_choice(clip_form, "clip_form", CLIP_FORMS)
    impls = tuple(_implementation(*impl) for impl in implementations)
    if not impls:
        raise ValueError("implementations must not be empty")
    for impl in impls:
        _check_sequence_clip(impl, problem, clip_form)
    k = problem.lp0.shape[0]
    structures = tuple(st for st in _STRUCTURES
                       if any(_structure(impl) == st for impl in impls))
    rows, true = _grid_jit(problem, clip, jnp.asarray(clip_form == "min", clip.dtype),
                           k, markov, length, structures)
    order = {st: [i for i in GRID if _structure(i) == st] for st in structures}
    picked = [(rows[_structure(impl)], order[_structure(impl)].index(impl))
              for impl in impls]
    means = jnp.stack([r[0][j] for r, j in picked])
    covs = jnp.stack([r[1][j] for r, j in picked])
    ref = true.grad_kl_qp
    ref_norm = jnp.linalg.norm(ref)
    norms = jnp.linalg.norm(means, axis=1)
    vanishes = norms <= 1e-9 * ref_norm
    cosine = jnp.where(vanishes | (ref_norm == 0), jnp.nan,
                       (means @ ref) / jnp.where(vanishes, 1.0, norms * ref_norm))
    bias = jnp.linalg.norm(means - ref[None, :], axis=1) / ref_norm
    variance = jnp.trace(covs, axis1=1, axis2=2)
    at_old = _at_old(problem)
    labels = tuple(divergence_of(impl, markov=markov, clip=float(clip), at_old=at_old,
                                 clip_form=clip_form) for impl in impls)
    return Summary(impls, means, covs, cosine, bias, variance, labels, true.kl_qp,
                   true.kl_pq, true.grad_kl_qp, true.grad_kl_pq)


# ------------------------------------------------------------ values of k


def _values_impl(problem: _Problem, k: int, markov: bool, length: int):
    lq0, lq = _tables(problem.flat, k, markov, length)
    c = jnp.asarray([_K[e] for e in ESTIMATORS], lq.dtype)  # (3, 4)

    def matrices(x):
        basis = _basis(x)
        return _add_vector(basis @ c.T), _powers(x)

    def moments(law, mats, mean, second):
        mean = jnp.einsum("ab,abij,aj->bi", law, mats, mean)
        t = jnp.einsum("abij,ajk->abik", mats, second)
        return mean, jnp.einsum("ab,abik,ablk->bil", law, t, mats)

    def read(mean_t, second_t, mean_s, second_s):
        mt, st = jnp.sum(mean_t, 0), jnp.sum(second_t, 0)
        ms, ss = jnp.sum(mean_s, 0), jnp.sum(second_s, 0)
        token_mean = mt[1:]
        token_var = jnp.diagonal(st)[1:] - token_mean**2
        seq_mean = c @ ms
        seq_var = jnp.einsum("ri,ij,rj->r", c, ss, c) - seq_mean**2
        return token_mean, token_var, seq_mean, seq_var

    mt0, ms0 = matrices(lq0 - problem.lp0)
    vt0 = jnp.zeros(4, lq.dtype).at[0].set(1.0)
    vs0 = jnp.asarray([1.0, 0.0, 0.0, 1.0], lq.dtype)
    q0 = jnp.exp(lq0)
    ut, us = jnp.einsum("kij,j->ki", mt0, vt0), jnp.einsum("kij,j->ki", ms0, vs0)
    carry = (q0[:, None] * ut, q0[:, None, None] * ut[:, :, None] * ut[:, None, :],
             q0[:, None] * us, q0[:, None, None] * us[:, :, None] * us[:, None, :])
    def body(carry, step):
        mt, st, ms, ss = carry
        lq_t, lp = step
        law = jnp.exp(lq_t)
        a, b = matrices(lq_t - lp)
        mt, st = moments(law, a, mt, st)
        ms, ss = moments(law, b, ms, ss)
        carry = (mt, st, ms, ss)
        return carry, read(*carry)

    _, rest = jax.lax.scan(body, carry, (lq, problem.lp))
    first = read(*carry)
    return tuple(jnp.concatenate([f[:, None], r.T], axis=1)
                 for f, r in zip(first, rest, strict=True))


_values_jit = jax.jit(_values_impl, static_argnames=("k", "markov", "length"))


def value_moments(params, p) -> ValueMoments:
    r"""Exact mean and variance under ``q_θ`` of ``Σ_{s≤t} k(ℓ_s)`` and
    ``k(Σ_{s≤t} ℓ_s)`` for every prefix length ``t = 1..n``.

    Token-summed values add ``n`` per-token terms: their variance grows about
    linearly in ``n``.  The sequence-level ``k3 = e^{−ℓ} − 1 + ℓ`` has
    ``E_q e^{−2ℓ} = Σ_y p(y)²/q(y)``, which grows exponentially in ``n``
    (``(Σ_x p(x)²/q(x))^n`` for memoryless models).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> p = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=3)
      >>> v = value_moments(jnp.array([jnp.log(3.0), 0.0]), p)  # q = (3/4, 1/4)
      >>> [round(float(x), 6) for x in v.sequence_mean[2]]  # E k3 = KL = t KL_1
      [0.130812, 0.261624, 0.392436]
    """
    problem, markov, length = _problem(params, p, None)
    out = _values_jit(problem, problem.lp0.shape[0], markov, length)
    return ValueMoments(jnp.arange(1, length + 1), *out)


# ------------------------------------------------------------------ Monte Carlo


def _surrogate(flat, y, problem: _Problem, cell: _Cell, token: Array,
               to_go: Array, k: int, markov: bool):
    """The loss an RL code differentiates for one sequence ``y`` (its gradient is
    the per-sample estimate ``g(y)``), the implementation given as data."""
    sg = jax.lax.stop_gradient

    def per_token(f):
        return _per_token(*_tables(f, k, markov, y.shape[0]), y)

    lp = _per_token(problem.lp0, problem.lp, y)
    on, clipped = cell.mode == 0, cell.mode == 2
    lq_th = per_token(flat)
    lq_law = jnp.where(on, sg(lq_th), per_token(problem.old))

    def weigh(log_w, x):
        """``x`` times the ratio ``w = exp(log q_θ − stop_gradient(log q_old))``;
        clipped: ``w̃ x`` or PPO's ``max(w x, clip(w) x)`` (``clip_form``)."""
        w = jnp.exp(log_w)
        bound = jnp.clip(sg(w), 1 - cell.clip, 1 + cell.clip)
        inside = (w > 1 - cell.clip) & (w < 1 + cell.clip)
        clip_form = jnp.where(inside, w, bound) * x
        min_form = jnp.where(w * sg(x) >= bound * sg(x), w * x, bound * x)
        return jnp.where(clipped, jnp.where(cell.min_form > 0, min_form, clip_form),
                         w * x)

    def k_of(x):
        return _basis(x) @ cell.c

    k_law = sg(k_of(lq_law - lp))
    ret = jnp.where(to_go, jnp.cumsum(k_law[::-1])[::-1], jnp.sum(k_law))
    token_reward = jnp.sum(weigh(lq_th - lq_law, ret))
    k_tok = k_of(lq_th - lp)
    token_loss = jnp.sum(jnp.where(on, k_tok, weigh(lq_th - lq_law, k_tok)))
    log_w_seq = jnp.sum(lq_th - lq_law)
    seq_reward = weigh(log_w_seq, sg(k_of(jnp.sum(lq_law - lp))))
    k_seq = k_of(jnp.sum(lq_th - lp))
    seq_loss = jnp.where(on, k_seq, weigh(log_w_seq, k_seq))
    reward = cell.reward > 0
    return jnp.where(token, jnp.where(reward, token_reward, token_loss),
                     jnp.where(reward, seq_reward, seq_loss))


def _sampler(flat: Array, k: int, markov: bool, length: int):
    """``draw(key) -> (n,)`` tokens of the policy ``θ``: the library's chain sampler
    (the stage of :func:`jaxalign.markov.sample`: ``n`` 32-bit words per
    sequence, alias tables for homogeneous chains with ``K <= 64``, else inverse
    CDFs per step), its tables built once (outside the caller's loops when
    traced)."""
    from jaxalign.markov._sample import _stage

    stage = _stage(_chain(flat, k, markov, length), None)
    return lambda key: stage.consume(stage.draw(key))


@prng_jit("k", "markov", "length", "num_samples")
def _mc_impl(key, problem, cell, token, to_go, k, markov, length, num_samples):
    law = jnp.where(cell.mode == 0, problem.flat, problem.old)
    draw = _sampler(law, k, markov, length)

    def one(i):
        y = draw(jax.random.fold_in(key, i))
        return jax.grad(_surrogate)(problem.flat, y, problem, cell, token, to_go, k,
                                    markov)

    # Chunks of one size (the last one padded and masked): one compiled body.
    chunk = min(num_samples, 1024)
    num_chunks = -(-num_samples // chunk)
    idx = jnp.arange(num_chunks * chunk).reshape(num_chunks, chunk)
    g = jax.lax.map(jax.vmap(one), idx).reshape(num_chunks * chunk, -1)
    valid = (idx.reshape(-1) < num_samples)[:, None]
    mean = jnp.sum(jnp.where(valid, g, 0.0), axis=0) / num_samples
    var = jnp.sum(jnp.where(valid, (g - mean[None, :]) ** 2, 0.0),
                  axis=0) / (num_samples - 1)
    return mean, jnp.sqrt(var / num_samples), jnp.sum(var)


def monte_carlo_gradient(key: PRNGKey, params, p, estimator: str = "k1",
                         placement: str = "reward", level: str = "token",
                         weighting: str = "on_policy", *, old_params=None,
                         clip: ArrayLike = 0.2, clip_form: str = "clip",
                         num_samples: int = 4096) -> GradientEstimate:
    r"""Monte Carlo estimate of an implementation's expected gradient.

    Sample ``i`` draws ``y ~ q_θ`` (on policy) or ``y ~ q_old`` from the key
    ``fold_in(key, i)`` and differentiates the implementation's surrogate loss
    with ``jax.grad``, as an RL code does (rewards under ``stop_gradient``, the
    ratio ``exp(log q_θ − stop_gradient(log q_old))``): an independent route to
    :func:`gradient_moments`.  Unlike the exact function it accepts sequence-level
    clipping off ``θ_old``.

    Args:
      key: typed PRNG key.
      params, p, estimator, placement, level, weighting, old_params, clip,
        clip_form: as in :func:`gradient_moments` (every cell, off ``θ_old`` too).
      num_samples: sample size ``>= 2``.

    Returns:
      A :class:`GradientEstimate`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxalign
      >>> p = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=2)
      >>> est = monte_carlo_gradient(jax.random.key(0), jnp.zeros(2), p, "k1",
      ...                            "loss", num_samples=8)
      >>> est.mean.shape, est.num_samples
      ((2,), 8)
    """
    check_key(key)
    impl = _implementation(estimator, placement, level, weighting)
    num_samples = check_positive_int(num_samples, "num_samples", minimum=2)
    problem, markov, length = _problem(params, p, old_params)
    clip = _check_clip(clip, problem.lp0.dtype)
    _check_choice(clip_form, "clip_form", CLIP_FORMS)
    mean, stderr, var = _mc_impl(key, problem, _cell(impl, clip, clip_form == "min"),
                                 jnp.asarray(impl.level == "token"),
                                 jnp.asarray(impl.placement == "reward_to_go"),
                                 problem.lp0.shape[0], markov, length, num_samples)
    return GradientEstimate(mean, stderr, var, num_samples)
