"""Bounds: the best-of-N KL bound, the sub-Gaussian reward bound and Hoeffding's
variance proxy.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxalign._types import (
    Array,
    ArrayLike,
    check_exactly_one,
    light_jit,
)
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.theory._tilt import (
    _REV_COEFFS,
    _prepare,
    _scalar,
    _series,
    _small,
)


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
    check_exactly_one(num_candidates=num_candidates,
                      log_num_candidates=log_num_candidates)
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


@light_jit
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


@light_jit
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


@light_jit
def _hoeffding_impl(log_p: Array, r: Array) -> Array:
    support = log_p > -jnp.inf
    hi = jnp.max(jnp.where(support, r, -jnp.inf))
    lo = jnp.min(jnp.where(support, r, jnp.inf))
    return (hi - lo) ** 2 / 4
