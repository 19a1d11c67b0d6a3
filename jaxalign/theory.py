"""Closed-form theory of exponential tilting for memoryless models with linear rewards.

Pure functions of ``(lm, reward, scalar...)``; vmap over the scalar arguments, e.g.
``jax.vmap(kl, in_axes=(None, None, 0))(lm, reward, lams)``.  See ``THEORY.md`` §1
for the mathematics.  Conventions: ``lam`` is the tilt (inverse temperature, the RLHF
``beta = 1/lam``), ``n = lm.length``; "per-token" quantities are for one token,
"sequence" quantities for the whole sequence (``n`` times the per-token value).

Numerics.  Everything is computed from the per-token log-ratio
``ell(x) = log(p_lam(x) / p(x))`` in forms whose terms never cancel (e.g.
``KL = sum_x p(x) [1 - e^ell (1 - ell)]`` with a Taylor series for small ``ell``), so
results are accurate to a few ulps relative in float64 from ``lam = 1e-8`` to
``lam = 1e4``.  Zero-probability tokens are outside the support: their rewards never
enter ``r_max``, ``r_min`` or any sum, however large.  ``lam = ±inf`` is accepted
where the limit is meaningful (the tilt then conditions on the top/bottom reward
class).  Out-of-domain traced values give NaN or ``inf``, never an exception.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    check_positive_int,
    check_real,
    is_concrete,
    log_tolerance,
)
from jaxalign.models import LinearReward, MemorylessLM, check_compatible

__all__ = [
    "log_mgf",
    "cumulants",
    "tilt",
    "kl",
    "reverse_kl",
    "jeffreys",
    "max_kl",
    "expected_reward",
    "lam_for_kl",
    "optimal_reward",
    "rate_function",
    "scgf",
    "scgf_renyi",
    "scgf_renyi_divergence",
    "renyi_divergence",
    "renyi_cross_entropy",
    "best_of_n_asymptotic_reward",
    "best_of_n_kl_bound",
    "subgaussian_reward_bound",
    "hoeffding_variance",
    "jeffreys_gain",
    "covariance_gain",
    "report",
]


# ---------------------------------------------------------------------------------
# Series for the small-argument regime, where the closed forms cancel.
# KL integrand / p:         1 - e^l (1 - l) = sum_{m>=2} (m-1) l^m / m!
# reverse-KL integrand / p: e^l - 1 - l     = sum_{m>=2} l^m / m!
_SERIES_CUTOFF = 0.5
_NUM_SERIES = 22  # 0.5^22 / 22! ~ 1e-28: far below float64 eps


def _series(l: Array, coefficients: list[float]) -> Array:
    acc = jnp.zeros_like(l)
    for c in reversed(coefficients):
        acc = acc * l + c
    return acc * l * l


_KL_COEFFS = [(m - 1) / math.factorial(m) for m in range(2, _NUM_SERIES)]
_REV_COEFFS = [1.0 / math.factorial(m) for m in range(2, _NUM_SERIES)]


def _small(l: Array) -> tuple[Array, Array]:
    small = jnp.abs(l) < _SERIES_CUTOFF
    return small, jnp.where(small, l, 0.0)


def _kl_terms(p: Array, phi: Array, ell: Array) -> Array:
    """Per-token terms p(x) [1 - e^ell (1 - ell)] >= 0 of KL(phi || p)."""
    small, l = _small(ell)
    direct = p - phi + jnp.where(phi > 0, phi * ell, 0.0)
    return jnp.where(small, p * _series(l, _KL_COEFFS), direct)


def _rev_terms(p: Array, phi: Array, ell: Array) -> Array:
    """Per-token terms p(x) [e^ell - 1 - ell] >= 0 of KL(p || phi)."""
    small, l = _small(ell)
    direct = phi - p - jnp.where(p > 0, p * ell, 0.0)
    return jnp.where(small, p * _series(l, _REV_COEFFS), direct)


def _log_mean_exp(p: Array, mask: Array, v: Array, beta: Array) -> Array:
    """log sum_{mask} p e^{beta v}, accurate when the result is near 0 (beta v small).

    ``v`` may be ``±inf`` on the mask; ``beta = 0`` gives exactly 0.
    """
    bv = jnp.where(mask, jnp.where(beta == 0, 0.0, beta * v), -jnp.inf)
    s = jnp.sum(jnp.where(mask, p * jnp.expm1(bv), 0.0))
    log_p = jnp.where(mask, jnp.log(jnp.where(mask, p, 1.0)), -jnp.inf)
    lse = jax.nn.logsumexp(jnp.where(mask, log_p + bv, -jnp.inf))
    return jnp.where((s > -0.5) & jnp.isfinite(s), jnp.log1p(s), lse)


# ---------------------------------------------------------------------------------
# The tilt core: everything about p_lam for one scalar lam.


class _Tilted(NamedTuple):
    support: Array  # (K,) bool, p(x) > 0
    top: Array  # (K,) bool, support and r == r_max
    p: Array  # (K,) base probabilities
    r: Array  # (K,) rewards; r_max off the support, so never huge
    r_hi: Array  # () max reward on the support
    r_lo: Array  # () min reward on the support
    log_mgf: Array  # () Lambda(lam)
    log_phi: Array  # (K,) log p_lam, -inf off its support
    phi: Array  # (K,) p_lam
    ell: Array  # (K,) log(p_lam / p) on the support of p, 0 off it
    mean: Array  # () Lambda'(lam) = E_{p_lam} r
    u: Array  # (K,) r - mean on the support, 0 off it
    w: Array  # (K,) p_lam - p, accurate when the two are close


def _tilted(log_p: Array, r: Array, lam: Array) -> _Tilted:
    support = log_p > -jnp.inf
    r_hi = jnp.max(jnp.where(support, r, -jnp.inf))
    r_lo = jnp.min(jnp.where(support, r, jnp.inf))
    r = jnp.where(support, r, r_hi)
    top = support & (r == r_hi)
    # Shift by the reward that lam favours, so lam * d <= 0 and nothing overflows.
    r_ref = jnp.where(lam >= 0, r_hi, r_lo)
    d = r - r_ref
    lam_d = jnp.where(d == 0, 0.0, lam * d)  # exact 0 for lam = ±inf on the top class
    p = jnp.exp(log_p)
    z = jnp.where(support, log_p + lam_d, -jnp.inf)
    s = jnp.sum(p * jnp.expm1(lam_d))
    l_shift = jnp.where(s > -0.5, jnp.log1p(s), jax.nn.logsumexp(z))
    log_mgf = jnp.where(r_ref == 0, 0.0, lam * r_ref) + l_shift
    log_phi = jnp.where(support, z - l_shift, -jnp.inf)
    phi = jnp.exp(log_phi)
    ell = jnp.where(support, lam_d - l_shift, 0.0)
    shift = jnp.sum(phi * d)
    u = jnp.where(support, d - shift, 0.0)
    w = jnp.where(support, jnp.where(ell > 1, phi - p, p * jnp.expm1(ell)), 0.0)
    return _Tilted(support, top, p, r, r_hi, r_lo, log_mgf, log_phi, phi, ell,
                   r_ref + shift, u, w)


def _kl_token(t: _Tilted) -> Array:
    return jnp.sum(jnp.where(t.support, _kl_terms(t.p, t.phi, t.ell), 0.0))


def _rev_token(t: _Tilted) -> Array:
    return jnp.sum(jnp.where(t.support, _rev_terms(t.p, t.phi, t.ell), 0.0))


def _jeffreys_token(t: _Tilted) -> Array:
    return jnp.sum(jnp.where(t.support, t.w * t.ell, 0.0))


def _variance(t: _Tilted) -> Array:
    return jnp.sum(t.phi * t.u * t.u)


def _log_p_top(t: _Tilted) -> Array:
    """log p(A_max), exactly 0 when every supported token is in the top class."""
    rest = jnp.sum(jnp.where(t.support & ~t.top, t.p, 0.0))
    log_top = jax.nn.logsumexp(jnp.where(t.top, jnp.log(jnp.where(t.top, t.p, 1.0)),
                                         -jnp.inf))
    return jnp.where(rest < 0.5, jnp.log1p(-rest), log_top)


def _kl_gap(t: _Tilted, lam: Array) -> Array:
    """KL_max - KL(p_lam || p) = -log p_lam(A_max) + lam (r_max - Lambda'(lam))."""
    rest = jnp.sum(jnp.where(t.support & ~t.top, t.phi, 0.0))
    log_phi_top = jax.nn.logsumexp(jnp.where(t.top, t.log_phi, -jnp.inf))
    neg_log_top = jnp.where(rest < 0.5, -jnp.log1p(-rest), -log_phi_top)
    return neg_log_top + lam * jnp.sum(t.phi * (t.r_hi - t.r))


# ---------------------------------------------------------------------------------
# Safeguarded Newton for increasing functions (vmap-able: a bounded while_loop).


def _bracketed_newton(fn, lo, hi, x0, max_iter: int = 80):
    """Root of increasing ``g`` with ``g(lo) <= 0 <= g(hi)``; ``fn(x) = (g, g')``."""
    tol = 4 * jnp.finfo(x0.dtype).eps

    def cond(c):
        i, _, _, _, done = c
        return (i < max_iter) & ~done

    def body(c):
        i, x, lo, hi, _ = c
        g, dg = fn(x)
        lo = jnp.where(g <= 0, x, lo)
        hi = jnp.where(g >= 0, x, hi)
        x_newton = x - g / dg
        inside = (x_newton > lo) & (x_newton < hi)
        x_new = jnp.where(inside, x_newton, 0.5 * (lo + hi))
        scale = jnp.maximum(jnp.abs(x_new), 1.0)
        done = (g == 0) | (jnp.abs(x_new - x) <= tol * scale) | (hi - lo <= tol * scale)
        return i + 1, x_new, lo, hi, done

    init = (jnp.asarray(0), x0, lo, hi, jnp.asarray(False))
    return jax.lax.while_loop(cond, body, init)[1]


def _solve_lam_token(log_p: Array, r: Array, delta: Array) -> Array:
    """The lam >= 0 with per-token KL(p_lam || p) = delta (inf if delta >= KL_max).

    Newton in y = log(lam) on h(y) = log KL - log(KL_max - KL), which is ~2y + c for
    small lam and ~g e^y + c for large lam (g the gap below r_max), so both ends of
    the range are solved to full precision.
    """
    base = _tilted(log_p, r, jnp.zeros_like(delta))
    log_p_top = _log_p_top(base)
    delta_max = -log_p_top
    valid = (delta > 0) & (delta < delta_max)
    delta_s = jnp.where(valid, delta, 0.5 * delta_max)
    delta_s = jnp.where(delta_s > 0, delta_s, 1.0)  # constant reward: result discarded
    width = jnp.where(base.r_hi > base.r_lo, base.r_hi - base.r_lo, 1.0)
    var0 = jnp.where(_variance(base) > 0, _variance(base), 1.0)
    target = jnp.log(delta_s) - jnp.log(delta_max - delta_s)

    def fn(y):
        lam = jnp.exp(y)
        t = _tilted(log_p, r, lam)
        k, gap = _kl_token(t), _kl_gap(t, lam)
        dk = lam * lam * _variance(t)
        return jnp.log(k) - jnp.log(gap) - target, dk / k + dk / gap

    # KL(lam) <= lam^2 W^2 / 8 (Var <= W^2/4), so y_lo is below the root.
    y_lo = 0.5 * jnp.log(8 * delta_s) - jnp.log(width)
    y0 = jnp.maximum(0.5 * jnp.log(2 * delta_s / var0), y_lo)
    # Above the root: with eps = p_lam(not A_max) <= c e^{-lam g}, c = (1-p_max)/p_max
    # and g the gap below r_max, KL_max - KL <= eps (2 + lam W) when eps <= 1/2, and
    # lam W <= (2W / (e g)) e^{lam g / 2}.
    second = jnp.max(jnp.where(base.support & ~base.top, base.r, -jnp.inf))
    gap_r = jnp.where(jnp.isfinite(second), base.r_hi - second, width)
    log_c = jnp.log(-jnp.expm1(log_p_top)) - log_p_top
    lam_hi = jnp.maximum(
        2 / gap_r * (log_c + jnp.log(2 + 2 * width / (math.e * gap_r))
                     - jnp.log(delta_max - delta_s)),
        (log_c + math.log(2)) / gap_r)
    y_hi = jnp.maximum(jnp.log(jnp.maximum(lam_hi, 0.0) * 1.01 + 1e-30), y0)
    y = _bracketed_newton(fn, y_lo, y_hi, y0)
    lam = jnp.where(valid, jnp.exp(y), 0.0)
    return jnp.where(delta >= delta_max, jnp.inf, lam)


_solve_lam_token_jit = jax.jit(_solve_lam_token)


def _solve_theta(log_q: Array, r: Array, x: Array) -> Array:
    """The tilt t with E_{q_t} r = x; ±inf at the end points, NaN outside.

    Newton on the logit of the mean, m(t) = log(x - r_min) - log(r_max - x) at the
    root, which is asymptotically linear at both ends; the bracket comes from
    m(t) >= t g_top + log(p_max W / (r_max - E_q r)) for t >= 0 (and its mirror).
    """
    base = _tilted(log_q, r, jnp.zeros_like(x))
    r_hi, r_lo = base.r_hi, base.r_lo
    width = r_hi - r_lo
    inside = (x > r_lo) & (x < r_hi)
    x_s = jnp.where(inside, x, 0.5 * (r_hi + r_lo))
    target = jnp.log(x_s - r_lo) - jnp.log(r_hi - x_s)
    second_hi = jnp.max(jnp.where(base.support & (base.r < r_hi), base.r, -jnp.inf))
    second_lo = jnp.min(jnp.where(base.support & (base.r > r_lo), base.r, jnp.inf))
    bottom = base.support & (base.r == r_lo)
    log_p_bottom = jax.nn.logsumexp(jnp.where(bottom, log_q, -jnp.inf))
    above = jnp.sum(base.p * (base.r - r_lo))
    below = jnp.sum(base.p * (r_hi - base.r))
    c_hi = _log_p_top(base) + jnp.log(width) - jnp.log(below)
    c_lo = jnp.log(above) - log_p_bottom - jnp.log(width)
    t_hi = jnp.maximum(0.0, (target - c_hi) / (r_hi - second_hi))
    t_lo = jnp.minimum(0.0, (target - c_lo) / (second_lo - r_lo))
    t_hi = jnp.where(inside, t_hi, 1.0)
    t_lo = jnp.where(inside, t_lo, -1.0)
    t0 = jnp.clip((x_s - base.mean) / _variance(base), t_lo, t_hi)
    t0 = jnp.where(inside, t0, 0.0)

    def fn(t):
        tt = _tilted(log_q, r, t)
        a = jnp.sum(tt.phi * (tt.r - r_lo))
        b = jnp.sum(tt.phi * (r_hi - tt.r))
        return jnp.log(a) - jnp.log(b) - target, _variance(tt) * width / (a * b)

    t = _bracketed_newton(fn, t_lo, t_hi, t0)
    t = jnp.where(inside, t, jnp.nan)
    t = jnp.where(x == r_hi, jnp.inf, t)
    return jnp.where((x == r_lo) & (r_lo < r_hi), -jnp.inf, t)


def _rate_token(log_q: Array, r: Array, x: Array) -> Array:
    t = _solve_theta(log_q, r, x)
    rate = _kl_token(_tilted(log_q, r, jnp.where(jnp.isnan(t), 0.0, t)))
    return jnp.where(jnp.isnan(t), jnp.inf, rate)


# ---------------------------------------------------------------------------------
# Jitted kernels behind the public functions: one compile per (K, dtype) serves
# every closed-form quantity; under an outer jit they are inlined and unused outputs
# are dropped.


class _Summary(NamedTuple):
    log_mgf: Array  # () Lambda(lam)
    log_phi: Array  # (K,) log p_lam
    kl: Array  # () per-token KL(p_lam || p)
    reverse_kl: Array  # () per-token KL(p || p_lam)
    jeffreys: Array  # () per-token Jeffreys divergence
    mean: Array  # () Lambda'(lam)
    gain: Array  # () per-token Lambda'(lam) - Lambda'(0), covariance form
    log_p_top: Array  # () log p(A_max)


@jax.jit
def _summary(log_p: Array, r: Array, lam: Array) -> _Summary:
    t = _tilted(log_p, r, lam)
    return _Summary(t.log_mgf, t.log_phi, _kl_token(t), _rev_token(t),
                    _jeffreys_token(t), t.mean, jnp.sum(t.w * t.u), _log_p_top(t))


@jax.jit
def _rate_impl(log_p: Array, r: Array, x: Array, lam: Array) -> Array:
    return _rate_token(_tilted(log_p, r, lam).log_phi, r, x)


class _ScgfForms(NamedTuple):
    direct: Array  # () Lambda(lam + t) - Lambda(lam)
    cross_entropy: Array  # () R2: t [log C - H_{1+t}(p_lam; q_r)]
    divergence: Array  # () R3: (t/lam) [Lambda(lam) + D_{1+t/lam}(p_lam || p)]


@jax.jit
def _scgf_impl(log_p: Array, r: Array, t: Array, lam: Array) -> _ScgfForms:
    tl = _tilted(log_p, r, lam)
    direct = _tilted(tl.log_phi, r, t).log_mgf
    log_c, q_r = _reward_softmax(tl)
    cross = t * (log_c - _renyi_cross_entropy(tl.phi, q_r, 1 + t))
    ratio = t / jnp.where(lam == 0, 1.0, lam)
    d = _renyi_divergence(tl.phi, tl.p, 1 + ratio)
    divergence = jnp.where(lam == 0, jnp.nan, ratio * (tl.log_mgf + d))
    return _ScgfForms(direct, cross, divergence)


@functools.partial(jax.jit, static_argnums=3)
def _cumulants_impl(log_p: Array, r: Array, lam: Array, order: int) -> Array:
    t = _tilted(log_p, r, lam)
    moments = [None, jnp.zeros_like(lam)]
    kappas = [None, jnp.zeros_like(lam)]
    power = t.u
    for _ in range(2, order + 1):
        power = power * t.u
        moments.append(jnp.sum(t.phi * power))
    for m in range(2, order + 1):
        k = moments[m]
        for j in range(2, m - 1):
            k = k - math.comb(m - 1, j - 1) * kappas[j] * moments[m - j]
        kappas.append(k)
    kappas[1] = t.mean
    return jnp.stack(kappas[1:])


# ---------------------------------------------------------------------------------
# Validation and dtype helpers.


def _prepare(lm: MemorylessLM, reward: LinearReward):
    check_compatible(lm, reward)
    dtype = np.result_type(lm.log_probs.dtype, reward.token_rewards.dtype)
    return lm.log_probs.astype(dtype), reward.token_rewards.astype(dtype), dtype


def _scalar(value: ArrayLike, name: str, dtype, *, allow_inf: bool = True,
            minimum: float | None = None, allowed: str = "a real number") -> Array:
    if is_concrete(value):
        try:
            check_real(value, name, minimum=minimum, allow_inf=allow_inf)
        except ValueError as err:
            raise ValueError(f"{err}; allowed: {allowed}") from None
    arr = jnp.asarray(value)
    if arr.ndim != 0:
        raise ValueError(
            f"{name} must be a scalar (shape ()), got shape {arr.shape}; "
            f"use jax.vmap to evaluate a batch"
        )
    return arr.astype(dtype)


def _lam(lam, dtype, *, allow_inf=True):
    allowed = "a real number or ±inf" if allow_inf else "a finite real number"
    return _scalar(lam, "lam", dtype, allow_inf=allow_inf, allowed=allowed)


def _prob_vector(x: ArrayLike, name: str) -> Array:
    if is_concrete(x):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real probability vector, got dtype "
                             f"{arr.dtype}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape (K,), a vector, got shape {x.shape}")
    if is_concrete(x):
        arr = np.asarray(x)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"{name} must be finite and non-negative, got {arr}")
        total = float(np.sum(arr, dtype=np.float64))
        tol = log_tolerance(arr.dtype)
        if not abs(total - 1.0) <= tol:
            raise ValueError(f"{name} must sum to 1 (tolerance {tol:.3g}), got sum "
                             f"{total!r}")
    return x


