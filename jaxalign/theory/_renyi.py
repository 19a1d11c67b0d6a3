"""Rényi divergence and Rényi cross-entropy between two token distributions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    is_concrete,
    light_jit,
    log_tolerance,
)
from jaxalign.theory._tilt import (
    _log_mean_exp,
    _scalar,
)


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


def _categorical_kl(log_a: Array, log_b: Array) -> Array:
    """KL(a || b) = sum_x a(x) log(a(x)/b(x)) from log-probabilities (0 log 0 = 0)."""
    a = jnp.exp(log_a)
    return jnp.sum(jnp.where(a > 0, a * (log_a - log_b), 0.0))


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


@light_jit
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
