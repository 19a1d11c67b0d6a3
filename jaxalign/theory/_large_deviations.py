"""Large deviations: the rate function, the SCGF in its three forms (direct,
Rényi cross-entropy, Rényi divergence) and the best-of-N asymptotic reward.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign._types import (
    Array,
    ArrayLike,
    is_concrete,
    light_jit,
)
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.theory._renyi import (
    _renyi_cross_entropy,
    _renyi_divergence,
)
from jaxalign.theory._tilt import (
    _lam,
    _prepare,
    _rate_impl,
    _scalar,
    _solve_lam_token_jit,
    _summary,
    _Tilted,
    _tilted,
)


class _ScgfForms(NamedTuple):
    direct: Array  # () Lambda(lam + t) - Lambda(lam)
    cross_entropy: Array  # () R2: t [log C - H_{1+t}(p_lam; q_r)]
    divergence: Array  # () R3: (t/lam) [Lambda(lam) + D_{1+t/lam}(p_lam || p)]


@light_jit
def _scgf_impl(log_p: Array, r: Array, t: Array, lam: Array) -> _ScgfForms:
    tl = _tilted(log_p, r, lam)
    direct = _tilted(tl.log_phi, r, t).log_mgf
    log_c, q_r = _reward_softmax(tl)
    cross = t * (log_c - _renyi_cross_entropy(tl.phi, q_r, 1 + t))
    ratio = t / jnp.where(lam == 0, 1.0, lam)
    d = _renyi_divergence(tl.phi, tl.p, 1 + ratio)
    divergence = jnp.where(lam == 0, jnp.nan, ratio * (tl.log_mgf + d))
    return _ScgfForms(direct, cross, divergence)


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