def _two_prob_vectors(p, q):
    p, q = _prob_vector(p, "p"), _prob_vector(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape (K,), got {p.shape} and "
                         f"{q.shape}")
    dtype = np.result_type(p.dtype, q.dtype)
    return p.astype(dtype), q.astype(dtype), dtype


# ---------------------------------------------------------------------------------
# Public API.


def log_mgf(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Per-token log moment generating function of the reward.

    .. math::
        \Lambda(\lambda) = \log \sum_x p(x)\, e^{\lambda r(x)}.

    Args:
      lm: the base model (``K`` tokens).
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ`` (any real, or ``±inf``).

    Returns:
      A 0-d array, ``Λ(λ)``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> float(log_mgf(lm, r, 0.0))
      0.0

    References:
      Dembo and Zeitouni, *Large Deviations Techniques and Applications*, §2.2, 1998.
    """
    log_p, r, dtype = _prepare(lm, reward)
    return _summary(log_p, r, _lam(lam, dtype)).log_mgf


def cumulants(lm: MemorylessLM, reward: LinearReward, order: int,
              lam: ArrayLike = 0.0) -> Array:
    r"""Per-token cumulants ``κ_1..κ_order`` of the reward under the tilt ``p_λ``.

    .. math::
        \kappa_m(\lambda) = \Lambda^{(m)}(\lambda), \qquad
        \kappa_m(R) = n\,\kappa_m(\lambda) \text{ under } \Phi_\lambda.

    Computed from central moments of ``r`` under ``p_λ`` (no autodiff, so it stays
    exact for zero-probability tokens and ``λ = ±inf``).

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      order: static int ``>= 1``, the number of cumulants.
      lam: scalar tilt ``λ``.

    Returns:
      ``(order,)`` array ``[κ_1, ..., κ_order]`` (mean, variance, third cumulant...).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.25, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> [round(float(c), 6) for c in cumulants(lm, r, 3)]
      [0.25, 0.1875, 0.09375]

    References:
      Kendall and Stuart, *The Advanced Theory of Statistics*, vol. 1, §3.14.
    """
    order = check_positive_int(order, "order")
    log_p, r, dtype = _prepare(lm, reward)
    return _cumulants_impl(log_p, r, _lam(lam, dtype), order)


def tilt(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> MemorylessLM:
    r"""The exponentially tilted model, the KL-optimal policy.

    .. math::
        p_\lambda(x) = p(x)\, e^{\lambda r(x) - \Lambda(\lambda)}, \qquad
        \Phi_\lambda = p_\lambda^{\otimes n}.

    Returns a :class:`MemorylessLM` of the same length (tilting the sequence law by
    ``e^{λR}`` is exactly i.i.d. sampling from ``p_λ``).  ``λ = +inf`` gives
    ``p(· | A_max)``, the law conditioned on the top reward class.

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ`` (any real, or ``±inf``).

    Returns:
      A :class:`MemorylessLM` with ``log_probs`` ``(K,)`` equal to ``log p_λ``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=3)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> tilt(lm, r, 0.0).probs.tolist()
      [0.5, 0.5]

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    log_phi = _summary(log_p, r, _lam(lam, dtype)).log_phi
    return MemorylessLM.unchecked(log_phi, lm.length)


