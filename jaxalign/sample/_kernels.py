"""Sampler internals: result types, checks, the alias table, the two-stage
(draw/consume) samplers, exact-law inversion and the streaming pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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
    renamed_keyword,
)
from jaxalign.models import BaseModel, LinearReward, MemorylessLM, check_compatible

_METHODS = ("token", "law", "counts")
# Random words per scan step (uint32), 1 MiB on a CPU: with the draw/consume
# pipeline, token-level best-of-N ran 1.25-1.5x faster at 2^18 than at 2^15 on a
# 2-core CPU (fewer scan steps, each split over both cores); 2^20 was no faster.
# On a GPU a step of 2^18 words is a few short kernels, launch-bound (an H200 drew
# 10.7 G words/s that way against 350 G/s for one flat draw), so accelerators take
# 64x larger steps.  Step sizes never change the numbers (keys are per sample and
# per candidate).
_WORDS_PER_STEP = 1 << 18
_CANDIDATE_WORDS = 1 << 12
_ACCELERATOR_SCALE = 64
_MAX_TOKENS = 1 << 24
# Proposals per rejection-loop step: most draws are accepted within a few.
_REJECTION_CHUNK = 8
_LEVELS = _METHODS


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
    return renamed_keyword(None, method, old="method", new="level", default=level,
                           stacklevel=4)


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


def _check_model(lm: Any, reward: Any = None, any_model: bool = False) -> None:
    from jaxalign.sample._counts import _CountsView

    if isinstance(lm, _CountsView):  # a model seen through its counts
        if reward is None:
            raise ValueError("level='counts' draws token counts, not tokens")
        lm = lm.lm
    if any_model and not isinstance(lm, MemorylessLM) and isinstance(lm, BaseModel):
        # Another family (a MarkovLM): its own sampler stage checks the reward.
        lm.sampler_stage(reward)
        return
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


def _step_scale() -> int:
    return 1 if jax.default_backend() == "cpu" else _ACCELERATOR_SCALE


def _sizes(num_samples: int, words_per_sample: int, batch_size: int | None) -> int:
    if batch_size is not None:
        return min(batch_size, num_samples)
    words = _WORDS_PER_STEP * _step_scale()
    return max(1, min(num_samples, words // max(1, words_per_sample)))


def _chunk(num_candidates: Any, length: int, chunk_size: int | None) -> int:
    """Candidates per step: ``num_candidates`` may be traced (then the default
    step, whatever ``N``)."""
    cap = max(1, _CANDIDATE_WORDS * _step_scale() // length)
    if not isinstance(num_candidates, int):
        return chunk_size or cap
    if chunk_size is not None:
        return min(chunk_size, num_candidates)
    return min(num_candidates, cap)


# ----------------------------------------------------------------------- alias table


class _Alias(NamedTuple):
    threshold: Array  # (2^b,) uint32: keep the column's token when low bits < this
    alias: Array  # (2^b,) int32: the other token of the column
    shift: int  # 32 - b (static)


def _alias_table(probs: Array) -> _Alias:
    """Walker's alias table (Vose's construction) with integer thresholds.

    ``probs`` is ``(K,)``, or ``(..., K)`` for one table per row (the fields
    then have the leading axes): the rows are paired in lockstep, one pairing
    per row and step, so ``R`` rows of ``K`` cost ``O(R K)``, and each row's
    table is the one a single call builds (the same floating-point steps).
    (``vmap`` of a while loop would select whole arrays at every step,
    ``O(R K^2)``.)
    """
    num_tokens = probs.shape[-1]
    batch = probs.shape[:-1]
    probs = probs.reshape(-1, num_tokens)
    num_rows = probs.shape[0]
    bits = max(1, (num_tokens - 1).bit_length())
    num_columns = 1 << bits
    dtype = probs.dtype
    q = jnp.zeros((num_rows, num_columns), dtype).at[:, :num_tokens].set(probs)
    q = jnp.maximum(q * num_columns, 0)
    # Ascending order: zero-probability columns are paired first, while large
    # columns certainly remain, so they always get threshold 0.
    order = jnp.argsort(q, axis=-1).astype(jnp.int32)
    num_small = jnp.sum(q < 1, axis=-1).astype(jnp.int32)
    rows = jnp.arange(num_rows)

    def active(state):
        _, _, _, i, j, _, has_pending = state
        return (has_pending | (i < num_small)) & (j >= num_small)

    def step(state):
        q, prob, alias, i, j, pending, has_pending = state
        go = active(state)
        small = jnp.where(has_pending, pending,
                          order[rows, jnp.minimum(i, num_columns - 1)])
        large = order[rows, jnp.maximum(j, 0)]
        # Finished rows write out of bounds (dropped): no whole-array select.
        q = q.at[rows, jnp.where(go, large, num_columns)].set(
            q[rows, large] + q[rows, small] - 1, mode="drop")
        # Everything else reads the updated q (small != large): a value read from
        # the old q and used after the update makes XLA copy q on every step,
        # O(K^2) in all (17 s at K = 2^18 before this ordering).
        q_large = q[rows, large]
        target = jnp.where(go, small, num_columns)
        prob = prob.at[rows, target].set(q[rows, small], mode="drop")
        alias = alias.at[rows, target].set(large, mode="drop")
        becomes_small = q_large < 1
        i = jnp.where(go & ~has_pending, i + 1, i)
        j = jnp.where(go & becomes_small, j - 1, j)
        pending = jnp.where(go, large, pending)
        has_pending = jnp.where(go, becomes_small, has_pending)
        return q, prob, alias, i, j, pending, has_pending

    zero = jnp.zeros(num_rows, jnp.int32)
    state = (
        q,
        jnp.ones((num_rows, num_columns), dtype),
        jnp.broadcast_to(jnp.arange(num_columns, dtype=jnp.int32),
                         (num_rows, num_columns)),
        zero,
        zero + (num_columns - 1),
        zero,
        jnp.zeros(num_rows, bool),
    )
    _, prob, alias, *_ = jax.lax.while_loop(
        lambda state: jnp.any(active(state)), step, state)
    capacity = float(2 ** (32 - bits))
    threshold = jnp.clip(jnp.floor(prob * capacity), 0, capacity).astype(jnp.uint32)
    shape = (*batch, num_columns)
    return _Alias(threshold.reshape(shape), alias.reshape(shape), 32 - bits)


def _split_words(table: _Alias, words: Array) -> tuple[Array, Array]:
    column = (words >> table.shift).astype(jnp.int32)
    low = words & jnp.uint32((1 << table.shift) - 1)
    return column, low < table.threshold[column]


def _alias_tokens(table: _Alias, words: Array) -> Array:
    """Tokens from uniform 32-bit words through an alias table."""
    column, keep = _split_words(table, words)
    return jnp.where(keep, column, table.alias[column])


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
        return _Stage(draw, lambda words: _alias_tokens(table, words))
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
    """The inverse-CDF table of a law, in JAX (a law traced inside a program).

    Concrete laws take :func:`_law_table` (NumPy, before the program), so the
    sampling programs hold no scan and compile faster.
    """
    # log F_c and log S_c = log P(R > v_c) by one associative scan over the pmf
    # and its reverse, stacked: lax.cumlogsumexp lowers to an O(M^2)
    # reduce-window on CPU (3.5 ms at M = 4097), two separate scans cost 0.42 ms
    # and the stacked one 0.16 ms (half the ops, each twice as wide).
    scans = jax.lax.associative_scan(
        jnp.logaddexp, jnp.stack([log_pmf, log_pmf[::-1]]), axis=1
    )
    return _LawGen(values, _log_neg_log_cdf(scans[0], scans[1], jnp))


def _law_table(values: np.ndarray, log_pmf: np.ndarray) -> _LawGen:
    """:func:`_law_gen` of a concrete law, in NumPy (float64, then the law's dtype)."""
    dtype = np.result_type(values, log_pmf)
    lp = np.asarray(log_pmf, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cum = np.logaddexp.accumulate(lp)
        rev = np.logaddexp.accumulate(lp[::-1])
        table = _log_neg_log_cdf(cum, rev, np)
    return _LawGen(np.asarray(values, dtype), table.astype(dtype))


def _log_neg_log_cdf(cum, rev, xp):
    """``log(-log F_c)`` from the cumulative log-sums of the pmf (``cum``) and of
    its reverse (``rev``), accurate in both tails."""
    log_total = cum[-1]
    log_cdf = cum - log_total
    log_sf = xp.concatenate([rev[-2::-1], xp.full(1, -np.inf, cum.dtype)]) - log_total
    sf = xp.exp(log_sf)
    tiny = np.finfo(cum.dtype).tiny ** 0.5
    # -log F = -log1p(-S) = S (1 + S/2 + ...): keep relative accuracy for tiny S.
    ratio = xp.where(
        sf > tiny, xp.log(-xp.log1p(-sf) / xp.where(sf > tiny, sf, 1)), sf / 2
    )
    from_sf = log_sf + ratio
    from_cdf = xp.log(-xp.minimum(log_cdf, 0))
    log_neg = xp.where(sf < 0.5, from_sf, from_cdf)
    return xp.where(xp.isneginf(log_sf), -np.inf, log_neg)


def _law_index(gen: _LawGen, exponential: Array, log_num: Array) -> Array:
    # Smallest class c with F_c^N >= U, U = e^{-E}: N (-log F_c) <= E.
    target = jnp.log(exponential) - log_num
    return jnp.searchsorted(-gen.log_neg_log_cdf, -target, side="left")


def _law_stage(law: _RawLaw | _LawGen, log_num: Array | None = None) -> _Stage:
    """The law-level stage of a raw law (its table built here, in the program) or
    of a table made beforehand (:func:`_raw_law`)."""
    gen = law if isinstance(law, _LawGen) else _law_gen(law.values, law.log_pmf)
    return _gen_stage(gen, log_num)


def _gen_stage(gen: _LawGen, log_num: Array | None = None) -> _Stage:
    """The law-level stage from a prepared :class:`_LawGen` (a sweep prepares one
    per grid point instead of once per block of draws)."""
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


def _raw_law(values: ArrayLike, log_pmf: ArrayLike) -> _RawLaw | _LawGen:
    """What the law-level programs take: a concrete law's table, made in NumPy
    (no scan in the program), or the raw arrays of a traced law."""
    if is_concrete(values) and is_concrete(log_pmf):
        return _law_table(np.asarray(values), np.asarray(log_pmf))
    return _RawLaw(values, log_pmf)


def _law_of(lm: MemorylessLM, reward: LinearReward) -> _RawLaw | _LawGen:
    from jaxalign import exact

    law = exact.reward_law(lm, reward)
    return _raw_law(law.values, law.log_pmf)


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


def _pipeline_while(draw, consume, update, init, start_of, count):
    """:func:`_pipeline` over a traced number ``count`` of steps with starts
    ``start_of(t)`` (a ``while_loop``: one program for every ``count``); the
    carry only, no per-step outputs."""
    count = jnp.asarray(count, jnp.int32)
    raw_init = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(draw, start_of(0))
    )

    def body(state):
        carry, raw, t = state
        previous = start_of(jnp.maximum(t - 1, 0))
        carry, _ = update(carry, consume(raw, previous), previous, t > 0)
        raw = jax.lax.cond(
            t < count, lambda: draw(start_of(jnp.minimum(t, count - 1))), lambda: raw
        )
        return carry, raw, t + 1

    carry, _, _ = jax.lax.while_loop(
        lambda state: state[2] <= count, body, (init, raw_init, jnp.int32(0))
    )
    return carry


def _draw_block(stage: _Stage, key: PRNGKey, size: int):
    """The raw draws of ``size`` consecutive indices from ``start``.  Jitted, so the
    pipelines' shape query and loop body share one trace of the stage's draw (the
    count level's binomial loops take about 0.5 s to trace)."""

    @jax.jit
    def draw(start):
        index = start + jnp.arange(size, dtype=jnp.uint32)
        return jax.vmap(lambda j: stage.draw(_fold_in(key, j)))(index)

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
    stage: _Stage, key_i: PRNGKey, num_candidates: Any, chunk: int, score_fn=None
):
    """Running first-index argmax over candidates ``fold_in(key_i, j)``, in chunks
    (a scan over a static ``num_candidates``; a ``while_loop`` over a traced one,
    so one program serves every ``N``: the numbers are the same either way)."""

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

    static = isinstance(num_candidates, int)
    draw = _draw_block(stage, key_i if static else _KeyData.of(key_i), chunk)
    raw = jax.eval_shape(draw, jnp.zeros((), jnp.uint32))  # the trace the loop reuses
    dtype = jax.eval_shape(jax.vmap(stage.consume), raw).dtype
    init = (jnp.full((), -jnp.inf, dtype), jnp.zeros((), dtype), jnp.int32(0))
    if static:
        num_chunks = -(-num_candidates // chunk)
        starts = jnp.arange(num_chunks, dtype=jnp.uint32) * chunk
        (_, reward, index), _ = _pipeline(draw, consume, update, init, starts)
    else:
        num_candidates = jnp.asarray(num_candidates, jnp.uint32)
        count = (num_candidates + (chunk - 1)) // chunk
        _, reward, index = _pipeline_while(
            draw, consume, update, init,
            lambda t: jnp.asarray(t, jnp.uint32) * chunk, count)
    return reward, index


class _KeyData(NamedTuple):
    """A key carried as raw data into a ``while_loop`` and re-made at each use.

    Under ``vmap`` a loop with a batched trip count selects between old and new
    values of everything it closes over; JAX's key-reuse checker reads that
    select as a second use of a typed key.  The same key, so the same numbers.
    """

    data: Array
    impl: Any

    @classmethod
    def of(cls, key: PRNGKey) -> _KeyData:
        return cls(jax.random.key_data(key), jax.random.key_impl(key))

    def key(self) -> PRNGKey:
        return jax.random.wrap_key_data(self.data, impl=self.impl)


def _fold_in(key, index):
    """``fold_in`` of a typed key or of a :class:`_KeyData`."""
    if isinstance(key, _KeyData):
        key = key.key()
    return jax.random.fold_in(key, index)
