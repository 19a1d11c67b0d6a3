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

# Token-equivalents of one binomial draw, for the work budget: about 110 on a
# 2-core CPU (benchmarks/bench_counts.py --quick at n = 65536, load 2-5, four
# runs: 1.0e5-1.65e5 sequences/s at K = 16, i.e. 1.5e6-2.5e6 binomials/s,
# against 1.75e8-2.6e8 tokens/s at the token level: 90-115).
_TOKENS_PER_BINOMIAL = 110
# Random 32-bit words a count draw keeps live per token (memory sizing only).
_WORDS_PER_COUNT = 16


def _sequence_cost(num_tokens: int) -> int:
    """Token-equivalents of one count-level sequence (K - 1 binomials), for the
    work budget."""
    return max(1, num_tokens - 1) * _TOKENS_PER_BINOMIAL


def _split_probs(log_probs: Array) -> tuple[Array, Array]:
    r"""The conditional binomials' probabilities, from log-probabilities: for
    ``k < K - 1`` token ``k`` takes ``Bin(left, p_k / T_k)`` of the ``left`` tokens
    not given to tokens before it (``T_k = sum_{j >= k} p_j``).  Returns
    ``(q, flip)``, ``(K - 1,)`` each: the lighter side's probability

    .. math::
        q_k = \frac{\min(p_k, T_{k+1})}{T_k} \le \frac12

    and ``flip_k = p_k > T_{k+1}`` (token ``k`` is the heavier side: it takes
    ``left - Bin(left, q_k)``).  The tail sums are a reverse cumulative
    ``logaddexp`` (an associative scan), so both sides keep relative accuracy
    however tiny; a side of zero probability has ``q = 0`` exactly (the other
    side takes all ``left``).
    """
    log_tail = jax.lax.associative_scan(jnp.logaddexp, log_probs[::-1])[::-1]
    node = log_tail[:-1]
    head, rest = log_probs[:-1], log_tail[1:]
    light = jnp.minimum(head, rest)
    ok = jnp.isfinite(light) & jnp.isfinite(node)
    log_q = jnp.minimum(light - jnp.where(ok, node, 0), -math.log(2))
    return jnp.where(ok, jnp.exp(log_q), 0), head > rest


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


# Inversion steps per loop iteration for a binomial of mean <= 10 (its search
# continues in the next iteration if it has not stopped): 4 ran 5-10% faster
# than 8 (and 16: 30% slower) at n = 1024 and 65536, K = 16, on the 2-core CPU.
_SEARCH_STEPS = 4


def _btrs(u: Array, v: Array, count: Array, q: Array) -> tuple[Array, Array]:
    """One attempt of Hörmann's transformed rejection with squeeze (BTRS, 1993)
    for ``Bin(count, q)``, ``count * q >= 10``, ``q <= 1/2``, from uniforms
    ``u, v``: ``(k, accepted)``; the first accepted ``k`` is exact in law."""
    stddev = jnp.sqrt(count * q * (1 - q))
    b = 1.15 + 2.53 * stddev
    a = -0.0873 + 0.0248 * b + 0.01 * q
    c = count * q + 0.5
    v_r = 0.92 - 4.2 / b
    r = q / (1 - q)
    alpha = (2.83 + 5.1 / b) * stddev
    m = jnp.floor((count + 1) * q)
    u = u - 0.5
    us = 0.5 - jnp.abs(u)
    k = jnp.floor((2 * a / us + b) * u + c)
    inside = (k >= 0) & (k <= count)
    squeeze = (us >= 0.07) & (v <= v_r)
    log_v = jnp.log(v * alpha / (a / (us * us) + b))
    kc = jnp.clip(k, 0, count)
    log_ratio = ((m + 0.5) * jnp.log((m + 1) / (r * (count - m + 1)))
                 + _stirling_tail(m) + _stirling_tail(count - m)
                 + (count + 1) * jnp.log((count - m + 1) / (count - kc + 1))
                 + (kc + 0.5) * jnp.log(r * (count - kc + 1) / (kc + 1))
                 - _stirling_tail(kc) - _stirling_tail(count - kc))
    return k, squeeze | (inside & (log_v <= log_ratio))


def _search(u: Array, k: Array, f: Array, cdf: Array, count: Array, q: Array):
    """``_SEARCH_STEPS`` steps of inversion for ``Bin(count, q)``: from ``k`` with
    ``f = P(k)`` and ``cdf = F(k)``, the first ``k' >= k`` with ``F(k') >= u`` (or
    ``k' = count``).  Returns ``(stopped, k', (k, f, cdf) to go on from)``."""
    ratio = q / (1 - q)
    ks, fs, cdfs = [k], [f], [cdf]
    for _ in range(_SEARCH_STEPS):
        f = f * ratio * (count - k) / (k + 1)
        k, cdf = k + 1, cdf + f
        ks.append(k)
        fs.append(f)
        cdfs.append(cdf)
    ks, cdfs = jnp.stack(ks), jnp.stack(cdfs)
    stop = ((u <= cdfs) | (ks >= count))[:-1]
    return jnp.any(stop), ks[jnp.argmax(stop)], (ks[-1], fs[-1], cdfs[-1])


