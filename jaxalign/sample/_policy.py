"""Any policy of :mod:`jaxalign.policies`: the generic token-level rejection
sampler and the dispatch between a policy's own samplers and the law level."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_positive_int,
    float_dtype,
    is_concrete,
    prng_jit,
)
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.sample._counts import (
    _check_return_tokens,
    _cost_length,
    _counts_view,
    _words_length,
)
from jaxalign.sample._kernels import (
    _LEVELS,
    SampleResult,
    _check_optional_int,
    _indices,
    _map_samples,
    _sizes,
)
from jaxalign.sample._plain import (
    _validate_sampler,
)
from jaxalign.sample._selection import (
    _check_work,
    best_of_n_from_law,
)

# ----------------------------------------------------------------------- any policy


@prng_jit("num_samples", "chunk", "batch_size", "return_tokens")
def _reweight_impl(key, lm, reward, edges, log_accept, first_index, num_samples,
                   chunk, batch_size, return_tokens):
    stage = lm.sampler_stage(reward)
    indices = _indices(first_index, num_samples)
    dtype = float_dtype(*jax.tree.leaves(reward))

    def propose(key_i, j):
        key_tokens, key_accept = jax.random.split(jax.random.fold_in(key_i, j))
        r = stage.consume(stage.draw(key_tokens))
        cls = jnp.searchsorted(edges, r)
        # Accept with probability a = g(R) / max g: U <= a  <=>  -E <= log a.
        exponential = jax.random.exponential(key_accept, (), dtype)
        return r, -exponential <= log_accept[cls]

    def one(i):
        key_i = jax.random.fold_in(key, i)

        def cond(state):
            return ~state[1]

        def body(state):
            start, _, _, _ = state
            index = start + jnp.arange(chunk, dtype=jnp.uint32)
            r, ok = jax.vmap(lambda j: propose(key_i, j))(index)
            arg = jnp.argmax(ok)
            return start + chunk, ok[arg], r[arg], index[arg]

        init = (jnp.uint32(0), jnp.bool_(False), jnp.zeros((), dtype), jnp.uint32(0))
        _, _, r, index = jax.lax.while_loop(cond, body, init)
        return r, index

    reward_out, index = _map_samples(one, indices, batch_size)
    if not return_tokens:
        return reward_out, None
    token_stage = lm.sampler_stage(None)

    def tokens_of(i, j):
        key_tokens, _ = jax.random.split(
            jax.random.fold_in(jax.random.fold_in(key, i), j))
        return token_stage.consume(token_stage.draw(key_tokens))

    return reward_out, jax.vmap(tokens_of)(indices, index)


def reweighted(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    values: ArrayLike,
    log_weight: ArrayLike,
    num_samples: int,
    *,
    proposals_per_step: int = 1,
    return_tokens: bool = False,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array | SampleResult:
    r"""Token-level draws from ``π = p·g(R)`` by exact rejection from the base model.

    .. math::
        y \sim P, \quad \text{accept with probability } g(R(y)) / \max g .

    The expected number of proposals per draw is ``max g / E_P g``.  ``R(y)`` is
    matched to the nearest of ``values``.  The proposals are the model's own token
    draws (``lm.sampler_stage``): a :class:`jaxalign.MemorylessLM`'s or a
    :class:`jaxalign.MarkovLM`'s alike.  :func:`policy` calls this with ``g``
    from the policy's exact law; ``values`` and ``log_weight`` may be traced (a
    sweep vmaps over them).

    Args:
      key: a typed PRNG key.
      lm: the base model (any :class:`jaxalign.models.BaseModel`).
      reward: per-token rewards ``(K,)`` (or a :class:`jaxalign.PairReward` for a
        chain).
      values: ``(M,)`` ascending reward values covering the support of ``R``.
      log_weight: ``(M,)`` ``log g`` on ``values`` (any additive constant; ``-inf``
        where ``g = 0``).
      num_samples: number of draws (static).
      proposals_per_step: proposals drawn per loop step (static; never changes
        the numbers).
      return_tokens: also return the accepted sequences.
      batch_size: draws per vectorised step (static).
      first_index: index of the first sample of the run.

    Returns:
      ``(num_samples,)`` rewards, or a :class:`SampleResult` with the tokens.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=2)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> support = [0.0, 1.0, 2.0]
      >>> reweighted(jax.random.key(0), lm, r, support, [0.0, 1.0, 2.0], 3).shape
      (3,)
    """
    # any_model: a MarkovLM's own sampler stage checks it and the reward.
    num_samples, _, first = _validate_sampler(key, lm, reward, num_samples, "token",
                                              first_index, any_model=True)
    chunk = check_positive_int(proposals_per_step, "proposals_per_step")
    batch_size = _check_optional_int(batch_size, "batch_size")
    _check_return_tokens(return_tokens, "token", lm)
    # The reward's dtype, whatever its family (a LinearReward, a PairReward).
    dtype = float_dtype(*jax.tree.leaves(reward))
    xp = np if is_concrete(values) and is_concrete(log_weight) else jnp
    values = xp.asarray(values, dtype)
    log_weight = xp.asarray(log_weight, dtype)
    if values.ndim != 1 or log_weight.shape != values.shape:
        raise ValueError(f"values and log_weight must have one shape (M,), got "
                         f"{values.shape} and {log_weight.shape}")
    edges = 0.5 * (values[1:] + values[:-1])
    log_accept = log_weight - xp.max(log_weight)
    r, toks = _reweight_impl(key, lm, reward, edges, log_accept, first, num_samples,
                             chunk,
                             _sizes(num_samples, chunk * _words_length(lm), batch_size),
                             bool(return_tokens))
    return SampleResult(r, toks) if return_tokens else r


class _Reweighting(NamedTuple):
    """How :func:`reweighted` draws a policy: its support, its acceptance
    ``log(g / max g)`` and the proposals per loop step."""

    values: np.ndarray
    log_accept: np.ndarray
    proposals_per_step: int


def _reweighting(law, num_samples: int, length: int) -> _Reweighting:
    """The rejection plan for a :class:`jaxalign.exact.PolicyLaw`; raises
    ``ValueError`` up front when the expected proposals (acceptance is
    ``1 / max g``) exceed the token budget (:func:`token_budget`)."""
    log_g = law.log_weight()
    log_max = float(np.max(log_g))
    _check_work(num_samples * math.exp(min(log_max, 700.0)), length,
                f"token-level rejection from the base model (acceptance 1/max g = "
                f"{math.exp(-log_max):.3g}, {num_samples} samples)",
                'sample at the law level (level=\'law\', or sampling = "law" in a '
                "sweep)")
    # A power of two near the expected proposals per draw, at most 256.
    step = 1 << min(8, max(0, math.ceil(log_max / math.log(2))))
    return _Reweighting(np.asarray(law.values, np.float64), log_g - log_max, step)


def policy(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    policy,
    num_samples: int,
    *,
    level: str = "token",
    return_tokens: bool = False,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array | SampleResult:
    r"""Draw rewards under any policy ``π = p·g(R)`` of :mod:`jaxalign.policies`.

    .. math::
        y \sim \pi(y) = p(y)\, g(R(y)).

    ``level="token"`` draws every token: with the policy's own sampler where it
    has one (:func:`rewards`, :func:`tilted`, :func:`best_of_n`,
    :func:`soft_best_of_n`), otherwise by exact rejection from the base model (its
    own token sampler: a :class:`jaxalign.MemorylessLM` or a
    :class:`jaxalign.MarkovLM`), accepting a proposal ``y`` with probability
    ``g(R(y)) / max g`` (``g`` from the policy's exact law; the expected number of
    proposals is ``max g``, and work above the token budget, :func:`token_budget`,
    is refused up front).
    ``level="counts"`` is the token level with every sequence's reward drawn from
    its token counts ``c ~ Multinomial(n, p)`` (O(K) per sequence whatever ``n``;
    a :class:`jaxalign.MemorylessLM` only, and no tokens to return).
    ``level="law"`` draws ``R`` from the policy's exact law by inverting its CDF
    (best-of-N inverts ``F^N``, so ``N`` may be astronomically large).  Proposal
    ``j`` of sample ``i`` uses ``split(fold_in(fold_in(key, i), j))``.

    Args:
      key: a typed PRNG key.
      lm: the base model (any :class:`jaxalign.models.BaseModel`).
      reward: per-token rewards ``(K,)`` (or a :class:`jaxalign.PairReward` for a
        chain).
      policy: a :class:`jaxalign.policies.Policy`.
      num_samples: number of draws (static).
      level: ``"token"``, ``"counts"`` or ``"law"``.
      return_tokens: also return the sequences (token level).
      batch_size: draws per vectorised step (static; never changes the numbers).
      first_index: index of the first sample of the run.

    Returns:
      ``(num_samples,)`` rewards, or a :class:`SampleResult` with the tokens.

    Examples:
      >>> import jax, jaxalign
      >>> from jaxalign import policies
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> policy(jax.random.key(0), lm, r, policies.ChiSquared(0.5), 3).shape
      (3,)
    """
    from jaxalign.policies import Policy

    if not isinstance(policy, Policy):
        raise ValueError(
            f"policy must be a jaxalign.policies.Policy, got {type(policy).__name__}")
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
    if return_tokens and level != "token":
        raise ValueError(f"return_tokens=True needs level='token', got {level!r}")
    if level == "counts":
        _counts_view(lm)  # a MemorylessLM, else ValueError
    # any_model: a MarkovLM's own sampler stage checks it and the reward.
    num_samples, _, _ = _validate_sampler(key, lm, reward, num_samples, "token",
                                          first_index, any_model=True)
    batch_size = _check_optional_int(batch_size, "batch_size")
    # The count level is the token level on the model seen through its counts.
    model = _counts_view(lm) if level == "counts" else lm
    if level != "law" and policy.has_token_sampler:
        policy.check_token_sampling()
        return policy.sample_tokens(key, model, reward, num_samples,
                                    first_index=first_index, batch_size=batch_size,
                                    return_tokens=return_tokens)
    law = lm.reward_law(reward)
    if level != "law":
        from jaxalign import exact

        plan = _reweighting(exact.policy_law_from_law(law, policy), num_samples,
                            _cost_length(model))
        return reweighted(key, model, reward, plan.values, plan.log_accept, num_samples,
                          proposals_per_step=plan.proposals_per_step,
                          return_tokens=return_tokens, batch_size=batch_size,
                          first_index=first_index)
    values, log_pmf, log_num = policy.law_sampling(
        lm, reward, np.asarray(law.values), np.asarray(law.log_pmf))
    # Draws in the law's (the model's) dtype, as the sweep does: a policy's log
    # weights are float64 whatever the model (a float32 model under x64 failed).
    dtype = np.asarray(law.values).dtype
    values, log_pmf = np.asarray(values, dtype), np.asarray(log_pmf, dtype)
    return best_of_n_from_law(key, values, log_pmf, None, num_samples,
                              log_num_candidates=log_num, batch_size=batch_size,
                              first_index=first_index)
