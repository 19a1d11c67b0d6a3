"""Selection among candidates: best-of-N (and its curve), soft best-of-N,
rejection above a threshold; draws from a given law."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_exactly_one,
    check_key,
    check_positive_int,
    check_real,
    float_dtype,
    is_concrete,
    prng_jit,
)
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.sample._counts import (
    _base_model,
    _check_return_tokens,
    _cost_length,
    _counts_view,
    _words_length,
)
from jaxalign.sample._kernels import (
    _REJECTION_CHUNK,
    RejectionResult,
    SelectionDraws,
    _check_first_index,
    _check_law,
    _check_optional_int,
    _check_samples_range,
    _chunk,
    _fold_in,
    _indices,
    _KeyData,
    _law_of,
    _law_stage,
    _level,
    _map_samples,
    _per_sample,
    _raw_law,
    _sizes,
    _Stage,
    _stream_max,
)
from jaxalign.sample._plain import (
    _law_rewards_impl,
    _validate_sampler,
)

# ------------------------------------------------------------------ the work budget
# Token-level work is refused up front above a budget (a silent hang of minutes
# otherwise).  Cost model, measured with ``sample.best_of_n`` on a 2-core CPU:
# 1.1e8 tokens/s at n = 256 but 2e7 at n = 4, i.e. a sequence of n tokens costs
# about as much as n + 24 tokens at 1.2e8 tokens/s.
_TOKENS_PER_SECOND = 1.2e8
_SEQUENCE_OVERHEAD = 24
#: Token-equivalents one call may draw by default: about 70 s on a 2-core CPU.
_TOKEN_BUDGET = 2**33
_budget = contextvars.ContextVar("jaxalign_token_budget", default=None)


@contextlib.contextmanager
def token_budget(max_tokens: float | None):
    """Raise (or lower) the token-level work a sampler may do inside the block.

    Token-level samplers refuse work above ``2**33`` token-equivalents (a sequence
    of ``n`` tokens counts ``n + 24``; about 70 s on a 2-core CPU) with a
    ``ValueError`` giving the estimate; ``level="law"`` costs nothing in ``N`` or
    ``n``.  Inside ``with token_budget(None):`` (no limit) or a larger number, such
    work runs: its estimate is printed on stderr, then best-of-N, its curve and
    soft best-of-N draw in blocks of samples under a progress bar with an ETA
    (the same numbers as one call).

    Examples:
      >>> import jax, jaxalign
      >>> from jaxalign import sample
      >>> lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> with sample.token_budget(None):  # 10**9 candidates would run here
      ...     sample.best_of_n(jax.random.key(0), lm, r, 8, 2).reward.shape
      (2,)
    """
    if max_tokens is not None and not max_tokens > 0:
        raise ValueError(f"max_tokens must be > 0 or None, got {max_tokens!r}")
    token = _budget.set(math.inf if max_tokens is None else max_tokens)
    try:
        yield
    finally:
        _budget.reset(token)


def _check_work(num_sequences: float, length: int, what: str, advice: str) -> None:
    """Refuse ``num_sequences`` token-level sequences of ``length`` tokens above the
    budget (``ValueError`` with the estimate and ``advice``); above the default
    budget but allowed by :func:`token_budget`, print the estimate on stderr."""
    work = num_sequences * (length + _SEQUENCE_OVERHEAD)
    budget = _budget.get()
    budget = _TOKEN_BUDGET if budget is None else budget
    if work <= min(budget, _TOKEN_BUDGET):
        return
    seconds = work / _TOKENS_PER_SECOND
    estimate = (f"{what} draws about {num_sequences * length:.3g} tokens "
                f"({num_sequences:.3g} sequences of {length}), about {seconds:.3g} s "
                f"at {_TOKENS_PER_SECOND:.2g} tokens/s (a 2-core CPU)")
    if work > budget:
        raise ValueError(
            f"{estimate}: above the budget of {budget:.3g} token-equivalents; "
            f"{advice}, or raise the budget (`with jaxalign.sample.token_budget(None):`"
            " in Python, --max-tokens for `jaxalign sweep`)")
    print(f"jaxalign: {estimate}", file=sys.stderr)


_LAW_ADVICE = "use level='law' (its cost does not depend on N or n)"


def _in_blocks(run, key, first, num_samples: int, num_candidates: int, length: int):
    """``run(key, first, count)`` for the samples ``first .. first + num_samples``;
    work over the default budget (allowed by :func:`token_budget`) runs in blocks
    of samples under a progress bar with an ETA.  Sample ``i`` depends only on
    ``(key, i)``, so the blocks give the numbers of one call."""
    if not is_concrete(num_candidates):  # traced inside a program: run it
        return run(key, first, num_samples)
    per_sample = num_candidates * (length + _SEQUENCE_OVERHEAD)
    if (num_samples * per_sample <= _TOKEN_BUDGET or num_samples == 1
            or not (is_concrete(first) and is_concrete(jax.random.key_data(key)))):
        return run(key, first, num_samples)
    from tqdm.auto import tqdm

    block = max(1, _TOKEN_BUDGET // 8 // per_sample)  # ~10 s per block on 2 cores
    parts = []
    with tqdm(total=num_samples, unit="sample", file=sys.stderr) as bar:
        for start in range(0, num_samples, block):
            count = min(block, num_samples - start)
            # Disjoint sample indices of one key: no random number is reused.
            parts.append(run(jax.random.clone(key), first + start, count))
            bar.update(count)
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


# ----------------------------------------------------------------------- best-of-N


def _selected_tokens(lm, key, first_index, index):
    stage = lm.sampler_stage(None)

    def one(i, j):
        key_i = jax.random.fold_in(key, i)
        return stage.consume(
            stage.draw(jax.random.fold_in(key_i, j.astype(jnp.uint32)))
        )

    sample = first_index + jnp.arange(index.shape[0], dtype=jnp.uint32)
    return jax.vmap(one)(sample, index)


def _candidates_jit(*static_argnames: str):
    """:func:`prng_jit` with ``num_candidates`` static (a Python int: a scan over
    its chunks), and as ``.traced`` with it traced (a ``while_loop``: one program
    for every ``N``, e.g. across a sweep's points)."""

    def wrap(fn):
        jitted = prng_jit("num_candidates", *static_argnames)(fn)
        jitted.traced = prng_jit(*static_argnames)(fn)
        return jitted

    return wrap


def _for_candidates(impl, num_candidates):
    """``impl`` for a Python-int ``num_candidates``, ``impl.traced`` otherwise."""
    return impl if isinstance(num_candidates, int) else impl.traced


@_candidates_jit("num_samples", "chunk", "batch_size", "return_tokens", "draws_only")
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
    draws_only=False,
):
    stage = lm.sampler_stage(reward)  # the base model's own token sampler
    if draws_only:  # the PRNG baseline of _best_of_n_draws_only
        stage = _Stage(stage.draw, lambda words: (words[0] ^ words[-1]).astype(
            reward.token_rewards.dtype))
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
    what,
):
    num_samples, method, first = _validate_sampler(
        key, lm, reward, num_samples, method, first_index, any_model=True
    )
    if method == "counts":
        lm = _counts_view(lm)
    if not is_concrete(num_candidates):
        # Traced N (a sweep's jitted block): one program for every N; the caller
        # checked it.  Not at the law level, whose cost needs log N only.
        if method == "law":
            raise ValueError("a traced num_candidates needs level='token' or "
                             "'counts' (the law level takes log_num_candidates)")
        chunk_size = _check_optional_int(chunk_size, "chunk_size")
        batch_size = _check_optional_int(batch_size, "batch_size")
        return (lm, jnp.asarray(num_candidates, jnp.uint32), num_samples, method,
                first, chunk_size, batch_size)
    num_candidates = check_positive_int(num_candidates, "num_candidates")
    if method != "law" and num_candidates >= 2**32:
        raise ValueError(
            f"num_candidates must be < 2**32 at level={method!r}, got {num_candidates}"
        )
    if method != "law":
        _check_work(num_samples * num_candidates, _cost_length(lm),
                    f"{what}(num_candidates={num_candidates}, "
                    f"num_samples={num_samples}) at level={method!r}", _LAW_ADVICE)
    chunk_size = _check_optional_int(chunk_size, "chunk_size")
    batch_size = _check_optional_int(batch_size, "batch_size")
    return lm, num_candidates, num_samples, method, first, chunk_size, batch_size


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
      level: ``"token"``, ``"counts"`` (candidates' rewards from their token
        counts ``c ~ Multinomial(n, p)``, O(K) each whatever ``n``; see
        :func:`rewards`) or ``"law"``.
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
    lm, num_candidates, num_samples, method, first, chunk_size, batch_size = (
        _validate_bon(key, lm, reward, num_candidates, num_samples, method,
                      chunk_size, batch_size, first_index, "best_of_n"))
    _check_return_tokens(return_tokens, method, lm)
    if method == "law":
        law = _law_of(_base_model(lm), reward)
        log_num = jnp.asarray(math.log(num_candidates), law.values.dtype)
        reward_out = _law_rewards_impl(
            key, law, log_num, first, num_samples, _sizes(num_samples, 1, batch_size)
        )
        return SelectionDraws(reward_out, None, None)
    words = _words_length(lm)
    chunk = _chunk(num_candidates, words, chunk_size)
    impl = _for_candidates(_best_of_n_impl, num_candidates)
    return _in_blocks(
        lambda key, first, count: impl(
            key,
            lm,
            reward,
            first,
            num_candidates,
            count,
            chunk,
            _sizes(count, chunk * words, batch_size),
            bool(return_tokens),
        ),
        key, first, num_samples, num_candidates, _cost_length(lm),
    )


