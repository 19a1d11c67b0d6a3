r"""Monte Carlo samplers for memoryless models: base, tilted, best-of-N and friends.

Every sampler is exact in law, key-first (a typed ``jax.random.key``) and
reproducible bit for bit: sample ``i`` uses the key ``fold_in(key, i)`` and
candidate ``j`` of sample ``i`` uses ``fold_in(fold_in(key, i), j)``, so the
numbers depend only on ``(key, configuration)``, never on ``chunk_size``,
``batch_size`` or how the sample indices are spread over devices (pass
``first_index`` to draw the block of samples ``first_index, first_index+1, ...``
of a larger run).  The PRNG implementation is the key's (``jax.random.key(seed,
impl="philox4x32")``).

Two sampling levels, chosen with ``level=`` (``method=`` before 0.3):

* ``"token"`` draws every token.  Tokens come from a Walker alias table over
  ``2^b >= K`` columns: one 32-bit random word per token, its top ``b`` bits pick
  a column and the rest are compared with the column's integer threshold, so a
  token costs O(1) whatever ``K`` (no ``jax.random.categorical``), and when only
  rewards are needed the per-token reward is gathered and summed in the same
  kernel.  Token probabilities are represented to ``2^-32`` (absolute).
* ``"law"`` draws the sequence reward ``R`` itself from its exact lattice law
  (:func:`jaxalign.exact.reward_law`) by inverting the CDF; best-of-N draws the
  maximum directly by inverting ``F^N`` in log space, at a cost independent of
  ``n`` and of ``N`` (``N`` may be astronomically large).

Best-of-N streams over candidates (a ``lax.scan`` over chunks carrying the running
maximum), so memory does not depend on ``N``.  Ties are broken by the first index
attaining the maximum, which over i.i.d. candidates is exactly uniform
tie-breaking (THEORY.md §1.9).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_key,
    check_positive_int,
    check_real,
    float_dtype,
    is_concrete,
    prng_jit,
)
from jaxalign.models import LinearReward, MemorylessLM, check_compatible

__all__ = [
    "RejectionResult",
    "SampleResult",
    "SelectionDraws",
    "best_of_n",
    "best_of_n_curve",
    "best_of_n_from_law",
    "policy",
    "rejection",
    "reweighted",
    "rewards",
    "rewards_from_law",
    "soft_best_of_n",
    "tilted",
    "tokens",
]

_METHODS = ("token", "law")
# Random words per scan step (uint32), 1 MiB: with the draw/consume pipeline,
# token-level best-of-N ran 1.25-1.5x faster at 2^18 than at 2^15 on a 2-core
# CPU (fewer scan steps, each split over both cores); 2^20 was no faster.
_WORDS_PER_STEP = 1 << 18
_CANDIDATE_WORDS = 1 << 12
_MAX_TOKENS = 1 << 24
# Proposals per rejection-loop step: most draws are accepted within a few.
_REJECTION_CHUNK = 8
# Expected proposal tokens a policy sampler may draw before refusing up front
# (about a minute of token-level sampling on a 2-core CPU).
_MAX_PROPOSAL_TOKENS = 2**33
_LEVELS = ("token", "law")


class SampleResult(NamedTuple):
    """Rewards with the sequences that produced them.

    Attributes:
      reward: ``(num_samples,)`` sequence rewards ``R``.
      tokens: ``(num_samples, n)`` int32 tokens.
    """

    reward: Array
    tokens: Array


class SelectionDraws(NamedTuple):
    """Draws of a selection among ``N`` candidates: the output of :func:`best_of_n`
    and :func:`soft_best_of_n` (``jaxalign.exact.BestOfNResult`` is the exact law).

    Attributes:
      reward: ``(num_samples,)`` reward of the selected candidate.
      index: ``(num_samples,)`` int32 index in ``[0, N)`` of the selected
        candidate (``None`` at ``level="law"``, where no candidate is drawn).
      tokens: ``(num_samples, n)`` int32 tokens of the selected candidate, or
        ``None`` unless ``return_tokens=True``.
    """

    reward: Array
    index: Array | None
    tokens: Array | None


class RejectionResult(NamedTuple):
    """Output of :func:`rejection`.

    Attributes:
      reward: ``(num_samples,)`` first proposal with ``R >= threshold``; NaN when
        none was accepted within ``max_proposals``.
      num_proposals: ``(num_samples,)`` int32 proposals drawn (the accepted one
        included); ``max_proposals`` when none was accepted.
      accepted: ``(num_samples,)`` bool.
    """

    reward: Array
    num_proposals: Array
    accepted: Array


# ----------------------------------------------------------------------- validation


def _level(level: Any, method: Any) -> str:
    """The sampling level, from ``level`` or the deprecated ``method`` keyword."""
    if method is not None:
        import warnings

        warnings.warn("method= is now level= (the sampling level, 'token' or 'law')",
                      DeprecationWarning, stacklevel=3)
        level = method
    return level


def _check_method(method: Any) -> str:
    if method not in _METHODS:
        raise ValueError(f"level must be one of {_METHODS}, got {method!r}")
    return method


def _check_optional_int(value: Any, name: str) -> int | None:
    return None if value is None else check_positive_int(value, name)


def _check_first_index(first_index: Any) -> Array:
    if is_concrete(first_index):
        index = check_positive_int(first_index, "first_index", minimum=0)
        if index >= 2**32:
            raise ValueError(f"first_index must be < 2**32, got {first_index!r}")
        return np.uint32(index)  # no eager device op
    return jnp.asarray(first_index, dtype=jnp.uint32)


def _check_model(lm: Any, reward: Any = None) -> None:
    if reward is None:
        if not isinstance(lm, MemorylessLM):
            raise ValueError(f"lm must be a MemorylessLM, got {type(lm).__name__}")
    else:
        check_compatible(lm, reward)
    if lm.num_tokens > _MAX_TOKENS:
        raise ValueError(
            f"lm has K = {lm.num_tokens} tokens; the token sampler allows K <= "
            f"{_MAX_TOKENS}"
        )


def _check_samples_range(num_samples: int, first_index: Any) -> None:
    if num_samples > 2**32 or (
        is_concrete(first_index) and int(first_index) + num_samples > 2**32
    ):
        raise ValueError(
            f"first_index + num_samples must be <= 2**32, got first_index="
            f"{first_index!r}, num_samples={num_samples}"
        )


def _sizes(num_samples: int, words_per_sample: int, batch_size: int | None) -> int:
    if batch_size is not None:
        return min(batch_size, num_samples)
    return max(1, min(num_samples, _WORDS_PER_STEP // max(1, words_per_sample)))


def _chunk(num_candidates: int, length: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return min(chunk_size, num_candidates)
    return max(1, min(num_candidates, _CANDIDATE_WORDS // length))


# ----------------------------------------------------------------------- alias table


class _Alias(NamedTuple):
    threshold: Array  # (2^b,) uint32: keep the column's token when low bits < this
    alias: Array  # (2^b,) int32: the other token of the column
    shift: int  # 32 - b (static)


def _alias_table(probs: Array) -> _Alias:
    """Walker's alias table (Vose's construction) with integer thresholds."""
    num_tokens = probs.shape[-1]
    bits = max(1, (num_tokens - 1).bit_length())
    num_columns = 1 << bits
    dtype = probs.dtype
    q = jnp.zeros(num_columns, dtype).at[:num_tokens].set(probs) * num_columns
    q = jnp.maximum(q, 0)
    # Ascending order: zero-probability columns are paired first, while large
    # columns certainly remain, so they always get threshold 0.
    order = jnp.argsort(q).astype(jnp.int32)
    num_small = jnp.sum(q < 1).astype(jnp.int32)

    def active(state):
        _, _, _, i, j, _, has_pending = state
        return (has_pending | (i < num_small)) & (j >= num_small)

    def step(state):
        q, prob, alias, i, j, pending, has_pending = state
        small = jnp.where(has_pending, pending, order[jnp.minimum(i, num_columns - 1)])
        large = order[j]
        q = q.at[large].set(q[large] + q[small] - 1)
        # Everything else reads the updated q (small != large): a value read from
        # the old q and used after the update makes XLA copy q on every step,
        # O(K^2) in all (17 s at K = 2^18 before this ordering).
        q_large = q[large]
        prob = prob.at[small].set(q[small])
        alias = alias.at[small].set(large)
        becomes_small = q_large < 1
        i = jnp.where(has_pending, i, i + 1)
        j = jnp.where(becomes_small, j - 1, j)
        return q, prob, alias, i, j, large, becomes_small

    state = (
        q,
        jnp.ones(num_columns, dtype),
        jnp.arange(num_columns, dtype=jnp.int32),
        jnp.int32(0),
        jnp.int32(num_columns - 1),
        jnp.int32(0),
        jnp.bool_(False),
    )
    _, prob, alias, *_ = jax.lax.while_loop(active, step, state)
    capacity = float(2 ** (32 - bits))
    threshold = jnp.clip(jnp.floor(prob * capacity), 0, capacity).astype(jnp.uint32)
    return _Alias(threshold, alias, 32 - bits)


def _split_words(table: _Alias, words: Array) -> tuple[Array, Array]:
    column = (words >> table.shift).astype(jnp.int32)
    low = words & jnp.uint32((1 << table.shift) - 1)
    return column, low < table.threshold[column]


def _fixed_order_sum(x: Array) -> Array:
    """Sum over the last axis in a fixed pairwise order.

    ``jnp.sum`` lets XLA pick the association order, which differs between
    fusion contexts (batch or chunk sizes), so float sequence rewards would not
    be reproducible bit for bit.  Elementwise adds of halves are never
    reassociated.
    """
    size = x.shape[-1]
    width = 1 << max(0, (size - 1).bit_length())
    if width != size:
        pad = [(0, 0)] * (x.ndim - 1) + [(0, width - size)]
        x = jnp.pad(x, pad)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


class _Stage(NamedTuple):
    """A sampler split in two: ``draw(key)`` makes the raw random numbers of one
    draw, ``consume(raw)`` turns them into the output.  Keeping the PRNG out of
    the gather-heavy consumer lets XLA vectorise it (see ``_pipeline``)."""

    draw: Callable
    consume: Callable


def _token_stage(lm: MemorylessLM, reward: LinearReward | None) -> _Stage:
    table = _alias_table(jnp.exp(lm.log_probs))
    length = lm.length

    def draw(key):
        return jax.random.bits(key, (length,), jnp.uint32)

    if reward is None:

        def consume(words):
            column, keep = _split_words(table, words)
            return jnp.where(keep, column, table.alias[column])

        return _Stage(draw, consume)
    r = reward.token_rewards
    reward_keep = jnp.zeros(table.alias.shape[0], r.dtype).at[: r.shape[0]].set(r)
    reward_alias = reward_keep[table.alias]

    def consume_reward(words):
        column, keep = _split_words(table, words)
        return _fixed_order_sum(
            jnp.where(keep, reward_keep[column], reward_alias[column])
        )

    return _Stage(draw, consume_reward)


# ----------------------------------------------------------------------- law level


class _LawGen(NamedTuple):
    values: Array  # (M,) ascending
    log_neg_log_cdf: Array  # (M,) log(-log F_c), non-increasing, -inf at the top


def _law_gen(values: Array, log_pmf: Array) -> _LawGen:
    # log F_c and log S_c = log P(R > v_c) by one associative scan over the pmf
    # and its reverse, stacked: lax.cumlogsumexp lowers to an O(M^2)
    # reduce-window on CPU (3.5 ms at M = 4097), two separate scans cost 0.42 ms
    # and the stacked one 0.16 ms (half the ops, each twice as wide).
    scans = jax.lax.associative_scan(
        jnp.logaddexp, jnp.stack([log_pmf, log_pmf[::-1]]), axis=1
    )
    log_total = scans[0, -1]
    log_cdf = scans[0] - log_total
    log_sf = (
        jnp.concatenate([scans[1, -2::-1], jnp.full(1, -jnp.inf, log_pmf.dtype)])
        - log_total
    )
    sf = jnp.exp(log_sf)
    tiny = jnp.finfo(log_pmf.dtype).tiny ** 0.5
    # -log F = -log1p(-S) = S (1 + S/2 + ...): keep relative accuracy for tiny S.
    ratio = jnp.where(
        sf > tiny, jnp.log(-jnp.log1p(-sf) / jnp.where(sf > tiny, sf, 1)), sf / 2
    )
    from_sf = log_sf + ratio
    from_cdf = jnp.log(-jnp.minimum(log_cdf, 0))
    log_neg = jnp.where(sf < 0.5, from_sf, from_cdf)
    log_neg = jnp.where(jnp.isneginf(log_sf), -jnp.inf, log_neg)
    return _LawGen(values, log_neg)


def _law_index(gen: _LawGen, exponential: Array, log_num: Array) -> Array:
    # Smallest class c with F_c^N >= U, U = e^{-E}: N (-log F_c) <= E.
    target = jnp.log(exponential) - log_num
    return jnp.searchsorted(-gen.log_neg_log_cdf, -target, side="left")


def _law_stage(law: _RawLaw, log_num: Array | None = None) -> _Stage:
    # Built inside the jitted cores: op-by-op it costs milliseconds of dispatch.
    gen = _law_gen(law.values, law.log_pmf)
    dtype = gen.log_neg_log_cdf.dtype
    log_num = jnp.zeros((), dtype) if log_num is None else log_num

    def draw(key):
        return jax.random.exponential(key, (), dtype)

    def consume(exponential):
        return gen.values[_law_index(gen, exponential, log_num)]

    return _Stage(draw, consume)


class _RawLaw(NamedTuple):
    values: Array  # (M,) ascending
    log_pmf: Array  # (M,)


def _law_of(lm: MemorylessLM, reward: LinearReward) -> _RawLaw:
    from jaxalign import exact

    law = exact.reward_law(lm, reward)
    return _RawLaw(jnp.asarray(law.values), jnp.asarray(law.log_pmf))


def _check_law(values: ArrayLike, log_pmf: ArrayLike) -> tuple[Array, Array]:
    concrete = is_concrete(values) and is_concrete(log_pmf)
    # Concrete laws are checked and converted in NumPy: eager jnp ops would cost
    # more than the sampler itself (about 0.5 ms of dispatch per call).
    xp = np if concrete else jnp
    values, log_pmf = xp.asarray(values), xp.asarray(log_pmf)
    dtype = float_dtype(values, log_pmf)
    values, log_pmf = values.astype(dtype), log_pmf.astype(dtype)
    if values.ndim != 1 or log_pmf.shape != values.shape or values.shape[0] < 1:
        raise ValueError(
            f"values and log_pmf must have the same shape (M,) with M >= 1, got "
            f"{values.shape} and {log_pmf.shape}"
        )
    if concrete:
        v, lp = values, log_pmf
        if not np.all(np.isfinite(v)) or np.any(np.diff(v) <= 0):
            raise ValueError(f"values must be finite and strictly ascending, got {v}")
        if np.any(np.isnan(lp)) or np.any(lp == np.inf) or np.all(lp == -np.inf):
            raise ValueError(
                f"log_pmf must be finite or -inf with some finite entry, got {lp}"
            )
    return values, log_pmf


# ----------------------------------------------------------------------- streaming


def _indices(first_index: Array, num_samples: int) -> Array:
    return first_index + jnp.arange(num_samples, dtype=jnp.uint32)


def _map_samples(fn: Callable, indices: Array, batch_size: int):
    """``vmap(fn)(indices)`` in sequential batches, with no remainder batch.

    The indices are padded up to equal batches (extra samples are computed and
    dropped) so the kernel is compiled once, not twice.
    """
    num = indices.shape[0]
    num_batches = -(-num // batch_size)
    if num_batches == 1:
        return jax.vmap(fn)(indices)
    batch = -(-num // num_batches)
    padded = indices[0] + jnp.arange(num_batches * batch, dtype=jnp.uint32)
    out = jax.lax.map(jax.vmap(fn), padded.reshape(num_batches, batch))
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num], out)


def _pipeline(draw, consume, update, init, starts):
    """``for s in starts: carry, y = update(carry, consume(draw(s)), s, True)``.

    The draw for step ``t`` is made in scan step ``t`` and consumed in step
    ``t + 1``, so the raw numbers cross the scan carry (a buffer) between the
    PRNG and its consumer: XLA then cannot fuse the PRNG into the gather loop,
    which stops it vectorising the PRNG (measured 3-4x slower with philox4x32).
    ``draw`` and ``consume`` each appear once in the program (threefry is slow
    to compile).  Step 0 consumes zeros and is masked (``valid=False``).
    """
    num = starts.shape[0]
    raw_init = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(draw, starts[0])
    )

    def body(state, t):
        carry, raw = state
        previous = starts[jnp.maximum(t - 1, 0)]
        carry, y = update(carry, consume(raw, previous), previous, t > 0)
        raw = jax.lax.cond(
            t < num, lambda: draw(starts[jnp.minimum(t, num - 1)]), lambda: raw
        )
        return (carry, raw), y

    (carry, _), ys = jax.lax.scan(body, (init, raw_init), jnp.arange(num + 1))
    return carry, jax.tree.map(lambda a: a[1:], ys)


def _draw_block(stage: _Stage, key: PRNGKey, size: int):
    def draw(start):
        index = start + jnp.arange(size, dtype=jnp.uint32)
        return jax.vmap(lambda j: stage.draw(jax.random.fold_in(key, j)))(index)

    return draw


def _per_sample(stage: _Stage, key, first_index, num_samples, batch_size):
    """Output of ``stage`` for samples ``first_index + i``, in pipelined batches."""
    num_batches = -(-num_samples // batch_size)
    starts = first_index + jnp.arange(num_batches, dtype=jnp.uint32) * batch_size

    def consume(raw, start):
        return jax.vmap(stage.consume)(raw)

    def update(carry, out, start, valid):
        return carry, out

    _, ys = _pipeline(
        _draw_block(stage, key, batch_size), consume, update, None, starts
    )
    ys = ys.reshape((num_batches * batch_size,) + ys.shape[2:])
    return ys[:num_samples]


def _stream_max(
    stage: _Stage, key_i: PRNGKey, num_candidates: int, chunk: int, score_fn=None
):
    """Running first-index argmax over candidates ``fold_in(key_i, j)``, in chunks."""
    num_chunks = -(-num_candidates // chunk)

    def consume(raw, start):
        index = start + jnp.arange(chunk, dtype=jnp.uint32)
        reward = jax.vmap(stage.consume)(raw)
        score = reward if score_fn is None else score_fn(index, reward)
        return jnp.where(index < num_candidates, score, -jnp.inf), reward, index

    def update(carry, out, start, valid):
        best_score, best_reward, best_index = carry
        score, reward, index = out
        arg = jnp.argmax(score)
        better = valid & (score[arg] > best_score)
        return (
            jnp.where(better, score[arg], best_score),
            jnp.where(better, reward[arg], best_reward),
            jnp.where(better, index[arg].astype(jnp.int32), best_index),
        ), None

    starts = jnp.arange(num_chunks, dtype=jnp.uint32) * chunk
    dtype = jax.eval_shape(lambda: stage.consume(stage.draw(key_i))).dtype
    init = (jnp.full((), -jnp.inf, dtype), jnp.zeros((), dtype), jnp.int32(0))
    (_, reward, index), _ = _pipeline(
        _draw_block(stage, key_i, chunk), consume, update, init, starts
    )
    return reward, index


# ----------------------------------------------------------------------- tokens/rewards


@prng_jit("num_samples", "batch_size")
def _tokens_impl(key, lm, first_index, num_samples, batch_size):
    stage = _token_stage(lm, None)
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
    _check_model(lm)
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
    stage = _token_stage(lm, reward)
    return _per_sample(stage, key, first_index, num_samples, batch_size)


@prng_jit("num_samples", "batch_size")
def _law_rewards_impl(key, law, log_num, first_index, num_samples, batch_size):
    stage = _law_stage(law, log_num)
    return _per_sample(stage, key, first_index, num_samples, batch_size)


def _validate_sampler(key, lm, reward, num_samples, method, first_index):
    check_key(key)
    _check_model(lm, reward)
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
      level: ``"token"`` (draw every token; tokens never reach memory) or
        ``"law"`` (invert the exact lattice CDF of ``R``; needs a concrete model
        and lattice rewards, see :func:`jaxalign.exact.reward_law`).
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
        key, lm, reward, num_samples, method, first_index
    )
    batch_size = _check_optional_int(batch_size, "batch_size")
    if method == "law":
        law = _law_of(lm, reward)
        return _law_rewards_impl(
            key,
            law,
            jnp.zeros((), law.values.dtype),
            first,
            num_samples,
            _sizes(num_samples, 1, batch_size),
        )
    return _rewards_impl(
        key, lm, reward, first, num_samples, _sizes(num_samples, lm.length, batch_size)
    )


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
    ``φ_λ``, so this is :func:`rewards` on :func:`jaxalign.theory.tilt`.

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)`` (used both to tilt and to score).
      lam: the tilt ``λ >= 0`` (finite; traced, so vmap over it freely).
      num_samples: number of draws (static).
      level: ``"token"`` or ``"law"`` (see :func:`rewards`).
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
    from jaxalign import theory

    _check_lam(lam)
    check_compatible(lm, reward)
    if return_tokens and method != "token":
        raise ValueError(f"return_tokens=True needs level='token', got {method!r}")
    tilted_lm = theory.tilt(lm, reward, lam)
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


# ----------------------------------------------------------------------- best-of-N


def _selected_tokens(lm, key, first_index, index):
    stage = _token_stage(lm, None)

    def one(i, j):
        key_i = jax.random.fold_in(key, i)
        return stage.consume(
            stage.draw(jax.random.fold_in(key_i, j.astype(jnp.uint32)))
        )

    sample = first_index + jnp.arange(index.shape[0], dtype=jnp.uint32)
    return jax.vmap(one)(sample, index)


@prng_jit("num_candidates", "num_samples", "chunk", "batch_size", "return_tokens")
def _best_of_n_impl(
    key,
    lm,
    reward,
    first_index,
    num_candidates,
    num_samples,
    chunk,
    batch_size,
    return_tokens,
):
    stage = _token_stage(lm, reward)
    indices = _indices(first_index, num_samples)

    def one(i):
        return _stream_max(stage, jax.random.fold_in(key, i), num_candidates, chunk)

    reward_out, index = _map_samples(one, indices, batch_size)
    toks = _selected_tokens(lm, key, first_index, index) if return_tokens else None
    return SelectionDraws(reward_out, index, toks)


def _validate_bon(
    key,
    lm,
    reward,
    num_candidates,
    num_samples,
    method,
    chunk_size,
    batch_size,
    first_index,
):
    num_samples, method, first = _validate_sampler(
        key, lm, reward, num_samples, method, first_index
    )
    num_candidates = check_positive_int(num_candidates, "num_candidates")
    if method == "token" and num_candidates >= 2**32:
        raise ValueError(
            f"num_candidates must be < 2**32 at level='token', got {num_candidates}"
        )
    chunk_size = _check_optional_int(chunk_size, "chunk_size")
    batch_size = _check_optional_int(batch_size, "batch_size")
    return num_candidates, num_samples, method, first, chunk_size, batch_size


def best_of_n(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    num_candidates: int,
    num_samples: int,
    *,
    level: str = "token",
    method: str | None = None,
    return_tokens: bool = False,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    first_index: int = 0,
) -> SelectionDraws:
    r"""Best-of-N: the highest-reward of ``N`` i.i.d. candidates, ties uniform.

    .. math::
        P(R_{BoN} = v_c) = F_c^N - F_{c-1}^N, \qquad F_c = P(R \le v_c).

    The token level streams over candidates (a scan over chunks of
    ``chunk_size`` carrying the running maximum), so memory is independent of
    ``N``; the first index attaining the maximum is selected, which over i.i.d.
    candidates is uniform tie-breaking (THEORY.md §1.9).  The law level draws
    the maximum's class directly as the smallest ``c`` with
    ``N log F_c >= log U``, at a cost independent of ``n`` and ``N``.

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)``.
      num_candidates: ``N >= 1`` (static at the token level; any size, even
        ``10**100``, at the law level).
      num_samples: number of best-of-N draws (static).
      level: ``"token"`` or ``"law"``.
      method: deprecated name of ``level`` (jaxalign < 0.3).
      return_tokens: also return the selected sequences (token level; they are
        regenerated from their keys, never stored during the scan).
      chunk_size: candidates per scan step (static; never changes the numbers).
      batch_size: samples per vectorised step (static; never changes the numbers).
      first_index: index of the first sample of the run.

    Returns:
      A :class:`SelectionDraws`.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> best_of_n(jax.random.key(0), lm, r, 8, 3).reward.shape
      (3,)
    """
    method = _level(level, method)
    num_candidates, num_samples, method, first, chunk_size, batch_size = _validate_bon(
        key,
        lm,
        reward,
        num_candidates,
        num_samples,
        method,
        chunk_size,
        batch_size,
        first_index,
    )
    if method == "law":
        if return_tokens:
            raise ValueError("return_tokens=True needs level='token', got 'law'")
        law = _law_of(lm, reward)
        log_num = jnp.asarray(math.log(num_candidates), law.values.dtype)
        reward_out = _law_rewards_impl(
            key, law, log_num, first, num_samples, _sizes(num_samples, 1, batch_size)
        )
        return SelectionDraws(reward_out, None, None)
    chunk = _chunk(num_candidates, lm.length, chunk_size)
    return _best_of_n_impl(
        key,
        lm,
        reward,
        first,
        num_candidates,
        num_samples,
        chunk,
        _sizes(num_samples, chunk * lm.length, batch_size),
        bool(return_tokens),
    )


def best_of_n_from_law(
    key: PRNGKey,
    values: ArrayLike,
    log_pmf: ArrayLike,
    num_candidates: int | None,
    num_samples: int,
    *,
    log_num_candidates: ArrayLike | None = None,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array:
    r"""Best-of-N rewards drawn from a given discrete law by inverting ``F^N``.

    .. math::
        c = \min\{c : N \log F_c \ge \log U\}, \quad U \sim \mathcal U(0, 1).

    Computed as ``log(-log F_c) <= log E - log N`` with ``E = -log U ~ Exp(1)``
    and ``-log F_c`` from the survival function near the top, so ``N`` may be
    huge (only ``log N`` is used) and tail classes keep relative accuracy.

    Args:
      key: a typed PRNG key.
      values: ``(M,)`` strictly ascending support.
      log_pmf: ``(M,)`` log-probabilities (``-inf`` allowed; normalised here).
      num_candidates: ``N >= 1`` (``N = 1`` samples the law itself), or None
        with ``log_num_candidates``.
      num_samples: number of draws (static).
      log_num_candidates: ``log N >= 0`` instead of ``N`` (may be traced, so a
        jitted sweep can vmap over N without recompiling).
      batch_size: draws per vectorised step (static).
      first_index: index of the first sample of the run.

    Returns:
      ``(num_samples,)`` rewards.

    Examples:
      >>> import jax
      >>> best_of_n_from_law(jax.random.key(0), [0.0, 1.0], [-0.7, -0.7], 4, 2).shape
      (2,)
    """
    check_key(key)
    values, log_pmf = _check_law(values, log_pmf)
    if (num_candidates is None) == (log_num_candidates is None):
        raise ValueError(
            "give exactly one of num_candidates and log_num_candidates, got "
            f"num_candidates={num_candidates!r}, "
            f"log_num_candidates={log_num_candidates!r}"
        )
    if num_candidates is not None:
        num_candidates = check_positive_int(num_candidates, "num_candidates")
        log_num = np.asarray(math.log(num_candidates), values.dtype)
    else:
        check_real(log_num_candidates, "log_num_candidates", minimum=0.0)
        xp = np if is_concrete(log_num_candidates) else jnp
        log_num = xp.asarray(log_num_candidates, values.dtype)
    num_samples = check_positive_int(num_samples, "num_samples")
    batch_size = _check_optional_int(batch_size, "batch_size")
    _check_samples_range(num_samples, first_index)
    law = _RawLaw(values, log_pmf)
    return _law_rewards_impl(
        key,
        law,
        log_num,
        _check_first_index(first_index),
        num_samples,
        _sizes(num_samples, 1, batch_size),
    )


def rewards_from_law(
    key: PRNGKey,
    values: ArrayLike,
    log_pmf: ArrayLike,
    num_samples: int,
    *,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array:
    r"""Draws from a discrete law ``P(R = values[c]) ∝ exp(log_pmf[c])``.

    .. math::
        c = \min\{c : F_c \ge U\}.

    Same as :func:`best_of_n_from_law` with ``N = 1``.

    Examples:
      >>> import jax
      >>> rewards_from_law(jax.random.key(0), [0.0, 1.0], [-0.7, -0.7], 2).shape
      (2,)
    """
    return best_of_n_from_law(
        key,
        values,
        log_pmf,
        1,
        num_samples,
        batch_size=batch_size,
        first_index=first_index,
    )


@prng_jit("num_candidates", "num_samples", "chunk", "batch_size", "law_level")
def _curve_impl(
    key,
    lm,
    reward,
    law,
    first_index,
    num_candidates,
    num_samples,
    chunk,
    batch_size,
    law_level,
):
    stage = _law_stage(law) if law_level else _token_stage(lm, reward)
    indices = _indices(first_index, num_samples)

    def one(i):
        r = _per_sample(stage, jax.random.fold_in(key, i), 0, num_candidates, chunk)
        return jax.lax.cummax(r)

    return _map_samples(one, indices, batch_size)


def best_of_n_curve(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    num_candidates: int,
    num_samples: int,
    *,
    level: str = "token",
    method: str | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    first_index: int = 0,
) -> Array:
    r"""Best-of-N' rewards for every ``N' = 1..N`` from one pass (a running max).

    .. math::
        R^{(N')}_{BoN} = \max_{j < N'} R_j, \qquad N' = 1, \dots, N .

    Candidate ``j`` of sample ``i`` is the same as in :func:`best_of_n` with the
    same key, so ``best_of_n_curve(...)[:, -1] == best_of_n(...).reward``.
    At ``level="law"`` the candidates' rewards are drawn from the exact law of
    ``R`` (cost independent of ``n``).

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)``.
      num_candidates: ``N >= 1`` (static).
      num_samples: number of draws (static).
      level: ``"token"`` or ``"law"``.
      method: deprecated name of ``level`` (jaxalign < 0.3).
      chunk_size: candidates per scan step (static; never changes the numbers).
      batch_size: samples per vectorised step (static).
      first_index: index of the first sample of the run.

    Returns:
      ``(num_samples, N)`` rewards; column ``N'-1`` is best-of-``N'``.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> best_of_n_curve(jax.random.key(0), lm, r, 8, 3).shape
      (3, 8)
    """
    method = _level(level, method)
    num_candidates, num_samples, method, first, chunk_size, batch_size = _validate_bon(
        key,
        lm,
        reward,
        num_candidates,
        num_samples,
        method,
        chunk_size,
        batch_size,
        first_index,
    )
    law = _law_of(lm, reward) if method == "law" else None
    length = 1 if method == "law" else lm.length
    chunk = _chunk(num_candidates, length, chunk_size)
    words = max(num_candidates, chunk * length)
    return _curve_impl(
        key,
        lm,
        reward,
        law,
        first,
        num_candidates,
        num_samples,
        chunk,
        _sizes(num_samples, words, batch_size),
        method == "law",
    )


# ----------------------------------------------------------------------- soft BoN


@prng_jit(
    "num_candidates",
    "num_samples",
    "chunk",
    "batch_size",
    "return_tokens",
    "law_level",
)
def _soft_impl(
    key,
    lm,
    reward,
    law,
    temperature,
    first_index,
    num_candidates,
    num_samples,
    chunk,
    batch_size,
    return_tokens,
    law_level,
):
    key_candidates, key_gumbel = jax.random.split(key)
    stage = _law_stage(law) if law_level else _token_stage(lm, reward)
    indices = _indices(first_index, num_samples)

    def one(i):
        key_g = jax.random.fold_in(key_gumbel, i)

        def score(index, r):
            g = jax.vmap(
                lambda j: jax.random.gumbel(jax.random.fold_in(key_g, j), (), r.dtype)
            )(index)
            return r / temperature.astype(r.dtype) + g

        return _stream_max(
            stage, jax.random.fold_in(key_candidates, i), num_candidates, chunk, score
        )

    reward_out, index = _map_samples(one, indices, batch_size)
    toks = (
        _selected_tokens(lm, key_candidates, first_index, index)
        if return_tokens
        else None
    )
    return SelectionDraws(reward_out, index, toks)


def soft_best_of_n(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    num_candidates: int,
    temperature: ArrayLike,
    num_samples: int,
    *,
    level: str = "token",
    method: str | None = None,
    return_tokens: bool = False,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    first_index: int = 0,
) -> SelectionDraws:
    r"""Soft best-of-N (Verdun et al. 2025): pick candidate ``i`` w.p. ∝ ``e^{R_i/t}``.

    .. math::
        P(Z = i \mid Y_{1:N}) = \frac{e^{R(Y_i)/t}}{\sum_j e^{R(Y_j)/t}} .

    Implemented exactly and in streaming form by a Gumbel-max over candidates:
    ``Z = argmax_i R_i/t + G_i`` with i.i.d. standard Gumbels ``G_i``.  ``t -> 0``
    recovers best-of-N, ``t = inf`` the base policy.  The candidates are those
    of :func:`best_of_n` with key ``split(key)[0]``.

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)``.
      num_candidates: ``N >= 1`` (static).
      temperature: ``t > 0`` (``inf`` allowed; traced).
      num_samples: number of draws (static).
      level: ``"token"`` or ``"law"`` (candidates' rewards from the exact law).
      method: deprecated name of ``level`` (jaxalign < 0.3).
      return_tokens: also return the selected sequences (token level).
      chunk_size: candidates per scan step (static).
      batch_size: samples per vectorised step (static).
      first_index: index of the first sample of the run.

    Returns:
      A :class:`SelectionDraws`.

    References:
      Verdun, Oesterling, Lakkaraju, Calmon, `Soft Best-of-n Sampling for Model
      Alignment <https://arxiv.org/abs/2505.03156>`_, 2025.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> soft_best_of_n(jax.random.key(0), lm, r, 8, 0.5, 3).reward.shape
      (3,)
    """
    method = _level(level, method)
    num_candidates, num_samples, method, first, chunk_size, batch_size = _validate_bon(
        key,
        lm,
        reward,
        num_candidates,
        num_samples,
        method,
        chunk_size,
        batch_size,
        first_index,
    )
    check_real(temperature, "temperature", allow_inf=True)
    if is_concrete(temperature) and not np.all(np.asarray(temperature) > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if return_tokens and method != "token":
        raise ValueError(f"return_tokens=True needs level='token', got {method!r}")
    law = _law_of(lm, reward) if method == "law" else None
    length = 1 if method == "law" else lm.length
    chunk = _chunk(num_candidates, length, chunk_size)
    temperature = jnp.asarray(temperature, float_dtype(reward.token_rewards))
    return _soft_impl(
        key,
        lm,
        reward,
        law,
        temperature,
        first,
        num_candidates,
        num_samples,
        chunk,
        _sizes(num_samples, chunk * length, batch_size),
        bool(return_tokens),
        method == "law",
    )


# ----------------------------------------------------------------------- rejection


@prng_jit("num_samples", "max_proposals", "chunk", "batch_size")
def _rejection_impl(
    key,
    lm,
    reward,
    threshold,
    first_index,
    num_samples,
    max_proposals,
    chunk,
    batch_size,
):
    stage = _token_stage(lm, reward)
    indices = _indices(first_index, num_samples)
    dtype = reward.token_rewards.dtype

    def one(i):
        key_i = jax.random.fold_in(key, i)

        def cond(state):
            start, found, _, _ = state
            return (~found) & (start < max_proposals)

        def body(state):
            start, _, _, _ = state
            index = start + jnp.arange(chunk, dtype=jnp.uint32)
            r = jax.vmap(
                lambda j: stage.consume(stage.draw(jax.random.fold_in(key_i, j)))
            )(index)
            ok = (r >= threshold) & (index < max_proposals)
            arg = jnp.argmax(ok)
            return start + chunk, ok[arg], r[arg], index[arg]

        init = (jnp.uint32(0), jnp.bool_(False), jnp.zeros((), dtype), jnp.uint32(0))
        _, found, r, index = jax.lax.while_loop(cond, body, init)
        count = jnp.where(found, index.astype(jnp.int32) + 1, max_proposals)
        return jnp.where(found, r, jnp.nan), count, found

    reward_out, count, found = _map_samples(one, indices, batch_size)
    return RejectionResult(reward_out, count, found)


@prng_jit("num_samples", "max_proposals", "batch_size")
def _rejection_law_impl(key, law, first_index, num_samples, max_proposals, batch_size):
    dtype = law.values.dtype
    indices = _indices(first_index, num_samples)

    def one(i):
        key_reward, key_count = jax.random.split(jax.random.fold_in(key, i))
        stage = _law_stage(law)
        reward_out = stage.consume(stage.draw(key_reward))
        exponential = jax.random.exponential(key_count, (), dtype)
        # P(accept) = p; proposals ~ Geometric(p): ceil(E / -log(1 - p)).
        return reward_out, exponential

    # The accepted reward is a draw from the law conditioned on R >= threshold;
    # ``law`` here is already that conditional law (see ``rejection``).
    reward_out, exponential = _map_samples(one, indices, batch_size)
    return reward_out, exponential


def rejection(
    key: PRNGKey,
    lm: MemorylessLM,
    reward: LinearReward,
    threshold: ArrayLike,
    num_samples: int,
    *,
    max_proposals: int = 10_000,
    level: str = "token",
    method: str | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    first_index: int = 0,
) -> RejectionResult:
    r"""Rejection sampling ("rewind and repeat"): the first ``y ~ P`` with ``R >= τ``.

    .. math::
        y \sim P(\,\cdot \mid R \ge \tau), \qquad
        \#\text{proposals} \sim \mathrm{Geometric}(P(R \ge \tau)).

    The token level draws proposals ``fold_in(fold_in(key, i), j)`` in chunks
    until one is accepted or ``max_proposals`` were drawn.  The law level draws
    the accepted reward from the exact law conditioned on ``R >= τ`` and the
    number of proposals from its geometric law (truncated at ``max_proposals``).

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)``.
      threshold: the finite reward threshold ``τ`` (a scalar).
      num_samples: number of draws (static).
      max_proposals: proposals allowed per draw (static).
      level: ``"token"`` or ``"law"``.
      method: deprecated name of ``level`` (jaxalign < 0.3).
      chunk_size: proposals per loop step (static; never changes the numbers).
      batch_size: samples per vectorised step (static).
      first_index: index of the first sample of the run.

    Returns:
      A :class:`RejectionResult`.

    Examples:
      >>> import jax, jaxalign
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> rejection(jax.random.key(0), lm, r, 3.0, 2).accepted.shape
      (2,)
    """
    method = _level(level, method)
    num_samples, method, first = _validate_sampler(
        key, lm, reward, num_samples, method, first_index
    )
    check_real(threshold, "threshold")
    if jnp.ndim(threshold) != 0:
        raise ValueError(
            f"threshold must be a scalar, got shape {jnp.shape(threshold)}"
        )
    max_proposals = check_positive_int(max_proposals, "max_proposals")
    if max_proposals >= 2**31:
        raise ValueError(f"max_proposals must be < 2**31, got {max_proposals}")
    chunk_size = _check_optional_int(chunk_size, "chunk_size")
    batch_size = _check_optional_int(batch_size, "batch_size")
    dtype = reward.token_rewards.dtype
    threshold = jnp.asarray(threshold, dtype)
    if method == "law":
        from jaxalign import exact

        law = exact.reward_law(lm, reward)
        values = jnp.asarray(law.values)
        log_pmf = jnp.asarray(law.log_pmf)
        log_pmf = log_pmf - jax.nn.logsumexp(log_pmf)
        tail = jnp.where(values >= threshold.astype(values.dtype), log_pmf, -jnp.inf)
        log_accept = jax.nn.logsumexp(tail)
        if not bool(jnp.isfinite(log_accept)):
            nan = jnp.full(num_samples, jnp.nan, values.dtype)
            return RejectionResult(
                nan,
                jnp.full(num_samples, max_proposals, jnp.int32),
                jnp.zeros(num_samples, bool),
            )
        conditional = _RawLaw(values, tail)
        reward_out, exponential = _rejection_law_impl(
            key,
            conditional,
            first,
            num_samples,
            max_proposals,
            _sizes(num_samples, 1, batch_size),
        )
        rate = -jnp.log1p(-jnp.exp(log_accept))  # -log(1 - p), inf when p = 1
        count = jnp.maximum(jnp.ceil(exponential / rate), 1)
        accepted = count <= max_proposals
        count = jnp.minimum(count, max_proposals).astype(jnp.int32)
        return RejectionResult(
            jnp.where(accepted, reward_out, jnp.nan), count, accepted
        )
    chunk = min(max_proposals, chunk_size or _REJECTION_CHUNK)
    return _rejection_impl(
        key,
        lm,
        reward,
        threshold,
        first,
        num_samples,
        max_proposals,
        chunk,
        _sizes(num_samples, chunk * lm.length, batch_size),
    )


# ----------------------------------------------------------------------- any policy


@prng_jit("num_samples", "chunk", "batch_size", "return_tokens")
def _reweight_impl(key, lm, reward, edges, log_accept, first_index, num_samples,
                   chunk, batch_size, return_tokens):
    stage = lm.sampler_stage(reward)
    indices = _indices(first_index, num_samples)
    dtype = reward.token_rewards.dtype

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
    matched to the nearest of ``values``.  :func:`policy` calls this with ``g``
    from the policy's exact law; ``values`` and ``log_weight`` may be traced (a
    sweep vmaps over them).

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)``.
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
    num_samples, _, first = _validate_sampler(key, lm, reward, num_samples, "token",
                                              first_index)
    chunk = check_positive_int(proposals_per_step, "proposals_per_step")
    batch_size = _check_optional_int(batch_size, "batch_size")
    dtype = reward.token_rewards.dtype
    xp = np if is_concrete(values) and is_concrete(log_weight) else jnp
    values = xp.asarray(values, dtype)
    log_weight = xp.asarray(log_weight, dtype)
    if values.ndim != 1 or log_weight.shape != values.shape:
        raise ValueError(f"values and log_weight must have one shape (M,), got "
                         f"{values.shape} and {log_weight.shape}")
    edges = 0.5 * (values[1:] + values[:-1])
    log_accept = log_weight - xp.max(log_weight)
    r, toks = _reweight_impl(key, lm, reward, edges, log_accept, first, num_samples,
                             chunk, _sizes(num_samples, chunk * lm.length, batch_size),
                             bool(return_tokens))
    return SampleResult(r, toks) if return_tokens else r


def _proposals_per_step(log_max: float) -> int:
    """A power of two near the expected proposals per draw, at most 256."""
    return 1 << min(8, max(0, math.ceil(log_max / math.log(2))))


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
    :func:`soft_best_of_n`), otherwise by exact rejection from the base model,
    accepting a proposal ``y`` with probability ``g(R(y)) / max g`` (``g`` from
    the policy's exact law; the expected number of proposals is ``max g``, and
    work above about ``2^33`` tokens is refused up front).  ``level="law"``
    draws ``R`` from the policy's exact law by inverting its CDF (best-of-N
    inverts ``F^N``, so ``N`` may be astronomically large).  Proposal ``j`` of
    sample ``i`` uses ``split(fold_in(fold_in(key, i), j))``.

    Args:
      key: a typed PRNG key.
      lm: the base model.
      reward: per-token rewards ``(K,)``.
      policy: a :class:`jaxalign.policies.Policy`.
      num_samples: number of draws (static).
      level: ``"token"`` or ``"law"``.
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
    num_samples, _, first = _validate_sampler(key, lm, reward, num_samples, "token",
                                              first_index)
    batch_size = _check_optional_int(batch_size, "batch_size")
    if level == "token" and policy.has_token_sampler:
        policy.check_token_sampling()
        out = policy.sample_tokens(key, lm, reward, num_samples,
                                   first_index=first_index, batch_size=batch_size,
                                   return_tokens=return_tokens)
        if out is not None:
            return out
    law = lm.reward_law(reward)
    if level == "token":
        values = np.asarray(law.values, np.float64)
        base = np.asarray(law.log_pmf, np.float64)
        base = base - np.logaddexp.reduce(base)
        with np.errstate(invalid="ignore"):
            log_g = np.where(np.isfinite(base), policy.log_pmf(values, base) - base,
                             -np.inf)
        log_max = float(np.max(log_g))
        expected = num_samples * math.exp(min(log_max, 700.0)) * lm.length
        if expected > _MAX_PROPOSAL_TOKENS:
            raise ValueError(
                f"token-level sampling of {type(policy).__name__} rejects from the "
                f"base model with acceptance 1/max g = {math.exp(-log_max):.3g}: "
                f"about {expected:.3g} tokens for {num_samples} samples, more than "
                f"{_MAX_PROPOSAL_TOKENS:.3g}; sample at the law level (level='law')")
        return reweighted(key, lm, reward, values, log_g, num_samples,
                          proposals_per_step=_proposals_per_step(log_max),
                          return_tokens=return_tokens, batch_size=batch_size,
                          first_index=first_index)
    values, log_pmf, log_num = policy.law_sampling(
        lm, reward, np.asarray(law.values), np.asarray(law.log_pmf))
    return best_of_n_from_law(key, values, log_pmf, None, num_samples,
                              log_num_candidates=log_num, batch_size=batch_size,
                              first_index=first_index)
