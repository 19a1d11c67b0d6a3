"""Perron–Frobenius asymptotics: ``Λ(λ) = log ρ(P_λ)``, the twisted chain, rates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    check_positive_int,
    is_concrete,
    light_jit,
    small_work,
)
from jaxalign.markov._finite import (
    _kl_terms,
    _solve_kl,
)
from jaxalign.markov._model import (
    MarkovLM,
    TiltSummary,
    _check_model,
    _prepare,
    _scalar,
)

# ------------------------------------------------------- Perron–Frobenius asymptotics

# Light compiler options (light_jit) for K^2 (times a cumulant order) <= 2^14: the
# first call of lam_for_kl_rate at K = 16 took 2.2 s instead of 4.0 s, but at K = 256
# each call ran in 0.8 s instead of 0.4 s, so large chains keep XLA's defaults.
_SMALL = small_work(2**14)
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


_NORMAL = 1e-290  # above float64's smallest normal number with a margin of K <= 1e18


def _log_square(power: Array) -> Array:
    """``log(exp(power) @ exp(power))``, shifted by its maximum.

    One matrix product of ``exp(power - row max) @ exp(power - column max)``
    (O(K^3) flops in BLAS; the log-space sum over a ``(K, K, K)`` array took 0.2 s
    at K = 256, 50x longer).  Every entry of the product is a sum of non-negative
    terms, so when every entry is at least ``1e-290`` (a normal number: the terms
    lost below float64's range are relatively ``< K 1e-18``) it has the same
    relative accuracy as the log-space sum; otherwise (a dynamic range beyond
    about 660 in log, or a zero row) the log-space sum is used.  (The law's
    :func:`jaxalign.markov._law._log_matmul` scales one side only: its other factor
    is a transition matrix, while both factors here are powers of ``P_λ``, whose
    entries can underflow on either side.)
    """
    row = jnp.max(power, axis=1, keepdims=True)
    col = jnp.max(power, axis=0, keepdims=True)
    row = jnp.where(jnp.isfinite(row), row, 0.0)
    col = jnp.where(jnp.isfinite(col), col, 0.0)
    product = jnp.matmul(jnp.exp(power - row), jnp.exp(power - col),
                         precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs

    def fast():
        return jnp.log(product) + row + col

    def exact():
        return jax.nn.logsumexp(power[:, :, None] + power[None, :, :], axis=1)

    squared = jax.lax.cond(jnp.min(product) >= _NORMAL, fast, exact)
    return squared - jnp.max(squared)


def _perron_vector(log_m: Array) -> Array:
    """Log right Perron vector of ``exp(log_m)`` (``Σ e^v = 1``), by power
    iteration on ``M^64`` in log space (``log_m`` primitive)."""
    power = log_m
    # A loop, not unrolled: one squaring in the program (and its trace).
    power = jax.lax.fori_loop(0, _SQUARINGS, lambda _, m: _log_square(m), power)
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


@light_jit(light_when=_SMALL)
def _perron_result(log_trans, pair, lam) -> PerronResult:
    pp = _perron(_tilted_matrix(log_trans, pair, lam))
    return PerronResult(*pp, *_rates(log_trans, pair, lam, pp))


def _prepare_perron(lm, reward, function: str, name: str, value, **checks):
    """``(log P, pair rewards, the scalar argument)`` of an asymptotic function:
    the chain must be primitive; ``value`` is checked as the real scalar ``name``."""
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    _check_primitive(lm, function)
    return log_trans, pair, _scalar(value, name, dtype, **checks)


def perron(lm: MarkovLM, reward, lam: ArrayLike) -> PerronResult:
    r"""Perron root, vectors and twisted chain of ``P_λ`` (THEORY §11).

    .. math::
        \Lambda(\lambda) = \log\rho(P_\lambda), \quad
        Q_\lambda(a, b) = \frac{P_\lambda(a, b) v(b)}{\rho v(a)}, \quad
        \pi_\lambda = u \circ v, \quad \Lambda'(\lambda) = \pi_\lambda Q_\lambda r,

    so ``log Z_n(λ)/n → Λ(λ)`` and ``KL(φ_λ‖P)/n → λΛ' - Λ``.  The vectors come
    from power iteration on ``P_λ^{64}`` (squared by scaled matrix products, swept in
    log space; no ``eig``: it runs on every backend); ``Λ`` has an exact derivative
    (``custom_jvp``, ``ρ' = u·(∂P_λ) v / u·v``), higher ones by forward mode through
    the iteration (:func:`cumulant_rates`).  The initial law and first-token rewards
    do not enter.

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
    log_trans, pair, lam = _prepare_perron(lm, reward, "perron", "lam", lam)
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
    log_trans, pair, lam = _prepare_perron(lm, reward, "scgf", "lam", lam)
    return _scgf_jit(log_trans, pair, lam)


@light_jit(light_when=_SMALL)
def _scgf_jit(log_trans, pair, lam):
    return _log_rho(_tilted_matrix(log_trans, pair, lam))


@light_jit(static_argnames="order", light_when=_SMALL)
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
    log_trans, pair, lam = _prepare_perron(lm, reward, "cumulant_rates", "lam", lam)
    return _cumulants(log_trans, pair, lam, order)


def _solve_rate(log_trans, pair, delta):
    def kl_and_slope(lam):
        (_, kl_), (drate, _) = jax.jvp(lambda l: _rates(log_trans, pair, l),
                                       (lam,), (jnp.ones_like(lam),))
        return kl_, lam * drate

    return _solve_kl(kl_and_slope, delta, jnp.max(pair) - jnp.min(pair))


def _lam_rate(log_trans, pair, delta):
    safe = jnp.where(delta > 0, delta, 1.0)
    lam = _solve_rate(log_trans, pair, safe)
    return jnp.where(delta > 0, lam, 0.0)


_lam_rate_jit = light_jit(_lam_rate, light_when=_SMALL)


@light_jit(light_when=_SMALL)
def _limit_reward(log_trans, pair, delta):
    return _rates(log_trans, pair, _lam_rate(log_trans, pair, delta))[0]


def lam_for_kl_rate(lm: MarkovLM, reward, delta: ArrayLike) -> Array:
    r"""The ``λ_δ >= 0`` whose twisted chain has KL rate ``δ``:
    ``λ_δ Λ'(λ_δ) - Λ(λ_δ) = δ`` (``lim_n λ_{nδ}`` of :func:`lam_for_kl`).

    Safeguarded Newton in ``log λ`` on the KL rate (``d/dλ = λ Λ''(λ)``); at or
    beyond the largest KL rate ``λ`` runs up to the dtype's max.

    Raises:
      ValueError: a time-inhomogeneous chain, or one that is not irreducible and
        aperiodic.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> lam = lam_for_kl_rate(lm, r, 0.05)
      >>> round(float(tilt_rates(lm, r, lam).kl), 12)
      0.05
    """
    log_trans, pair, delta = _prepare_perron(lm, reward, "lam_for_kl_rate", "delta",
                                             delta, minimum=0.0)
    return _lam_rate_jit(log_trans, pair, delta)


@light_jit(light_when=_SMALL)
def _tilt_rates(log_trans, pair, lam) -> TiltSummary:
    # Λ'' = dΛ'/dλ: one forward-mode derivative of the rates (as _solve_rate).
    (mean, kl_), (variance, _) = jax.jvp(lambda l: _rates(log_trans, pair, l),
                                         (lam,), (jnp.ones_like(lam),))
    return TiltSummary(_log_rho(_tilted_matrix(log_trans, pair, lam)), mean,
                       variance, kl_)


def tilt_rates(lm: MarkovLM, reward, lam: ArrayLike) -> TiltSummary:
    r"""The per-token limits of :func:`tilt_summary` at a fixed ``λ``, from the
    Perron root of ``P_λ``:

    .. math::
        \frac{\log Z_n}{n} \to \Lambda(\lambda) = \log\rho(P_\lambda), \quad
        \frac{E_\varphi R}{n} \to \Lambda'(\lambda), \quad
        \frac{\mathrm{Var}_\varphi R}{n} \to \Lambda''(\lambda), \quad
        \frac{\mathrm{KL}(\varphi_\lambda\|P)}{n} \to \lambda\Lambda' - \Lambda,

    the KL rate as ``Σ π_λ(a) KL(Q_λ(a, ·)‖P(a, ·))`` (non-negative terms); the
    gaps to the finite-n values shrink like ``1/n``.

    Raises:
      ValueError: a time-inhomogeneous chain, or one that is not irreducible and
        aperiodic.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 0.5, length=1)  # memory:
      >>> s = tilt_rates(lm, jaxalign.LinearReward([0.0, 1.0]), 0.0)
      >>> round(float(s.mean), 12), round(float(s.variance), 9)  # 0.25 (1+s)/(1-s)
      (0.5, 0.75)
    """
    log_trans, pair, lam = _prepare_perron(lm, reward, "tilt_rates", "lam", lam)
    return _tilt_rates(log_trans, pair, lam)


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
    log_trans, pair, delta = _prepare_perron(lm, reward, "limit_reward_per_token",
                                             "delta", delta, minimum=0.0)
    return _limit_reward(log_trans, pair, delta)


@light_jit(light_when=_SMALL)
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
    log_trans, pair, x = _prepare_perron(lm, reward, "rate_function", "x", x)
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


@light_jit(light_when=_SMALL)
def _renyi_rate(log_q, log_p, alpha):
    on = (log_q > -jnp.inf) & (log_p > -jnp.inf)
    log_m = jnp.where(on, alpha * jnp.where(on, log_q, 0.0)
                      + (1 - alpha) * jnp.where(on, log_p, 0.0), -jnp.inf)
    return _perron(log_m).log_rho / (alpha - 1)