def kl(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Sequence-level KL divergence of the tilted model from the base model.

    .. math::
        D(\Phi_\lambda \| P) = n\,[\lambda \Lambda'(\lambda) - \Lambda(\lambda)]
        = n \sum_x p(x)\,[1 - e^{\ell(x)}(1 - \ell(x))],\quad
        \ell = \log(p_\lambda / p).

    Args:
      lm: the base model (``n = lm.length``).
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ``; ``+inf`` gives ``-n log p(A_max)``.

    Returns:
      A 0-d array ``>= 0``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=10)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(kl(lm, r, float("inf"))), 6)  # 10 log 2
      6.931472

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    return lm.length * _summary(log_p, r, _lam(lam, dtype)).kl


def reverse_kl(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Sequence-level reverse KL divergence of the base model from the tilt.

    .. math::
        D(P \| \Phi_\lambda) = n\,[\Lambda(\lambda) - \lambda \Lambda'(0)].

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ``; ``±inf`` gives ``+inf`` unless the reward is constant
        on the support.

    Returns:
      A 0-d array ``>= 0``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(reverse_kl(lm, r, 1.0)), 5)  # log((1 + e)/2) - 1/2
      0.12011

    References:
      Monteiro Paes, Mackraz, Theobald, Danieli, `Theoretical Limits of Language
      Model Alignment <https://arxiv.org/abs/2605.07105>`_, 2026.
    """
    log_p, r, dtype = _prepare(lm, reward)
    return lm.length * _summary(log_p, r, _lam(lam, dtype)).reverse_kl


def jeffreys(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Sequence-level Jeffreys divergence ``KL + reverse KL``.

    .. math::
        J(\Phi_\lambda, P) = n\,\lambda\,[\Lambda'(\lambda) - \Lambda'(0)]
        = n \sum_x (p_\lambda(x) - p(x)) \log\frac{p_\lambda(x)}{p(x)}.

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ``.

    Returns:
      A 0-d array ``>= 0``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(jeffreys(lm, r, 1.0)), 6)  # 1 * (e/(1+e) - 1/2)
      0.231059

    References:
      Monteiro Paes, Mackraz, Theobald, Danieli, `Theoretical Limits of Language
      Model Alignment <https://arxiv.org/abs/2605.07105>`_, 2026.
    """
    log_p, r, dtype = _prepare(lm, reward)
    return lm.length * _summary(log_p, r, _lam(lam, dtype)).jeffreys


def max_kl(lm: MemorylessLM, reward: LinearReward) -> Array:
    r"""The largest KL any tilt reaches: ``-n log p(A_max)``.

    .. math::
        \lim_{\lambda\to\infty} D(\Phi_\lambda \| P) = -n \log p(A_{\max}),

    where ``p(A_max)`` is the mass of the top reward class on the support of ``p``.
    Budgets at or above it make the KL constraint slack (``lam_for_kl`` is ``inf``).

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.

    Returns:
      A 0-d array ``>= 0``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.25, 0.25], length=2)
      >>> r = jaxalign.LinearReward([0.0, 1.0, 1.0])
      >>> round(float(max_kl(lm, r)), 6)  # -2 log(0.5)
      1.386294

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    return -lm.length * _summary(log_p, r, jnp.zeros((), dtype)).log_p_top


def expected_reward(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Expected sequence reward under the tilted model.

    .. math::
        \mathbb{E}_{\Phi_\lambda}[R] = n\,\Lambda'(\lambda).

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ`` (``+inf`` gives ``n r_max``).

    Returns:
      A 0-d array.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> float(expected_reward(lm, r, 0.0))
      2.0

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    return lm.length * _summary(log_p, r, _lam(lam, dtype)).mean


def lam_for_kl(lm: MemorylessLM, reward: LinearReward, kl_budget: ArrayLike) -> Array:
    r"""The tilt whose sequence-level KL equals a budget (the KL-constrained optimum).

    .. math::
        \lambda_\Delta \ge 0:\quad
        n\,[\lambda \Lambda'(\lambda) - \Lambda(\lambda)] = \Delta,
        \qquad \lambda_\Delta = \infty \text{ if } \Delta \ge -n \log p(A_{\max}).

    Solved by safeguarded Newton in ``log λ`` inside a ``lax.while_loop`` (jitted,
    vmap-able); accurate to a few ulps from ``Δ = 1e-12`` up to just below the
    maximum.  ``Δ = 0`` gives 0 (unless the maximum is 0, then ``inf``).

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      kl_budget: scalar sequence-level budget ``Δ >= 0`` (``inf`` allowed).

    Returns:
      A 0-d array ``λ_Δ`` in ``[0, inf]``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> lam = lam_for_kl(lm, r, 1.0)
      >>> round(float(kl(lm, r, lam)), 5)
      1.0

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    budget = _scalar(kl_budget, "kl_budget", dtype, minimum=0.0,
                     allowed="a real number >= 0 (inf allowed)")
    return _solve_lam_token_jit(log_p, r, budget / lm.length)


def optimal_reward(lm: MemorylessLM, reward: LinearReward,
                   kl_budget: ArrayLike) -> Array:
    r"""The KL-constrained optimum: the best expected reward within a KL budget.

    .. math::
        \max_{Q:\, D(Q\|P) \le \Delta} \mathbb{E}_Q[R] = n\,\Lambda'(\lambda_\Delta),

    attained by the tilt ``Φ_{λ_Δ}`` (``n r_max`` once the budget reaches
    ``-n log p(A_max)``).  This is the frontier every alignment method is judged
    against.

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      kl_budget: scalar sequence-level budget ``Δ >= 0``.

    Returns:
      A 0-d array.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> float(optimal_reward(lm, r, 100.0))
      4.0

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024;
      Monteiro Paes, Mackraz, Theobald, Danieli, `Theoretical Limits of Language
      Model Alignment <https://arxiv.org/abs/2605.07105>`_, 2026.
    """
    log_p, r, dtype = _prepare(lm, reward)
    budget = _scalar(kl_budget, "kl_budget", dtype, minimum=0.0,
                     allowed="a real number >= 0 (inf allowed)")
    lam = _solve_lam_token_jit(log_p, r, budget / lm.length)
    return lm.length * _summary(log_p, r, lam).mean


def rate_function(lm: MemorylessLM, reward: LinearReward, x: ArrayLike,
                  lam: ArrayLike = 0.0) -> Array:
    r"""Cramér rate function of the per-token mean reward ``R/n`` under ``Φ_λ``.

    .. math::
        I_\lambda(x) = \sup_t\, [t x - \Lambda(\lambda + t) + \Lambda(\lambda)]
        = D(p_{\theta(x)} \| p_\lambda), \qquad \Lambda'(\theta(x)) = x.

    ``I_λ`` is 0 at ``x = Λ'(λ)``, equals ``-log p_λ(A_max)`` at ``x = r_max`` and
    ``-log p_λ(A_min)`` at ``x = r_min`` exactly, and is ``+inf`` outside
    ``[r_min, r_max]``.  ``θ(x)`` is found by safeguarded Newton on the logit of the
    mean, so values next to the end points are accurate too.

    Args:
      lm: the base model (the length does not enter).
      reward: the per-token reward ``(K,)``.
      x: scalar per-token mean reward.
      lam: scalar finite tilt ``λ`` of the law whose mean is considered.

    Returns:
      A 0-d array in ``[0, inf]``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(rate_function(lm, r, 1.0)), 6)  # log 2
      0.693147

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024;
      Dembo and Zeitouni, *Large Deviations Techniques and Applications*,
      Thm 2.2.3, 1998.
    """
    log_p, r, dtype = _prepare(lm, reward)
    x = _scalar(x, "x", dtype, allowed="a real number or ±inf")
    return _rate_impl(log_p, r, x, _lam(lam, dtype, allow_inf=False))


def scgf(lm: MemorylessLM, reward: LinearReward, t: ArrayLike,
         lam: ArrayLike = 0.0) -> Array:
    r"""Scaled cumulant generating function of the reward under ``Φ_λ``.

    .. math::
        K_\lambda(t) = \frac{1}{n} \log \mathbb{E}_{\Phi_\lambda} e^{tR}
        = \Lambda(\lambda + t) - \Lambda(\lambda),

    exact for every ``n`` (the tokens are independent).

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      t: scalar argument (any real).
      lam: scalar finite tilt ``λ``.

    Returns:
      A 0-d array.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(scgf(lm, r, 1.0)), 6)  # log((1 + e)/2)
      0.620115

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    t = _scalar(t, "t", dtype, allow_inf=False, allowed="a finite real number")
    return _scgf_impl(log_p, r, t, _lam(lam, dtype, allow_inf=False)).direct


def _reward_softmax(t: _Tilted) -> tuple[Array, Array]:
    """log C and q_r = e^r / C over the support of p (huge off-support r ignored)."""
    logits = jnp.where(t.support, t.r, -jnp.inf)
    return jax.nn.logsumexp(logits), jax.nn.softmax(logits)


def scgf_renyi(lm: MemorylessLM, reward: LinearReward, t: ArrayLike,
               lam: ArrayLike = 0.0) -> Array:
    r"""The SCGF in Rényi cross-entropy form (THEORY.md §1.7, R2; R1 at ``λ = 0``).

    .. math::
        K_\lambda(t) = t\,[\log C - H_{1+t}(p_\lambda;\, q_r)], \qquad
        q_r(x) = e^{r(x)} / C,\quad C = \sum_{x:\,p(x)>0} e^{r(x)}.

    Equal to :func:`scgf`, by a different route; at ``λ = 0`` it is R1,
    ``Λ(θ) = θ[log C - H_{1+θ}(p; q_r)]``.

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      t: scalar argument (any finite real).
      lam: scalar finite tilt ``λ``.

    Returns:
      A 0-d array.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(scgf_renyi(lm, r, 1.0)), 6)
      0.620115

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024;
      Thierrin, Alajaji, Linder, `Rényi cross-entropy measures for common
      distributions and processes <https://arxiv.org/abs/2208.06983>`_, 2022.
    """
    log_p, r, dtype = _prepare(lm, reward)
    t = _scalar(t, "t", dtype, allow_inf=False, allowed="a finite real number")
    return _scgf_impl(log_p, r, t, _lam(lam, dtype, allow_inf=False)).cross_entropy


def scgf_renyi_divergence(lm: MemorylessLM, reward: LinearReward, t: ArrayLike,
                          lam: ArrayLike) -> Array:
    r"""The SCGF in Rényi divergence form (THEORY.md §1.7, R3), for ``λ != 0``.

    .. math::
        K_\lambda(t) = \frac{t}{\lambda}\,
        \big[\Lambda(\lambda) + D_{1 + t/\lambda}(p_\lambda \| p)\big].

    Equal to :func:`scgf`; NaN for a traced ``λ = 0``.

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      t: scalar argument with ``1 + t/λ >= 0``.
      lam: scalar finite non-zero tilt ``λ``.

    Returns:
      A 0-d array.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(scgf_renyi_divergence(lm, r, 1.0, 0.5)), 5)  # = scgf(.., 1, 0.5)
      0.72734

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    t = _scalar(t, "t", dtype, allow_inf=False, allowed="a finite real number")
    lam_arr = _lam(lam, dtype, allow_inf=False)
    if is_concrete(lam_arr) and float(lam_arr) == 0:
        raise ValueError("lam must be non-zero for the Rényi divergence form, got 0.0; "
                         "allowed: a finite non-zero real (use scgf_renyi at lam = 0)")
    return _scgf_impl(log_p, r, t, lam_arr).divergence


