"""The count level: a sequence's token counts ``c ~ Multinomial(n, p)`` by
conditional binomials, so ``R = sum_k c_k r_k`` costs O(K) whatever ``n``.

A memoryless model's reward depends on a sequence only through its counts, so
drawing the counts is exact in law for every sampler that needs only ``R``.  The
level is one mechanism: :func:`_counts_view` wraps a :class:`MemorylessLM` in a
model whose sampler stage (``sampler_stage``) draws counts instead of tokens, and
every sampler that draws through ``lm.sampler_stage(reward)`` (best-of-N, its
curve, soft best-of-N, rejection, a policy's own sampler, the rejection-from-base
route of :func:`jaxalign.sample.policy`) takes the view as it is.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import Array
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.sample._kernels import _fixed_order_sum, _Stage

# Token-equivalents of one binomial draw, for the work budget: about 320 on a
# 2-core CPU (benchmarks/bench_counts.py --quick, a loaded machine: 2.4e4
# sequences/s at K = 16, i.e. 3.7e5 binomials/s, against 1.2e8 tokens/s at the
# token level).
_TOKENS_PER_BINOMIAL = 320
# Random 32-bit words a count draw keeps live per token (memory sizing only).
_WORDS_PER_COUNT = 16


def _sequence_cost(num_tokens: int) -> int:
    """Token-equivalents of one count-level sequence (K - 1 binomials), for the
    work budget."""
    return max(1, num_tokens - 1) * _TOKENS_PER_BINOMIAL


def _conditional_probs(log_probs: Array) -> Array:
    r"""``q_k = p_k / sum_{j >= k} p_j`` for ``k < K - 1``, from log-probabilities.

    The tail sums are a reverse cumulative ``logaddexp`` (an associative scan), so
    tiny probabilities keep relative accuracy; a zero-probability token has
    ``q = 0`` exactly and a token followed only by zero-probability tokens has
    ``q = 1`` exactly.
    """
    log_tail = jax.lax.associative_scan(jnp.logaddexp, log_probs[::-1])[::-1]
    head = log_probs[:-1]
    tail = log_tail[:-1]
    # p_k = 0 (or an all-zero tail, which then holds nothing to split): q = 0.
    ok = jnp.isfinite(head) & jnp.isfinite(tail)
    return jnp.where(ok, jnp.exp(jnp.minimum(head - jnp.where(ok, tail, 0), 0)), 0)


_STIRLING_TAIL = np.array([
    0.0810614667953272, 0.0413406959554092, 0.0276779256849983, 0.02079067210376509,
    0.0166446911898211, 0.0138761288230707, 0.0118967099458917, 0.0104112652619720,
    0.00925546218271273, 0.00833056343336287])


def _stirling_tail(k: Array) -> Array:
    """``log k! - [(k + 1/2) log(k + 1) - (k + 1) + log sqrt(2 pi)]``."""
    table = jnp.asarray(_STIRLING_TAIL, k.dtype)
    small = k <= 9
    kp1 = jnp.maximum(k, 0) + 1
    kp1sq = kp1 * kp1
    approx = (1.0 / 12 - (1.0 / 360 - 1.0 / 1260 / kp1sq) / kp1sq) / kp1
    return jnp.where(small, table[jnp.clip(k, 0, 9).astype(jnp.int32)], approx)


def _binomial_search(key: Array, count: Array, q: Array) -> Array:
    """``Bin(count, q)`` by inversion: the smallest ``k`` with ``F(k) >= U``, found
    by a sequential search from 0 (``count * q <= 10``: about ``count * q`` steps,
    one uniform, no random numbers in the loop)."""
    u = jax.random.uniform(key, (), q.dtype)
    ratio = q / (1 - q)
    f0 = jnp.exp(count * jnp.log1p(-q))

    def cond(state):
        k, _, cdf = state
        return (u > cdf) & (k < count)

    def body(state):
        k, f, cdf = state
        f = f * ratio * (count - k) / (k + 1)
        return k + 1, f, cdf + f

    k, _, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), q.dtype), f0, f0))
    return k


def _binomial_btrs(key: Array, count: Array, q: Array) -> Array:
    """``Bin(count, q)`` by Hörmann's transformed rejection with squeeze (BTRS,
    1993) for ``count * q >= 10``, ``q <= 1/2``: attempt ``i`` uses two uniforms
    from ``fold_in(key, i)``; exact in law (a rejection sampler)."""
    stddev = jnp.sqrt(count * q * (1 - q))
    b = 1.15 + 2.53 * stddev
    a = -0.0873 + 0.0248 * b + 0.01 * q
    c = count * q + 0.5
    v_r = 0.92 - 4.2 / b
    r = q / (1 - q)
    alpha = (2.83 + 5.1 / b) * stddev
    m = jnp.floor((count + 1) * q)
    log_top = ((m + 0.5) * jnp.log((m + 1) / (r * (count - m + 1)))
               + _stirling_tail(m) + _stirling_tail(count - m))

    def cond(state):
        return ~state[2]

    def body(state):
        i, _, _ = state
        u, v = jax.random.uniform(jax.random.fold_in(key, i), (2,), q.dtype)
        u = u - 0.5
        us = 0.5 - jnp.abs(u)
        k = jnp.floor((2 * a / us + b) * u + c)
        inside = (k >= 0) & (k <= count)
        squeeze = (us >= 0.07) & (v <= v_r)
        log_v = jnp.log(v * alpha / (a / (us * us) + b))
        kc = jnp.clip(k, 0, count)
        log_ratio = (log_top
                     + (count + 1) * jnp.log((count - m + 1) / (count - kc + 1))
                     + (kc + 0.5) * jnp.log(r * (count - kc + 1) / (kc + 1))
                     - _stirling_tail(kc) - _stirling_tail(count - kc))
        return i + 1, k, squeeze | (inside & (log_v <= log_ratio))

    init = (jnp.uint32(0), jnp.zeros((), q.dtype), jnp.bool_(False))
    return jax.lax.while_loop(cond, body, init)[1]


def _binomial(key: Array, count: Array, prob: Array) -> Array:
    """``Bin(count, prob)`` (floats holding integers), exact at ``prob`` 0 and 1:
    inversion when ``count * min(p, 1-p) <= 10``, BTRS otherwise, on
    ``min(p, 1 - p)`` (the count of the likelier outcome is ``count - k``)."""
    flip = prob > 0.5
    q = jnp.where(flip, 1 - prob, prob)
    inner = q > 0
    q = jnp.where(inner, q, 0.25)
    small = count * q <= 10
    key_search, key_btrs = jax.random.split(key)
    k = jnp.where(
        small,
        _binomial_search(key_search, jnp.where(small, count, 0), q),
        _binomial_btrs(key_btrs, jnp.where(small, 100, count), q),
    )
    k = jnp.where(inner, k, 0)
    return jnp.where(flip, count - k, k)


def _multinomial_counts(key: Array, length: int, cond: Array) -> Array:
    """``(K,)`` int32 counts of ``Multinomial(length, p)`` from the conditional
    probabilities ``cond = _conditional_probs(log p)`` (``(K - 1,)``)."""
    dtype = cond.dtype

    def step(left, index_q):
        index, q = index_q
        c = _binomial(jax.random.fold_in(key, index), left, q)
        return left - c, c

    index = jnp.arange(cond.shape[0], dtype=jnp.uint32)
    left, counts = jax.lax.scan(step, jnp.asarray(length, dtype), (index, cond))
    return jnp.concatenate([counts, left[None]]).astype(jnp.int32)


def _count_stage(lm: MemorylessLM, reward: LinearReward) -> _Stage:
    r"""The count-level stage of one sequence: ``draw(key)`` its token counts
    ``c ~ Multinomial(n, p)`` by conditional binomials,

    .. math::
        c_k \sim \mathrm{Bin}\Big(n - \sum_{j<k} c_j,\;
        \frac{p_k}{\sum_{j \ge k} p_j}\Big), \qquad k = 1, \dots, K - 1,

    (the last token takes the rest), and ``consume(c)`` the reward
    ``R = sum_k c_k r_k`` in a fixed summation order, in the reward's dtype.
    Binomial ``k`` uses the key ``fold_in(key, k)``.
    """
    cond = _conditional_probs(lm.log_probs)
    length = lm.length
    r = reward.token_rewards

    def draw(key):
        return _multinomial_counts(key, length, cond)

    def consume(counts):
        return _fixed_order_sum(counts.astype(r.dtype) * r)

    return _Stage(draw, consume)


class _CountsView(NamedTuple):
    """A :class:`MemorylessLM` seen through its token counts: the same model (its
    law, its tilt, its closed forms) whose ``sampler_stage`` draws the counts of a
    sequence (:func:`_count_stage`) instead of its tokens.  Every sampler that
    draws through ``lm.sampler_stage(reward)`` runs at the count level on it.  A
    pytree (a NamedTuple), so it passes through ``jit`` like the model."""

    lm: MemorylessLM

    @property
    def length(self) -> int:
        return self.lm.length

    @property
    def num_tokens(self) -> int:
        return self.lm.num_tokens

    @property
    def log_probs(self) -> Array:
        return self.lm.log_probs

    @property
    def cost(self) -> int:
        """Token-equivalents of one sequence (the work budget)."""
        return _sequence_cost(self.num_tokens)

    @property
    def words(self) -> int:
        """Words of memory one sequence keeps live (batch sizing)."""
        return self.num_tokens * _WORDS_PER_COUNT

    def sampler_stage(self, reward: LinearReward | None) -> _Stage:
        if reward is None:
            raise ValueError("level='counts' draws token counts, not tokens: "
                             "return_tokens=True needs level='token'")
        return _count_stage(self.lm, reward)

    def reward_law(self, reward: LinearReward, **options):
        return self.lm.reward_law(reward, **options)

    def tilt(self, reward: LinearReward, lam) -> _CountsView:
        return _CountsView(self.lm.tilt(reward, lam))

    def tilt_summary(self, reward: LinearReward, lam):
        return self.lm.tilt_summary(reward, lam)

    def lam_for_kl(self, reward: LinearReward, kl_budget) -> Array:
        return self.lm.lam_for_kl(reward, kl_budget)

    def max_kl(self, reward: LinearReward) -> Array:
        return self.lm.max_kl(reward)

    def limit_reward_per_token(self, reward: LinearReward, delta) -> Array:
        return self.lm.limit_reward_per_token(reward, delta)


def _counts_view(lm: Any) -> _CountsView:
    """``lm`` seen through its token counts (``level="counts"``); ``ValueError``
    unless it is a :class:`MemorylessLM` (or already a view)."""
    if isinstance(lm, _CountsView):
        return lm
    if not isinstance(lm, MemorylessLM):
        raise ValueError(
            f"level='counts' needs a memoryless model (a MemorylessLM, whose reward "
            f"depends on a sequence only through its token counts), got "
            f"{type(lm).__name__}; use level='token' or level='law'")
    dtype = np.dtype(lm.log_probs.dtype)
    limit = 2 ** (np.finfo(dtype).nmant + 1)  # integers held exactly
    if lm.length > limit:
        raise ValueError(
            f"level='counts' in {dtype.name} holds counts up to n = 2**"
            f"{int(math.log2(limit))}, got n = {lm.length}; use a float64 model "
            "(jax_enable_x64) or level='token'")
    return _CountsView(lm)


def _base_model(lm: Any) -> Any:
    """The model behind a counts view (``lm`` itself otherwise)."""
    return lm.lm if isinstance(lm, _CountsView) else lm


def _cost_length(lm: Any) -> int:
    """Token-equivalents of one sequence of ``lm`` (the work budget)."""
    return lm.cost if isinstance(lm, _CountsView) else lm.length


def _words_length(lm: Any) -> int:
    """Words of memory one sequence of ``lm`` keeps live (batch sizing)."""
    return lm.words if isinstance(lm, _CountsView) else lm.length


def _check_return_tokens(return_tokens: Any, level: str, lm: Any) -> None:
    """``return_tokens=True`` needs the token level (and a model with tokens)."""
    if isinstance(lm, _CountsView):
        level = "counts"
    if return_tokens and level != "token":
        raise ValueError(f"return_tokens=True needs level='token', got {level!r}")