def _best_of_n_draws_only(key: PRNGKey, lm: MemorylessLM, reward: LinearReward,
                          num_candidates: int, num_samples: int) -> Array:
    """Token-level best-of-N's PRNG work alone, the baseline of its throughput.

    The same compiled pipeline as :func:`best_of_n` (same per-sample and
    per-candidate keys, same chunks, the same 32-bit words, one per token), with the
    alias-table consumer replaced by one XOR per candidate.  ``jaxalign bench`` and
    ``benchmarks/bench_sampling.py`` divide by it, so their ratio is the share of the
    time the sampler spends drawing random bits (at most about 1).
    """
    _, num_candidates, num_samples, _, first, _, _ = _validate_bon(
        key, lm, reward, num_candidates, num_samples, "token", None, None, 0,
        "_best_of_n_draws_only")
    chunk = _chunk(num_candidates, lm.length, None)
    return _best_of_n_impl(
        key, lm, reward, first, num_candidates, num_samples, chunk,
        _sizes(num_samples, chunk * lm.length, None), False, True).reward


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
    check_exactly_one(num_candidates=num_candidates,
                      log_num_candidates=log_num_candidates)
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
    law = _raw_law(values, log_pmf)
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
    stage = _law_stage(law) if law_level else lm.sampler_stage(reward)
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
      level: ``"token"``, ``"counts"`` (candidates' rewards from their token
        counts, O(K) each whatever ``n``) or ``"law"``.
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
    lm, num_candidates, num_samples, method, first, chunk_size, batch_size = (
        _validate_bon(key, lm, reward, num_candidates, num_samples, method,
                      chunk_size, batch_size, first_index, "best_of_n_curve"))
    law = _law_of(_base_model(lm), reward) if method == "law" else None
    length = 1 if method == "law" else _words_length(lm)
    cost = 1 if method == "law" else _cost_length(lm)
    chunk = _chunk(num_candidates, length, chunk_size)
    words = max(num_candidates, chunk * length)
    return _in_blocks(
        lambda key, first, count: _curve_impl(
            key,
            lm,
            reward,
            law,
            first,
            num_candidates,
            count,
            chunk,
            _sizes(count, words, batch_size),
            method == "law",
        ),
        key, first, num_samples, num_candidates, cost,
    )