def _renyi_divergence(p: Array, q: Array, alpha: Array) -> Array:
    mask = p > 0
    log_p = jnp.log(jnp.where(mask, p, 1.0))
    ell = jnp.where(mask, log_p - jnp.log(q), 0.0)
    beta = alpha - 1
    finite_beta = jnp.where(jnp.isinf(beta), 1.0, beta)
    lme = _log_mean_exp(p, mask, ell, finite_beta)
    kl_ = jnp.sum(jnp.where(mask, p * ell, 0.0))
    d = jnp.where(beta == 0, kl_, lme / jnp.where(beta == 0, 1.0, finite_beta))
    return jnp.where(jnp.isinf(alpha), jnp.max(jnp.where(mask, ell, -jnp.inf)), d)


def _renyi_cross_entropy(p: Array, q: Array, alpha: Array) -> Array:
    mask = p > 0
    log_q = jnp.log(q)
    beta = alpha - 1
    lme = _log_mean_exp(p, mask, log_q, beta)
    ce = -jnp.sum(jnp.where(mask, p * log_q, 0.0))
    return jnp.where(beta == 0, ce, -lme / jnp.where(beta == 0, 1.0, beta))


@jax.jit
def _renyi_jit(p: Array, q: Array, alpha: Array) -> tuple[Array, Array]:
    # One compile for both (their other branches are cheap); alpha = inf is only
    # valid for the divergence.
    finite = jnp.where(jnp.isinf(alpha), 2.0, alpha)
    return _renyi_divergence(p, q, alpha), _renyi_cross_entropy(p, q, finite)


