"""Draws from a model itself: tokens, rewards (token or law level) and the tilt."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_key,
    check_positive_int,
    check_real,
    prng_jit,
)
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.sample._counts import _base_model, _counts_view, _words_length
from jaxalign.sample._kernels import (
    SampleResult,
    _check_first_index,
    _check_method,
    _check_model,
    _check_optional_int,
    _check_samples_range,
    _law_of,
    _law_stage,
    _level,
    _per_sample,
    _sizes,
)

# ----------------------------------------------------------------------- tokens/rewards


@prng_jit("num_samples", "batch_size")
def _tokens_impl(key, lm, first_index, num_samples, batch_size):
    stage = lm.sampler_stage(None)  # the model's own token sampler (the protocol)
    return _per_sample(stage, key, first_index, num_samples, batch_size)


def tokens(
    key: PRNGKey,
    lm: MemorylessLM,
    num_samples: int,
    *,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array:
    r"""Draw ``num_samples`` sequences ``y ~ P = p^{\otimes n}``.

    .. math::
        y_i = (x_{i1}, \dots, x_{in}), \quad x_{ij} \overset{iid}{\sim} p .

    Any base model is drawn through its own sampler stage
    (:meth:`jaxalign.models.BaseModel.sampler_stage`): a :class:`jaxalign.MarkovLM`
    token by token along the chain.

    Args:
      key: a typed PRNG key.
      lm: the model (``K`` tokens, ``length`` n).
      num_samples: number of sequences (static).
      batch_size: sequences generated per vectorised step (static; memory only,
        never changes the numbers).
      first_index: index of the first sample of the run (for splitting a run
        over devices or hosts).

    Returns:
      ``(num_samples, n)`` int32 tokens.  Sample ``i`` is the sequence that
      :func:`rewards` scores for the same key.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.2, 0.8], length=5)
      >>> tokens(jax.random.key(0), lm, 3).shape
      (3, 5)
    """
    check_key(key)
    _check_model(lm, any_model=True)
    num_samples = check_positive_int(num_samples, "num_samples")
    batch_size = _check_optional_int(batch_size, "batch_size")
    _check_samples_range(num_samples, first_index)
    return _tokens_impl(
        key,
        lm,
        _check_first_index(first_index),
        num_samples,
        _sizes(num_samples, lm.length, batch_size),
    )


@prng_jit("num_samples", "batch_size")
def _rewards_impl(key, lm, reward, first_index, num_samples, batch_size):
    stage = lm.sampler_stage(reward)  # tokens, or counts on a counts view
    return _per_sample(stage, key, first_index, num_samples, batch_size)


@prng_jit("num_samples", "batch_size")
def _law_rewards_impl(key, law, log_num, first_index, num_samples, batch_size):
    stage = _law_stage(law, log_num)
    return _per_sample(stage, key, first_index, num_samples, batch_size)


def _validate_sampler(key, lm, reward, num_samples, method, first_index,
                      any_model=False):
    check_key(key)
    _check_model(lm, reward, any_model)
    num_samples = check_positive_int(num_samples, "num_samples")
    method = _check_method(method)
    _check_samples_range(num_samples, first_index)
    return num_samples, method, _check_first_index(first_index)


def rewards(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    num_samples: int,
    *,
    level: str = "token",
    method: str | None = None,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array:
    r"""Draw sequence rewards ``R(y) = sum_i r(y_i)`` with ``y ~ P``.

    .. math::
        R = \sum_{i=1}^n r(x_i), \qquad x_i \overset{iid}{\sim} p .

    Args:
      key: a typed PRNG key.
      lm: the model.
      reward: per-token rewards ``(K,)``.
      num_samples: number of draws (static).
      level: ``"token"`` (draw every token through the model's sampler stage, a
        chain's too; tokens never reach memory), ``"counts"`` (draw the token
        counts ``c ~ Multinomial(n, p)`` by conditional binomials and
        ``R = sum_k c_k r_k``: O(K) per sequence whatever ``n``, any rewards; a
        memoryless model) or ``"law"`` (invert the exact lattice CDF of ``R``;
        needs a concrete model and lattice rewards, see
        :func:`jaxalign.exact.reward_law`).
      batch_size: draws per vectorised step (static; never changes the numbers).
      first_index: index of the first sample of the run.

    Returns:
      ``(num_samples,)`` rewards in the reward's dtype.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> rewards(jax.random.key(0), lm, r, 2).shape
      (2,)
    """
    method = _level(level, method)
    num_samples, method, first = _validate_sampler(
        key, lm, reward, num_samples, method, first_index, any_model=True
    )
    batch_size = _check_optional_int(batch_size, "batch_size")
    if method == "law":
        law = _law_of(_base_model(lm), reward)
        return _law_rewards_impl(
            key,
            law,
            jnp.zeros((), law.values.dtype),
            first,
            num_samples,
            _sizes(num_samples, 1, batch_size),
        )
    if method == "counts":
        lm = _counts_view(lm)
    return _rewards_impl(key, lm, reward, first, num_samples,
                         _sizes(num_samples, _words_length(lm), batch_size))


def _check_lam(lam: Any) -> None:
    check_real(lam, "lam", minimum=0.0)


def tilted(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    lam: ArrayLike,
    num_samples: int,
    *,
    level: str = "token",
    method: str | None = None,
    return_tokens: bool = False,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array | SampleResult:
    r"""Draw rewards under the KL-optimal policy ``Φ_λ = φ_λ^{⊗n}``.

    .. math::
        \varphi_\lambda(x) = p(x)\, e^{\lambda r(x) - \Lambda(\lambda)} .

    Tilting the sequence law by ``e^{λR}`` is exactly i.i.d. sampling from
    ``φ_λ``, so this is :func:`rewards` on :func:`jaxalign.theory.tilt`.  For a
    :class:`jaxalign.MarkovLM` the tilt is the time-inhomogeneous chain
    :func:`jaxalign.markov.tilt` (``lm.tilt(reward, lam)``), drawn token by token.

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)`` (used both to tilt and to score).
      lam: the tilt ``λ >= 0`` (finite; traced, so vmap over it freely).
      num_samples: number of draws (static).
      level: ``"token"``, ``"counts"`` or ``"law"`` (see :func:`rewards`).
      method: deprecated name of ``level`` (jaxalign < 0.3).
      return_tokens: also return the tokens (token level only).
      batch_size: draws per vectorised step (static).
      first_index: index of the first sample of the run.

    Returns:
      ``(num_samples,)`` rewards, or a :class:`SampleResult` with the tokens.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> tilted(jax.random.key(0), lm, r, 1.0, 2).shape
      (2,)
    """
    method = _level(level, method)
    _check_lam(lam)
    _check_model(lm, reward, any_model=True)
    if return_tokens and method != "token":
        raise ValueError(f"return_tokens=True needs level='token', got {method!r}")
    tilted_lm = lm.tilt(reward, lam)  # a model of its own (a chain: inhomogeneous)
    if return_tokens:
        r = rewards(
            key,
            tilted_lm,
            reward,
            num_samples,
            batch_size=batch_size,
            first_index=first_index,
        )
        t = tokens(
            key, tilted_lm, num_samples, batch_size=batch_size, first_index=first_index
        )
        return SampleResult(r, t)
    return rewards(
        key,
        tilted_lm,
        reward,
        num_samples,
        level=method,
        batch_size=batch_size,
        first_index=first_index,
    )
