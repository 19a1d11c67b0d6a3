"""Closed-form theory of exponential tilting for memoryless models with linear rewards.

Pure functions of ``(lm, reward, scalar...)``; vmap over the scalar arguments.
See ``THEORY.md`` §1 for the mathematics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign._types import Array, ArrayLike
from jaxalign.models import LinearReward, MemorylessLM, check_compatible

__all__ = ["log_mgf", "tilt"]


def _tilted_logits(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    # A zero-probability token stays at -inf whatever lam * r is (0 * e^{huge} = 0).
    lam = jnp.asarray(lam, dtype=lm.log_probs.dtype)
    return jnp.where(
        jnp.isneginf(lm.log_probs), -jnp.inf, lm.log_probs + lam * reward.token_rewards
    )


def log_mgf(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> Array:
    r"""Per-token log moment generating function of the reward.

    .. math::
        \Lambda(\lambda) = \log \sum_x p(x)\, e^{\lambda r(x)}.

    Args:
      lm: the base model (``K`` tokens).
      reward: the per-token reward ``(K,)``.
      lam: scalar tilt ``λ`` (any real).

    Returns:
      A 0-d array.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> float(log_mgf(lm, r, 0.0))
      0.0
    """
    check_compatible(lm, reward)
    return jax.nn.logsumexp(_tilted_logits(lm, reward, lam))


def tilt(lm: MemorylessLM, reward: LinearReward, lam: ArrayLike) -> MemorylessLM:
    r"""The exponentially tilted model, the KL-optimal policy.

    .. math::
        p_\lambda(x) = p(x)\, e^{\lambda r(x) - \Lambda(\lambda)}, \qquad
        \Phi_\lambda = p_\lambda^{\otimes n}.

    Returns a :class:`MemorylessLM` of the same length (tilting the sequence law by
    ``e^{λR}`` is exactly i.i.d. sampling from ``p_λ``).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=3)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> tilt(lm, r, 0.0).probs.tolist()
      [0.5, 0.5]
    """
    check_compatible(lm, reward)
    logits = _tilted_logits(lm, reward, lam)
    return MemorylessLM.tree_unflatten(lm.length, (jax.nn.log_softmax(logits),))