def renyi_divergence(p: ArrayLike, q: ArrayLike, alpha: ArrayLike) -> Array:
    r"""Rényi divergence of order ``α`` between two token distributions.

    .. math::
        D_\alpha(p \| q) = \frac{1}{\alpha - 1} \log \sum_x p(x)^\alpha q(x)^{1-\alpha},

    with the limits ``D_1 = KL(p‖q)``, ``D_0 = -log q(supp p)`` and
    ``D_∞ = log max_x p(x)/q(x)``; computed as ``log1p(Σ p expm1((α-1) ℓ))/(α-1)``
    near ``α = 1``.  Non-decreasing in ``α``.  For tilts,
    ``n D_α(p_λ‖p) = n[Λ(αλ) - αΛ(λ)]/(α-1)`` is the sequence-level value.

    Args:
      p: ``(K,)`` probability vector.
      q: ``(K,)`` probability vector.
      alpha: scalar order ``α >= 0`` (``inf`` allowed).

    Returns:
      A 0-d array in ``[0, inf]``.

    Examples:
      >>> round(float(renyi_divergence([0.5, 0.5], [0.25, 0.75], 2.0)), 6)
      0.287682

    References:
      van Erven and Harremoës, `Rényi Divergence and Kullback-Leibler Divergence
      <https://arxiv.org/abs/1206.2459>`_, 2014.
    """
    p, q, dtype = _two_prob_vectors(p, q)
    alpha = _scalar(alpha, "alpha", dtype, minimum=0.0,
                    allowed="a real number >= 0 (inf allowed)")
    return _renyi_jit(p, q, alpha)[0]