# ----------------------------------------------------------------------- soft BoN


@_candidates_jit("num_samples", "chunk", "batch_size", "return_tokens", "law_level")
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
    stage = _law_stage(law) if law_level else lm.sampler_stage(reward)
    indices = _indices(first_index, num_samples)

    def one(i):
        # As data: a traced N streams in a while_loop (see _KeyData).
        key_g = _KeyData.of(jax.random.fold_in(key_gumbel, i))

        def score(index, r):
            g = jax.vmap(
                lambda j: jax.random.gumbel(_fold_in(key_g, j), (), r.dtype)
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
      level: ``"token"``, ``"counts"`` (candidates' rewards from their token
        counts, O(K) each) or ``"law"`` (candidates' rewards from the exact law).
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
    lm, num_candidates, num_samples, method, first, chunk_size, batch_size = (
        _validate_bon(key, lm, reward, num_candidates, num_samples, method,
                      chunk_size, batch_size, first_index, "soft_best_of_n"))
    check_real(temperature, "temperature", allow_inf=True)
    if is_concrete(temperature) and not np.all(np.asarray(temperature) > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    _check_return_tokens(return_tokens, method, lm)
    law = _law_of(_base_model(lm), reward) if method == "law" else None
    length = 1 if method == "law" else _words_length(lm)
    cost = 1 if method == "law" else _cost_length(lm)
    chunk = _chunk(num_candidates, length, chunk_size)
    # The reward's dtype, whatever its family (a LinearReward, a PairReward).
    temperature = jnp.asarray(temperature, float_dtype(*jax.tree.leaves(reward)))
    impl = _for_candidates(_soft_impl, num_candidates)
    return _in_blocks(
        lambda key, first, count: impl(
            key,
            lm,
            reward,
            law,
            temperature,
            first,
            num_candidates,
            count,
            chunk,
            _sizes(count, chunk * length, batch_size),
            bool(return_tokens),
            method == "law",
        ),
        key, first, num_samples, num_candidates, cost,
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
    stage = lm.sampler_stage(reward)
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
      level: ``"token"``, ``"counts"`` (proposals' rewards from their token
        counts, O(K) each) or ``"law"``.
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
    if method == "counts":
        lm = _counts_view(lm)
    if method == "law":
        from jaxalign import exact

        law = exact.reward_law(_base_model(lm), reward)
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
        conditional = _raw_law(values, tail)
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
        _sizes(num_samples, chunk * _words_length(lm), batch_size),
    )
