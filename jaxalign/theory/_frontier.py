"""The tilt and its KL–reward frontier: ``Λ``, cumulants, KL, reverse KL, Jeffreys,
``λ`` for a KL budget, the optimal reward, and the reward gain identities.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign._types import (
    Array,
    ArrayLike,
    check_positive_int,
)
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.theory._tilt import (
    _cumulants_impl,
    _lam,
    _prepare,
    _scalar,
    _solve_lam_token_jit,
    _summary,
)

# Cumulants come from an unrolled moment recursion (see cumulants).
_MAX_ORDER = 20


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
      order: static int from 1 to 20, the number of cumulants.
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
    if order > _MAX_ORDER:
        raise ValueError(
            f"order must be an integer from 1 to {_MAX_ORDER}, got {order}: the "
            "recursion is unrolled into order**2 terms (order 64 took 2 minutes to "
            "compile; past 67 its binomial coefficients overflow)")
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
