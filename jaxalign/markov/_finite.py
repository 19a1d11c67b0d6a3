"""Exact finite-n quantities: messages, the tilt chain, KL, moments, budgets, the
frontier, the myopic tilt and its look-ahead gap, power and temperature chains."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign._types import (
    Array,
    ArrayLike,
    check_memory,
    is_concrete,
    light_jit,
    small_work,
)
from jaxalign.markov._model import (
    MarkovLM,
    _check_model,
    _prepare,
    _scalar,
)
from jaxalign.models import (
    TiltSummary,
)

# ------------------------------------------------------------------------ recursions


# Small chains (K^2 n <= 2^20) are compile-bound, large ones run long:
# * small ones compile with light options (light_jit): at K = 16, n = 64 lam_for_kl's
#   first call took 1.6 s instead of 3.0 s, but at K = 256, n = 1024 it ran 4x
#   slower (23.5 s against 6.1 s);
# * large ones use the scaled recursion of _backward and let lam_for_kl skip its
#   polish where rounding allows: at K = 256, n = 1024 lam_for_kl took 1.3 s a call
#   instead of 5.4 s, but the program, which carries the log-space recursion as a
#   fallback and the polish as a branch, compiled 1.2-1.7 s longer at K = 16
#   (lam_for_kl's first call 1.5 -> 3.2 s at n = 64).
_SMALL_CHAIN = 2**20
_SMALL = small_work(_SMALL_CHAIN)


def _small_chain(k: int, length: int) -> bool:
    return k * k * length <= _SMALL_CHAIN


@dataclasses.dataclass(frozen=True)
class _TiltSteps:
    """The tilt chain's transitions inside a traced function, step ``i`` built
    when read (:func:`_step`): the KL recursions never hold all ``(n - 1, K, K)``
    of them (0.5 GB at ``K = 256``, ``n = 1024``)."""

    log_trans: Array
    pair: Array
    lam: Array
    lh: Array  # (n, K) log backward messages

    def at(self, i) -> Array:
        return jax.nn.log_softmax(_step(self.log_trans, i) + self.lam * self.pair
                                  + self.lh[i + 1][None, :], axis=1)


def _step(log_trans: Array, i) -> Array:
    """The ``(K, K)`` log transition of step ``i`` (0-based)."""
    if isinstance(log_trans, _TiltSteps):
        return log_trans.at(i)
    if log_trans.ndim == 2:
        return log_trans
    if log_trans.shape[0] == 0:  # n = 1: no step is ever taken (traced only)
        return jnp.zeros(log_trans.shape[1:], log_trans.dtype)
    return log_trans[i]


# A scaled sum below this may have lost terms to underflow (each under 2^-1074 of the
# largest); above it the lost part is under K 2^-114 of the sum.
_TINY = 2.0**-960


def _backward(log_trans, pair, lam, length: int) -> Array:
    r"""``(n, K)`` log backward messages ``h_t = P_λ h_{t+1}``, ``log h[n-1] = 0``.

    Scaled products in linear space: each row of ``log P_λ`` shifted by its
    maximum ``m`` (``M = e^{log P_λ - m}``, built once for a homogeneous chain),
    ``h_{t+1}`` by its own (``ĥ``, largest entry 1), so ``log h_t = m + s + log(M
    ĥ)``: one matrix-vector product per step instead of a log-sum-exp over ``K^2``
    entries, for chains with ``K^2 n > 2^20`` (smaller ones use the log-space
    recursion alone, whose program compiles sooner).  Every
    ``h_t(a) > 0`` (each row of ``P`` has a successor), so a sum ``M ĥ`` below
    ``2^-960`` means terms lost to underflow: then the whole recursion is done
    again in log space (``logsumexp``), which is exact at any range.
    """
    k = pair.shape[0]
    dtype = pair.dtype
    last = jnp.zeros(k, dtype)
    steps = jnp.arange(length - 1)

    def log_step(i):
        return _step(log_trans, i) + lam * pair

    def scaled_rows(i):
        rows = log_step(i)
        top = jnp.max(rows, axis=1)
        return jnp.exp(rows - top[:, None]), top

    fixed = scaled_rows(0) if log_trans.ndim == 2 else None

    def linear(carry, i):
        h, s, bad = carry
        m, top = fixed if fixed is not None else scaled_rows(i)
        v = jnp.dot(m, h, precision=jax.lax.Precision.HIGHEST)
        bad = bad | jnp.any(~(v >= _TINY))  # (NaN too: an infinite λ)
        lh = top + s + jnp.log(v)
        c = jnp.max(lh)
        return (jnp.exp(lh - c), c, bad), lh

    def log_space():
        def body(lh, i):
            lh = jax.nn.logsumexp(log_step(i) + lh[None, :], axis=1)
            return lh, lh

        return jax.lax.scan(body, last, steps, reverse=True)[1]

    if _small_chain(k, length):  # one recursion compiles sooner
        return jnp.concatenate([log_space(), last[None, :]], axis=0)
    start = (jnp.ones(k, dtype), jnp.zeros((), dtype), jnp.zeros((), bool))
    (_, _, bad), hs = jax.lax.scan(linear, start, steps, reverse=True)
    hs = jax.lax.cond(bad, log_space, lambda: hs)
    return jnp.concatenate([hs, last[None, :]], axis=0)


def _log_z(log_init, log_trans, first, pair, lam, length: int) -> Array:
    lh = _backward(log_trans, pair, lam, length)
    return jax.nn.logsumexp(log_init + lam * first + lh[0])


def _tilt_steps(log_init, log_trans, first, pair, lam, length: int):
    """The tilt chain: its log initial law and its steps (:class:`_TiltSteps`)."""
    lh = _backward(log_trans, pair, lam, length)
    init = jax.nn.log_softmax(log_init + lam * first + lh[0])
    return init, _TiltSteps(log_trans, pair, lam, lh)


def _tilt_arrays(log_init, log_trans, first, pair, lam, length: int):
    """The tilt chain with its ``(n - 1, K, K)`` transitions stored."""
    init, steps = _tilt_steps(log_init, log_trans, first, pair, lam, length)
    if length == 1:
        k = pair.shape[0]
        return init, jnp.zeros((0, k, k), pair.dtype)
    return init, jax.vmap(steps.at)(jnp.arange(length - 1))


def _kl_terms(lp: Array, lq: Array) -> Array:
    """Terms of ``KL(q‖p)`` over the last axis, each ``>= 0``, summing to the KL
    without cancellation (``theory._kl_terms``); ``inf`` where ``q > 0 = p``."""
    from jaxalign.theory._tilt import _kl_terms as terms

    p, q = jnp.exp(lp), jnp.exp(lq)
    on = (p > 0) & (q > 0)
    ell = jnp.where(on, lq - jnp.where(on, lp, 0.0), 0.0)
    return jnp.where(on, terms(p, q, ell), jnp.where(q > 0, jnp.inf, p))


def _chain_kl(q_init, q_trans, p_init, p_trans, length: int) -> Array:
    r"""``KL(Q‖P)`` of two chains by a forward recursion over ``Q``'s marginals:

    .. math::
        \mathrm{KL}(Q\|P) = \mathrm{KL}(q_1\|p_1) + \sum_{t=2}^n \sum_a
        Q(y_{t-1} = a)\, \mathrm{KL}(Q_t(a, \cdot)\|P_t(a, \cdot)).

    The one home of the chain KL (:func:`chain_kl`, the tilt's KLs, the frontier,
    :mod:`jaxalign.kl_gradients`, :mod:`jaxalign.rl`).  ``q_trans``, ``p_trans``
    are ``(K, K)`` (homogeneous) or ``(n − 1, K, K)`` (step ``t`` reads slice
    ``t − 2``), each on its own; ``KL(P‖Q)`` is the same call with the chains
    swapped.  Every term is ``>= 0`` (:func:`_kl_terms`: a truncated series for
    ``|log q/p| < 0.5``, selected by ``jnp.where`` with the series' argument masked
    to 0 outside, so both branches are finite and the derivatives are exact to
    float64 — the degree-21 series' derivative errs by ``~1e-25``); ``inf`` where
    ``Q`` puts mass where ``P`` has none (there the gradient is not defined).

    Examples:
      >>> import jax.numpy as jnp
      >>> lq = jnp.log(jnp.array([[0.5, 0.5], [0.5, 0.5]]))
      >>> lp = jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8]]))
      >>> l0 = jnp.log(jnp.array([0.5, 0.5]))
      >>> # homogeneous q, time-varying p: two steps, the same expected row KL
      >>> round(float(_chain_kl(l0, lq, l0, jnp.stack([lp, lp]), 3)), 6)
      0.733969
    """
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


@light_jit(static_argnames="length", light_when=_SMALL)
def _core(log_init, log_trans, first, pair, lam, length: int) -> _Core:
    logz, mean, var = _moments(log_init, log_trans, first, pair, lam, length)
    init, trans = _tilt_steps(log_init, log_trans, first, pair, lam, length)
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


_log_z_jit = light_jit(_log_z, static_argnames="length", light_when=_SMALL)


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


_backward_jit = light_jit(_backward, static_argnames="length", light_when=_SMALL)
_tilt_jit = light_jit(_tilt_arrays, static_argnames="length", light_when=_SMALL)


def _check_steps_fit(name: str, lm: MarkovLM, dtype) -> None:
    """Refuse, before any work, a chain of ``(n - 1, K, K)`` transitions that
    would not fit in memory (the program holds about three arrays of that size)."""
    k, steps = lm.num_tokens, max(lm.length - 1, 0)
    check_memory(3 * steps * k * k * jnp.dtype(dtype).itemsize,
                 f"{name} builds (n - 1, K, K) = ({steps}, {k}, {k}) transitions",
                 "tilt_summary, kl, lam_for_kl and optimal_reward need only (n, K) "
                 "messages, or use a shorter length")


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
    _check_steps_fit("markov.tilt", lm, dtype)
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


_chain_kl_jit = light_jit(_chain_kl, static_argnames="length", light_when=_SMALL)
_chain_mean_jit = light_jit(_chain_mean, static_argnames="length", light_when=_SMALL)


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


_top_jit = light_jit(_top, static_argnames="length", light_when=_SMALL)


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
    # Newton steps on the KL of the forward recursion (non-negative terms) polish,
    # unless the rounding of λE - log Z, at most about eps (n + |λE| + |log Z|)
    # (each step of the recursion rounds by ~eps), is already below 1e-13 Δ, the
    # accuracy stated (the polish costs 0.8 s of 2.2 at K = 256, n = 1024; small
    # chains always polish: the test compiled 0.7 s longer at K = 16, n = 64).
    def polish(lam):
        for _ in range(2):
            init, trans = _tilt_steps(log_init, log_trans, first, pair, lam, length)
            k = _chain_kl(init, trans, log_init, log_trans, length)
            slope = kl_and_slope(lam)[1]
            lam = lam - jnp.where(slope > 0, (k - target) / slope, 0.0)
        return lam

    if _small_chain(pair.shape[0], length):
        lam = polish(lam)
    else:
        logz, mean, _ = _moments(log_init, log_trans, first, pair, lam, length)
        rounding = jnp.finfo(lam.dtype).eps * (length + jnp.abs(lam * mean)
                                               + jnp.abs(logz))
        lam = jax.lax.cond(rounding > 1e-13 * target, polish, lambda lam: lam, lam)
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


_solve_lam_jit = light_jit(_solve_lam, static_argnames="length", light_when=_SMALL)


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


@light_jit(static_argnames="length", light_when=_SMALL)
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


@light_jit(static_argnames="length", light_when=_SMALL)
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
    _check_steps_fit("markov.power_chain", lm, lm.log_init.dtype)
    init, trans = _power_arrays(lm.log_init, lm.log_trans, alpha, lm.length)
    return MarkovLM.unchecked(init, trans, lm.length)


def temperature_chain(lm: MarkovLM, alpha: ArrayLike) -> MarkovLM:
    r"""Token-level sampling at temperature ``1/α``: ``μ^α`` and every row of
    ``P^{∘α}`` normalised.

    .. math::
        \tilde\pi(b \mid a) = \frac{P(a, b)^\alpha}{\sum_{b'} P(a, b')^\alpha}.

    Examples:
      >>> import jax.numpy as jnp
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