def renyi_cross_entropy(p: ArrayLike, q: ArrayLike, alpha: ArrayLike) -> Array:
    r"""Rényi cross-entropy of order ``α`` of ``q`` relative to ``p``.

    .. math::
        H_\alpha(p; q) = \frac{1}{1 - \alpha} \log \sum_x p(x)\, q(x)^{\alpha - 1},
        \qquad H_1(p; q) = -\sum_x p(x) \log q(x).

    Args:
      p: ``(K,)`` probability vector (the averaging law).
      q: ``(K,)`` probability vector.
      alpha: scalar finite order ``α``.

    Returns:
      A 0-d array.

    Examples:
      >>> round(float(renyi_cross_entropy([0.5, 0.5], [0.5, 0.5], 3.0)), 6)  # log 2
      0.693147

    References:
      Thierrin, Alajaji, Linder, `Rényi cross-entropy measures for common
      distributions and processes <https://arxiv.org/abs/2208.06983>`_, 2022.
    """
    p, q, dtype = _two_prob_vectors(p, q)
    alpha = _scalar(alpha, "alpha", dtype, allow_inf=False,
                    allowed="a finite real number")
    return _renyi_jit(p, q, alpha)[1]


def best_of_n_asymptotic_reward(lm: MemorylessLM, reward: LinearReward,
                                delta: ArrayLike) -> Array:
    r"""Limit of the per-token best-of-N reward for ``N = e^{nδ}`` candidates.

    .. math::
        x^*(\delta):\; I_0(x^*) = \delta,\; x^* \ge \Lambda'(0); \qquad
        x^* = \Lambda'(\lambda_\delta),

    the same per-token reward as the KL-constrained optimum with per-token budget
    ``δ`` (best-of-N and KL-RL are asymptotically equivalent); ``r_max`` once
    ``δ >= -log p(A_max)``.

    Args:
      lm: the base model (the length does not enter).
      reward: the per-token reward ``(K,)``.
      delta: scalar per-token rate ``δ = log(N)/n >= 0``.

    Returns:
      A 0-d array, the per-token reward ``x*``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(best_of_n_asymptotic_reward(lm, r, 0.0)), 6)
      0.5

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    log_p, r, dtype = _prepare(lm, reward)
    delta = _scalar(delta, "delta", dtype, minimum=0.0,
                    allowed="a real number >= 0 (inf allowed)")
    return _summary(log_p, r, _solve_lam_token_jit(log_p, r, delta)).mean


def best_of_n_kl_bound(num_candidates: ArrayLike | None = None,
                       log_num_candidates: ArrayLike | None = None) -> Array:
    r"""The classical best-of-N KL bound, exact for a continuous reward law.

    .. math::
        D(\pi_{\mathrm{BoN}} \| P) \le \log N - \frac{N-1}{N}
        = L - 1 + e^{-L}, \quad L = \log N.

    Give exactly one of ``num_candidates`` and ``log_num_candidates`` (the latter
    for ``N`` too large for a float, e.g. ``N = e^{nδ}``).  Python ints of any size
    are accepted for ``num_candidates``.

    Args:
      num_candidates: scalar ``N >= 1``.
      log_num_candidates: scalar ``log N >= 0``.

    Returns:
      A 0-d array ``>= 0``.

    Examples:
      >>> round(float(best_of_n_kl_bound(num_candidates=2)), 6)  # log 2 - 1/2
      0.193147
      >>> float(best_of_n_kl_bound(log_num_candidates=1000.0))
      999.0

    References:
      Beirami et al., `Theoretical guarantees on the best-of-n alignment policy
      <https://arxiv.org/abs/2401.01879>`_, 2024.
    """
    if (num_candidates is None) == (log_num_candidates is None):
        raise ValueError(
            "give exactly one of num_candidates and log_num_candidates, got "
            f"num_candidates={num_candidates!r}, log_num_candidates="
            f"{log_num_candidates!r}"
        )
    if num_candidates is not None:
        if isinstance(num_candidates, bool):
            raise ValueError(f"num_candidates must be a number >= 1, got "
                             f"{num_candidates!r}")
        if isinstance(num_candidates, int):
            if num_candidates < 1:
                raise ValueError(f"num_candidates must be >= 1, got {num_candidates!r}")
            log_n = jnp.asarray(math.log(num_candidates), jnp.result_type(float))
        else:
            n = jnp.asarray(num_candidates)
            if not jnp.issubdtype(n.dtype, jnp.floating):
                n = n.astype(jnp.result_type(float))
            n = _scalar(n, "num_candidates", n.dtype, minimum=1.0,
                        allowed="a real number >= 1 (inf allowed)")
            log_n = jnp.log(n)
    else:
        log_n = jnp.asarray(log_num_candidates)
        if not jnp.issubdtype(log_n.dtype, jnp.floating):
            log_n = log_n.astype(jnp.result_type(float))
        log_n = _scalar(log_n, "log_num_candidates", log_n.dtype, minimum=0.0,
                        allowed="a real number >= 0 (inf allowed)")
    return _bon_bound_impl(log_n)


@jax.jit
def _bon_bound_impl(log_n: Array) -> Array:
    small, l = _small(log_n)
    direct = log_n + jnp.expm1(-jnp.where(jnp.isinf(log_n), 0.0, log_n))
    return jnp.where(small, _series(-l, _REV_COEFFS), direct)


def subgaussian_reward_bound(variance: ArrayLike, kl_budget: ArrayLike) -> Array:
    r"""Sub-Gaussian bound on the reward gain of any policy within a KL budget.

    .. math::
        \mathbb{E}_Q[r] - \mathbb{E}_P[r] \le \sqrt{2 \sigma^2 D(Q \| P)}

    whenever ``r`` is ``σ²``-sub-Gaussian under ``P``.  For a sequence reward that
    is a sum of ``n`` i.i.d. tokens use ``σ² = n σ_token²`` with the sequence KL.
    Bounded rewards: ``σ² = (b-a)²/4`` (:func:`hoeffding_variance`).

    Args:
      variance: scalar sub-Gaussian variance proxy ``σ² >= 0``.
      kl_budget: scalar KL ``>= 0`` (``inf`` allowed).

    Returns:
      A 0-d array ``>= 0``.

    Examples:
      >>> float(subgaussian_reward_bound(2.0, 4.0))
      4.0

    References:
      Mroueh, `Information Theoretic Guarantees For Policy Alignment In Large
      Language Models <https://arxiv.org/abs/2406.05883>`_, 2024.
    """
    dtype = jnp.result_type(variance, kl_budget)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    variance = _scalar(variance, "variance", dtype, allow_inf=False, minimum=0.0,
                       allowed="a finite real number >= 0")
    budget = _scalar(kl_budget, "kl_budget", dtype, minimum=0.0,
                     allowed="a real number >= 0 (inf allowed)")
    return _sqrt_2_product(variance, budget)


@jax.jit
def _sqrt_2_product(a: Array, b: Array) -> Array:
    return jnp.sqrt(2 * a) * jnp.sqrt(b)  # no underflow of the product


def hoeffding_variance(reward: LinearReward, lm: MemorylessLM | None = None) -> Array:
    r"""Hoeffding's sub-Gaussian variance proxy of a bounded per-token reward.

    .. math::
        \sigma^2 = \frac{(r_{\max} - r_{\min})^2}{4}.

    Args:
      reward: the per-token reward ``(K,)``.
      lm: optional model; if given, only tokens with ``p(x) > 0`` count (a
        zero-probability token with a huge reward is ignored).

    Returns:
      A 0-d array ``>= 0``.

    Examples:
      >>> import jaxalign
      >>> float(hoeffding_variance(jaxalign.LinearReward([0.0, 1.0, 2.0])))
      1.0

    References:
      Hoeffding, `Probability inequalities for sums of bounded random variables
      <https://doi.org/10.1080/01621459.1963.10500830>`_, 1963.
    """
    if not isinstance(reward, LinearReward):
        raise ValueError(f"reward must be a LinearReward, got {type(reward).__name__}")
    r = reward.token_rewards
    if lm is None:
        return _hoeffding_impl(jnp.zeros_like(r), r)
    log_p, r, _ = _prepare(lm, reward)
    return _hoeffding_impl(log_p, r)


@jax.jit
def _hoeffding_impl(log_p: Array, r: Array) -> Array:
    support = log_p > -jnp.inf
    hi = jnp.max(jnp.where(support, r, -jnp.inf))
    lo = jnp.min(jnp.where(support, r, jnp.inf))
    return (hi - lo) ** 2 / 4


def jeffreys_gain(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Reward gain of the tilt via the Jeffreys identity (gain = J / λ).

    .. math::
        \mathbb{E}_{\Phi_\lambda}[R] - \mathbb{E}_P[R]
        = \frac{J(\Phi_\lambda, P)}{\lambda} = \beta\, J(\Phi_\lambda, P),

    with the limit 0 at ``λ = 0``.

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      lam: scalar finite tilt ``λ``.

    Returns:
      A 0-d array (sequence level).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=2)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(jeffreys_gain(lm, r, 1.0)), 6)  # 2 (e/(1+e) - 1/2)
      0.462117

    References:
      Monteiro Paes, Mackraz, Theobald, Danieli, `Theoretical Limits of Language
      Model Alignment <https://arxiv.org/abs/2605.07105>`_, 2026.
    """
    log_p, r, dtype = _prepare(lm, reward)
    lam = _lam(lam, dtype, allow_inf=False)
    j = _summary(log_p, r, lam).jeffreys
    return lm.length * jnp.where(lam == 0, 0.0, j / jnp.where(lam == 0, 1.0, lam))


