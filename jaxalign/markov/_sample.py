"""Token-level sampling of a chain (a scan over ``t``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxalign._types import (
    Array,
    PRNGKey,
    check_key,
    check_positive_int,
    classic_threefry,
    is_concrete,
)
from jaxalign.markov._model import (
    MarkovLM,
    _check_model,
    _pair_form,
)
from jaxalign.models import LinearReward

# ------------------------------------------------------------------------ sampling


_SCALE = 2.0**31  # CDFs as integers in [0, 2^31], compared with 31-bit words
# Chains up to this K draw through alias tables per row of P (O(1) per token),
# time-inhomogeneous ones (a tilt: a table per step and row) while their
# transition tables hold at most _ALIAS_MAX_ENTRIES; the others search an integer
# CDF (O(log K)).  All rows' tables are built in lockstep (O(K) steps of O(rows)
# work; a vmapped while loop was O(K^3): 8.8 s at K = 1024).  Measured on a 2-core
# CPU, rewards of 16384 sequences, n = 256, M tokens/s (alias / binary search):
# K = 16: 76-83 / 40; K = 256: 41-54 / 16; K = 512: 0.22 s / 0.34 s a call;
# K = 1024: 6.6 / 8.1 (its tables take 0.33 s); a K = 16 tilt 60-67 / 28-30,
# K = 32: 52 / 27, K = 64 (2^20 entries): 9.8 / 21.
_ALIAS_MAX_K = 512
_ALIAS_MAX_ENTRIES = 1 << 18


def _cdf_table(log_probs: Array) -> Array:
    """``(..., K - 1)`` uint32 ``floor(2^31 F(j))``, ``F`` the row CDF."""
    cdf = jnp.cumsum(jnp.exp(log_probs), axis=-1)
    cdf = cdf[..., :-1] / cdf[..., -1:]
    return jnp.clip(jnp.floor(cdf * _SCALE), 0, _SCALE).astype(jnp.uint32)


def _tables(log_init: Array, log_trans: Array, alias: bool):
    """The tables of ``μ`` and of the rows of ``P``: alias tables
    ``(threshold, alias)`` or integer CDFs (see :func:`_stage`)."""
    from jaxalign.sample._kernels import _alias_table

    if not alias:
        return _cdf_table(log_init), _cdf_table(log_trans)
    init = _alias_table(jnp.exp(log_init))
    rows = _alias_table(jnp.exp(log_trans))  # one table per row, in lockstep
    return (init.threshold, init.alias), (rows.threshold, rows.alias)


_tables_jit = jax.jit(_tables, static_argnames="alias")


def _stage(lm: MarkovLM, reward):
    """One 32-bit word per token, turned into the next token by the current
    state's row of ``P`` (per step for a time-inhomogeneous chain):

    * chains with ``K <= 512`` (time-inhomogeneous ones while ``(n - 1) K^2 <=
      2^18``): Walker alias tables per row (the memoryless sampler's,
      :mod:`jaxalign.sample`): O(1) per token, probabilities to ``2^-32``;
    * otherwise an inverse CDF: the word's top 31 bits ``u`` give the token
      ``#{j < K - 1: floor(2^31 F(j)) <= u}``, found by a binary search of
      ``ceil(log2 K)`` single-entry reads (no K-wide row is read per token);
      probabilities to ``2^-31``; tables built in ``O(n K^2)`` at most.

    A zero-probability token is never drawn either way.  The scan over ``t``
    reads one entry of a flat table per step (alias: threshold and alias packed
    in one word) and, with a reward, emits the step's reward ``r(a, b)``
    itself: no ``(n,)`` token array is stored and gathered again (2x faster at
    K = 16, same numbers)."""
    from jaxalign.sample._kernels import _fixed_order_sum, _Stage

    length, k = lm.length, lm.num_tokens
    bits = max(1, (k - 1).bit_length())
    if reward is not None and not (isinstance(reward, LinearReward)
                                   and reward.num_tokens == k):
        _pair_form(reward, k)  # checked first: a bad reward fails before any work
    # (n = 1: no step is taken; a tilt's log_trans is then (0, K, K).)
    log_trans = lm.log_trans[..., :1, :] if length == 1 else lm.log_trans
    homogeneous = log_trans.ndim == 2
    # (A time-inhomogeneous chain has a table per step and row.)
    alias = k <= _ALIAS_MAX_K and (homogeneous or log_trans.size <= _ALIAS_MAX_ENTRIES)
    shift = 32 - bits
    mask = (1 << shift) - 1  # Python ints: uint32 constants when traced
    low_bits = (1 << bits) - 1
    built = []

    def tables():
        # Traced (inside a sampler's jit): built once, outside its loops.
        # Concrete (a validity check, or eager use): built on first use, jitted
        # (op by op, the alias tables' while loop costs about a second).
        if not built:
            build = _tables_jit if is_concrete(lm.log_init) else _tables
            init, rows = build(lm.log_init, log_trans, alias)
            if alias:
                # One word per (row, column): threshold << bits | alias.  A
                # threshold of 2^shift (always keep) becomes 0 with the column as
                # its own alias, so every threshold fits in shift bits.
                threshold, alias_of = rows
                column = jnp.arange(threshold.shape[-1], dtype=jnp.int32)
                full = threshold >= jnp.uint32(1 << shift)
                threshold = jnp.where(full, jnp.uint32(0), threshold)
                alias_of = jnp.where(full, column, alias_of)
                rows = (threshold << bits) | alias_of.astype(jnp.uint32)
            built.append((init, rows.reshape(-1)))
        return built[0]

    if not is_concrete(lm.log_init):
        tables()

    def search(table, base, u):
        """``#{j < K - 1: table[base + j] <= u}`` by binary lifting."""
        count = jnp.zeros((), jnp.int32)
        for b in reversed(range(bits)):
            probe = count + (1 << b)
            entry = table[base + jnp.minimum(probe, k - 1) - 1]
            count = jnp.where((probe <= k - 1) & (entry <= u), probe, count)
        return count

    def pick_first(init, w):
        if alias:
            threshold, alias_of = init
            column = (w >> shift).astype(jnp.int32)
            keep = (w & jnp.uint32(mask)) < threshold[column]
            return jnp.where(keep, column, alias_of[column])
        return search(init, 0, w >> 1)

    def pick(rows, a, i, w):
        if alias:
            column = w >> shift
            row = a if homogeneous else i * k + a
            entry = rows[((row.astype(jnp.uint32) << bits) | column).astype(jnp.int32)]
            # (w << bits) is the low shift bits of w, scaled like the threshold.
            keep = (w << bits) < (entry & jnp.uint32(~low_bits & 0xFFFFFFFF))
            return jnp.where(keep, column, entry & jnp.uint32(low_bits)).astype(
                jnp.int32)
        row = a if homogeneous else i * k + a
        return search(rows, row * (k - 1), w >> 1)

    def draw(key):
        return jax.random.bits(key, (length,), jnp.uint32)

    def chain(words, emit):
        """The first token and the scan's per-step outputs ``emit(a, b)``."""
        init, rows = tables()
        first = pick_first(init, words[0])
        if length == 1:
            return first, None

        def body(a, x):
            i, w = x
            b = pick(rows, a, i, w)
            return b, emit(a, b)

        steps = jnp.arange(length - 1, dtype=jnp.int32)
        _, out = jax.lax.scan(body, first, (steps, words[1:]))
        return first, out

    def tokens_of(words):
        first, rest = chain(words, lambda a, b: b)
        return first[None] if rest is None else jnp.concatenate([first[None], rest])

    if reward is None:
        return _Stage(draw, tokens_of)

    def consume(words):
        # Built where consumed (traced): no eager ops per call for a linear reward.
        first_r, pair_r = _pair_form(reward, k)
        pair_flat = pair_r.reshape(-1)
        first, steps = chain(words, lambda a, b: pair_flat[a * k + b])
        if steps is None:
            return first_r[first]
        # A fixed summation order: the same reward whatever the batch or chunk.
        return first_r[first] + _fixed_order_sum(steps)

    return _Stage(draw, consume)


@functools.partial(jax.jit, static_argnames="num_samples")
def _sample_impl(key, lm, num_samples: int):
    stage = _stage(lm, None)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_samples))
    return jax.vmap(lambda kk: stage.consume(stage.draw(kk)))(keys)


def sample(key: PRNGKey, lm: MarkovLM, num_samples: int) -> Array:
    r"""``(num_samples, n)`` token sequences drawn from a chain (base or tilted).

    Sample ``i`` uses the key ``fold_in(key, i)`` and ``n`` 32-bit words, turned
    into tokens along a scan over ``t`` by the current state's row of ``P``: an
    alias table (``K <= 512``, a tilt while ``(n - 1) K^2 <= 2^18``: O(1) per
    token) or an
    inverse CDF by binary search (``O(log K)`` per token).

    Examples:
      >>> import jax
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.sticky([0.5, 0.5], 1.0, length=5)
      >>> y = sample(jax.random.key(0), lm, 3)
      >>> y.shape, bool((y == y[:, :1]).all())  # s = 1: constant sequences
      ((3, 5), True)
    """
    check_key(key)
    _check_model(lm)
    num_samples = check_positive_int(num_samples, "num_samples")
    return classic_threefry(_sample_impl)(key, lm, num_samples)

