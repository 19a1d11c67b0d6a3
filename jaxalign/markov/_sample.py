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

# ------------------------------------------------------------------------ sampling


def _tables(log_init: Array, log_trans: Array):
    """Alias tables of ``μ`` and of every row of ``P``: ``(2^b,)`` and
    ``(K, 2^b)``, or ``(n - 1, K, 2^b)`` for one ``P`` per step."""
    from jaxalign.sample._kernels import _alias_table

    init = _alias_table(jnp.exp(log_init))
    rows = jax.vmap(_alias_table)
    trans = jnp.exp(log_trans)
    table = rows(trans) if trans.ndim == 2 else jax.vmap(rows)(trans)
    return init.threshold, init.alias, table.threshold, table.alias


_tables_jit = jax.jit(_tables)


def _stage(lm: MarkovLM, reward):
    """One 32-bit word per token through Walker alias tables, one per row of
    ``P`` (per step and row for a time-inhomogeneous chain): O(1) per token
    whatever ``K``, probabilities represented to ``2^-32`` like the memoryless
    sampler (:mod:`jaxalign.sample`).  The word's top bits pick a column of the
    current state's table, the rest are compared with its threshold."""
    from jaxalign.sample._kernels import _fixed_order_sum, _Stage

    length, k = lm.length, lm.num_tokens
    shift = 32 - max(1, (k - 1).bit_length())
    mask = jnp.uint32((1 << shift) - 1)
    first_r = pair_r = None
    if reward is not None:  # checked first: a bad reward fails before any work
        first_r, pair_r = _pair_form(reward, k)
    # (n = 1: no step is taken; a tilt's log_trans is then (0, K, K).)
    log_trans = lm.log_trans[..., :1, :] if length == 1 else lm.log_trans
    homogeneous = log_trans.ndim == 2
    built = []

    def tables():
        # Traced (inside the samplers' jit): built once, outside their loops.
        # Concrete (a validity check, or eager use): built on first use only.
        if not built:
            build = _tables if not is_concrete(lm.log_init) else _tables_jit
            built.append(build(lm.log_init, log_trans))
        return built[0]

    if not is_concrete(lm.log_init):
        tables()

    def pick(threshold, alias, index, w):
        column = (w >> shift).astype(jnp.int32)
        index = index + (column,)
        return jnp.where((w & mask) < threshold[index], column, alias[index])

    def draw(key):
        return jax.random.bits(key, (length,), jnp.uint32)

    def tokens_of(words):
        init_threshold, init_alias, threshold, alias = tables()
        first = pick(init_threshold, init_alias, (), words[0])
        if length == 1:
            return first[None]

        def body(a, i):
            b = pick(threshold, alias, (a,) if homogeneous else (i, a), words[i + 1])
            return b, b

        _, rest = jax.lax.scan(body, first, jnp.arange(length - 1))
        return jnp.concatenate([first[None], rest])

    if reward is None:
        return _Stage(draw, tokens_of)

    def consume(words):
        y = tokens_of(words)
        # A fixed summation order: the same reward whatever the batch or chunk.
        return first_r[y[0]] + _fixed_order_sum(pair_r[y[:-1], y[1:]])

    return _Stage(draw, consume)


@functools.partial(jax.jit, static_argnames="num_samples")
def _sample_impl(key, lm, num_samples: int):
    stage = _stage(lm, None)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_samples))
    return jax.vmap(lambda kk: stage.consume(stage.draw(kk)))(keys)


def sample(key: PRNGKey, lm: MarkovLM, num_samples: int) -> Array:
    r"""``(num_samples, n)`` token sequences drawn from a chain (base or tilted).

    Sample ``i`` uses the key ``fold_in(key, i)`` and ``n`` 32-bit words, turned
    into tokens along a scan over ``t`` by the alias table of the current state's
    row of ``P`` (O(1) per token; probabilities to ``2^-32``, as for memoryless
    models).

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