def covariance_gain(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Reward gain of the tilt in covariance form, under the base model.

    .. math::
        \mathbb{E}_{\Phi_\lambda}[R] - \mathbb{E}_P[R]
        = n\,\frac{\mathrm{Cov}_p(r, e^{\lambda r})}{\mathbb{E}_p[e^{\lambda r}]}
        = n \sum_x p(x)\,(e^{\ell(x)} - 1)(r(x) - c)

    for any constant ``c`` (``ℓ = log(p_λ/p)``); evaluated without cancellation.

    Args:
      lm: the base model.
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ`` (``±inf`` allowed).

    Returns:
      A 0-d array (sequence level).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=2)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> round(float(covariance_gain(lm, r, 1.0)), 6)
      0.462117

    References:
      Monteiro Paes, Mackraz, Theobald, Danieli, `Theoretical Limits of Language
      Model Alignment <https://arxiv.org/abs/2605.07105>`_, 2026.
    """
    log_p, r, dtype = _prepare(lm, reward)
    return lm.length * _summary(log_p, r, _lam(lam, dtype)).gain


def report(lm: MemorylessLM, reward: LinearReward, *, lam: float | None = None,
           kl_budget: float | None = None, order: int = 4) -> dict:
    r"""All closed-form quantities at one tilt, as a dict of Python floats.

    Give exactly one of ``lam`` and ``kl_budget`` (sequence level; then
    ``lam = lam_for_kl(kl_budget)``).  Sequence-level unless the key says per token.
    What ``jaxalign theory`` prints (plain Python floats, ready for JSON), e.g.

    .. math::
        \mathrm{KL}(\Phi_\lambda\|P) = n\big(\lambda\Lambda'(\lambda)
        - \Lambda(\lambda)\big), \qquad
        E_{\Phi_\lambda}[R] = n\Lambda'(\lambda).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=4)
      >>> rep = report(lm, jaxalign.LinearReward([0.0, 1.0]), lam=0.0)
      >>> rep["kl"], rep["expected_reward"]
      (0.0, 2.0)

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    if (lam is None) == (kl_budget is None):
        raise ValueError("give exactly one of lam and kl_budget")
    n = lm.length
    if kl_budget is not None:
        lam = float(lam_for_kl(lm, reward, kl_budget))
    kl_seq = float(kl(lm, reward, lam))
    per_token_kl = kl_seq / n
    base_reward = float(expected_reward(lm, reward, 0.0))
    aligned_reward = float(expected_reward(lm, reward, lam))
    hoeffding = float(hoeffding_variance(reward, lm))
    out: dict = {
        "num_tokens": lm.num_tokens,
        "length": n,
        "probs": [float(p) for p in lm.probs],
        "rewards": [float(r) for r in reward.token_rewards],
        "kl_budget": kl_budget,
        "lam": lam,
        "beta": math.inf if lam == 0 else 1.0 / lam,
        "log_mgf": float(log_mgf(lm, reward, lam)),
        "cumulants": [float(c) for c in cumulants(lm, reward, order, lam)],
        "kl": kl_seq,
        "kl_per_token": per_token_kl,
        "max_kl": float(max_kl(lm, reward)),
        "reverse_kl": float(reverse_kl(lm, reward, lam)),
        "jeffreys": float(jeffreys(lm, reward, lam)),
        "expected_reward": aligned_reward,
        "base_expected_reward": base_reward,
        "reward_gain": float(covariance_gain(lm, reward, lam)),
        "optimal_reward": float(optimal_reward(lm, reward, kl_seq)),
        "rate_at_aligned_mean": float(rate_function(lm, reward,
                                                           aligned_reward / n)),
        "best_of_n_log_num_candidates": kl_seq,
        "best_of_n_kl_bound": float(best_of_n_kl_bound(log_num_candidates=kl_seq)),
        "best_of_n_asymptotic_reward": n * float(
            best_of_n_asymptotic_reward(lm, reward, per_token_kl)),
        "hoeffding_variance": hoeffding,
        "subgaussian_bound": float(subgaussian_reward_bound(n * hoeffding, kl_seq)),
    }
    if math.isfinite(lam) and lam != 0:
        out["jeffreys_gain"] = float(jeffreys_gain(lm, reward, lam))
    return out