def _multinomial_counts(key: Array, length: int, q: Array, flip: Array) -> Array:
    r"""``(K,)`` int32 counts of ``Multinomial(length, p)`` by the conditional
    binomials ``(q, flip) = _split_probs(log p)`` (the last token takes the rest),
    one after the other in one loop: iteration ``t`` takes two fresh uniforms
    ``(u, v)`` and makes one BTRS attempt at the current binomial (mean ``> 10``)
    or ``_SEARCH_STEPS`` steps of its inversion (mean ``<= 10``, with the ``u`` of
    the iteration it started in); an accepted attempt or a stopped search gives the
    binomial and the next one starts in the next iteration.  Every iteration's
    uniforms are fresh, so the counts are exact in law.

    The uniforms of the first ``2 (K - 1) + 8`` iterations are drawn before the
    loop, ``uniform(k_1, (2 (K - 1) + 8, 2))`` with ``k_1, k_2 = split(key)``
    (a sequence needs about ``1.1 (K - 1)`` at large means); a second loop goes on
    with ``uniform(fold_in(k_2, t), (2,))`` (a PRNG inside the loop body runs
    about 4x slower on a CPU: XLA fuses it into the body and stops vectorising
    it).  Under ``vmap`` a loop runs until every sequence is done.
    """
    num = q.shape[0]
    dtype = q.dtype
    if num == 0:
        return jnp.full((1,), length, jnp.int32)

    ahead = 2 * num + 8
    key_ahead, key_more = jax.random.split(key)
    uniforms = jax.random.uniform(key_ahead, (ahead, 2), dtype)

    def body_ahead(state):
        u, v = uniforms[state[0]]
        return step(state, u, v)

    def body_more(state):
        key_t = jax.random.fold_in(key_more, state[0])
        u, v = jax.random.uniform(key_t, (2,), dtype)
        return step(state, u, v)

    @jax.jit  # one trace for both loops' bodies
    def step(state, u, v):
        t, j, left, counts, started, search = state
        qj, flip_j = q[jnp.minimum(j, num - 1)], flip[jnp.minimum(j, num - 1)]
        inner = qj > 0
        qj = jnp.where(inner, qj, 0.25)
        small = left * qj <= 10
        f0 = jnp.exp(left * jnp.log1p(-qj))
        fresh = (u, jnp.zeros((), dtype), f0, f0)
        u_s, k, f, cdf = jax.tree.map(lambda a, b: jnp.where(started, a, b),
                                      search, fresh)
        stopped, k_s, (k, f, cdf) = _search(u_s, k, f, cdf, left, qj)
        k_b, accepted = _btrs(u, v, jnp.where(small, 100, left),
                              jnp.where(small, 0.25, qj).astype(dtype))
        done = ~inner | jnp.where(small, stopped, accepted)
        light = jnp.where(inner, jnp.where(small, k_s, k_b), 0)
        c = jnp.where(flip_j, left - light, light)
        counts = jnp.where(done, counts.at[j].set(c, mode="drop"), counts)
        return (t + 1, jnp.where(done, j + 1, j), jnp.where(done, left - c, left),
                counts, ~done, (u_s, k, f, cdf))

    zero = jnp.zeros((), dtype)
    init = (jnp.uint32(0), jnp.int32(0), jnp.asarray(length, dtype),
            jnp.zeros(num + 1, dtype), jnp.bool_(False), (zero, zero, zero, zero))
    state = jax.lax.while_loop(lambda s: (s[1] < num) & (s[0] < ahead),
                               body_ahead, init)
    _, _, left, counts, _, _ = jax.lax.while_loop(lambda s: s[1] < num, body_more,
                                                  state)
    return counts.at[num].set(left).astype(jnp.int32)


def _count_stage(lm: MemorylessLM, reward: LinearReward) -> _Stage:
    r"""The count-level stage of one sequence: ``draw(key)`` its token counts
    ``c ~ Multinomial(n, p)`` by conditional binomials,

    .. math::
        c_k \sim \mathrm{Bin}\Big(n - \sum_{j<k} c_j,\;
        \frac{p_k}{\sum_{j \ge k} p_j}\Big), \qquad k = 1, \dots, K - 1,

    (the last token takes the rest), and ``consume(c)`` the reward
    ``R = sum_k c_k r_k`` in a fixed summation order, in the reward's dtype.
    The random numbers are the sequence's own (:func:`_multinomial_counts`), so
    the counts do not depend on batch or chunk sizes.
    """
    q, flip = _split_probs(lm.log_probs)
    length = lm.length
    r = reward.token_rewards

    def draw(key):
        return _multinomial_counts(key, length, q, flip)

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
