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
)
from jaxalign.markov._finite import (
    _step,
)
from jaxalign.markov._model import (
    MarkovLM,
    _check_model,
    _pair_form,
)

# ------------------------------------------------------------------------ sampling


def _stage(lm: MarkovLM, reward):
    from jaxalign.sample._kernels import _fixed_order_sum, _Stage

    length, k = lm.length, lm.num_tokens
    dtype = lm.log_init.dtype
    cdf_init = jnp.cumsum(jnp.exp(lm.log_init))
    cdf_trans = jnp.cumsum(jnp.exp(lm.log_trans), axis=-1)

    def pick(cdf, u):
        return jnp.minimum(jnp.sum(cdf[:-1] <= u * cdf[-1]), k - 1)

    def draw(key):
        return jax.random.uniform(key, (length,), dtype)

    def tokens_of(u):
        first = pick(cdf_init, u[0])

        def body(a, i):
            b = pick(_step(cdf_trans, i)[a], u[i + 1])
            return b, b

        _, rest = jax.lax.scan(body, first, jnp.arange(length - 1))
        return jnp.concatenate([first[None], rest])

    if reward is None:
        return _Stage(draw, tokens_of)
    first_r, pair_r = _pair_form(reward, k)

    def consume(u):
        y = tokens_of(u)
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

    Sample ``i`` uses the key ``fold_in(key, i)`` and ``n`` uniforms, turned into
    tokens by inverse CDFs along a scan over ``t``: exact in law.

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
