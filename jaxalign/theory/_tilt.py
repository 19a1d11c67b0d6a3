"""The tilt core: everything about ``p_λ ∝ p·e^{λr}`` for one scalar ``λ``.

The per-token log-ratio, the non-cancelling forms of KL, reverse KL and Jeffreys,
the safeguarded Newton solvers for ``KL(λ) = δ`` and ``Λ'(θ) = x``, the jitted
kernels behind the public functions, and the validation shared by them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    check_real,
    device_array,
    is_concrete,
    light_jit,
)
from jaxalign.models import LinearReward, MemorylessLM, check_compatible

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


_solve_lam_token_jit = light_jit(_solve_lam_token)


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


class _Summary(NamedTuple):
    log_mgf: Array  # () Lambda(lam)
    log_phi: Array  # (K,) log p_lam
    kl: Array  # () per-token KL(p_lam || p)
    reverse_kl: Array  # () per-token KL(p || p_lam)
    jeffreys: Array  # () per-token Jeffreys divergence
    mean: Array  # () Lambda'(lam)
    gain: Array  # () per-token Lambda'(lam) - Lambda'(0), covariance form
    log_p_top: Array  # () log p(A_max)


@light_jit
def _summary(log_p: Array, r: Array, lam: Array) -> _Summary:
    t = _tilted(log_p, r, lam)
    return _Summary(t.log_mgf, t.log_phi, _kl_token(t), _rev_token(t),
                    _jeffreys_token(t), t.mean, jnp.sum(t.w * t.u), _log_p_top(t))


@light_jit
def _rate_impl(log_p: Array, r: Array, x: Array, lam: Array) -> Array:
    return _rate_token(_tilted(log_p, r, lam).log_phi, r, x)


@light_jit(static_argnums=3)
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
    # Host numbers stay NumPy until device_array: an eager cast compiles a program
    # first in a new process.
    arr = value if isinstance(value, jax.Array) else np.asarray(value)
    if arr.ndim != 0:
        raise ValueError(
            f"{name} must be a scalar (shape ()), got shape {arr.shape}; "
            f"use jax.vmap to evaluate a batch"
        )
    return device_array(arr, dtype)


def _lam(lam, dtype, *, allow_inf=True):
    allowed = "a real number or ±inf" if allow_inf else "a finite real number"
    return _scalar(lam, "lam", dtype, allow_inf=allow_inf, allowed=allowed)
