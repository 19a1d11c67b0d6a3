"""The exact law of ``R`` for a chain: a log-space DP over (state, reward)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import (
    Array,
    check_memory,
    renamed_keyword,
)
from jaxalign.markov._finite import (
    _step,
)
from jaxalign.markov._model import (
    MarkovLM,
    _prepare,
)

# ------------------------------------------------------------------- law of R (DP)

# exp(x - max) underflows below -745: entries more than e^700 below their column's
# largest are dropped by the scaled product, which changes a result by a relative
# K e^{-700 - c} at most when the result is at least e^{-c} of that largest entry;
# results below e^{-600} of it (reachable only through dropped states) are redone
# with the exact log-sum-exp.
_SCALED_RANGE = 700.0
_SAFE_RANGE = 600.0


def _scaled_matmul(f: Array, log_p: Array) -> tuple[Array, Array]:
    """The scaled product of :func:`_log_matmul` and its ``(L,)`` mask of columns
    where underflow could matter (to be redone exactly)."""
    m = jnp.max(f, axis=0, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    shifted = f - m
    out = jnp.log(jnp.exp(log_p).T @ jnp.exp(shifted)) + m
    dropped = jnp.any(jnp.isfinite(f) & (shifted < -_SCALED_RANGE), axis=0)
    deep = dropped & jnp.any(~(out - m >= -_SAFE_RANGE), axis=0)
    return out, deep


def _log_matmul(f: Array, log_p: Array) -> Array:
    """``log Σ_a exp(f[a, s]) P(a, b)`` for ``f (K, L)``: ``(K, L)`` indexed ``[b, s]``.

    A matrix product scaled per column (all terms positive, so relative accuracy
    ``~K eps``), exact log-sum-exp where underflow could matter (see above).
    """
    out, deep = _scaled_matmul(f, log_p)

    def exact():
        full = jax.nn.logsumexp(f[:, None, :] + log_p[:, :, None], axis=0)
        return jnp.where(deep[None, :], full, out)

    return jax.lax.cond(jnp.any(deep), exact, lambda: out)


@functools.partial(jax.jit,
                   static_argnames=("length", "size", "shifts", "fallback"))
def _law_dp(log_init, log_trans, k_first, k_pair, k_col, length: int, size: int,
            shifts: tuple[int, ...] | None, fallback: bool):
    """``(log P(S = s), deep)``, ``s = 0..size-1``, by the (state, S) recursion:
    one scaled product per step and a shift of row ``b`` by ``k_col[b]``
    (``shifts=None``, linear rewards), or one product per distinct step ``j`` of
    ``k(a, b)``.

    ``fallback=False`` uses the scaled products only and reports in ``deep``
    whether any step needed the exact fallback of :func:`_log_matmul`; when none
    did, the result is the one ``fallback=True`` gives (whose ``deep`` is
    False).  The fallback's (K, K, L) log-sum-exp in each phase is
    most of the compile time (2.0 of 2.7 s at K = 16, n = 1024), so callers run
    without it and redo the rare deep cases with it."""
    k = log_init.shape[0]
    d = (size - 1) // length
    # Only S <= (t + 1) d is reachable after t steps: the buffer grows in two phases
    # (steps up to n/2, then n), three quarters of the work of a full one.  Each
    # phase is a scan of its own in the program: four phases (n/8, n/4, n/2, n) did
    # two thirds of the work but compiled 0.8 s longer (K = 16, n = 1024: cold
    # 2.66 s -> 1.83 s, warm 0.53 s -> 0.62 s on a 2-core CPU).
    ends = sorted({min(max(length * q // 8, 1), length - 1)
                   for q in (4, 8)} | {length - 1}) if length > 1 else []
    widths = [min(size, (e + 1) * d + 1) for e in ends]
    f = jnp.full((k, widths[0] if widths else size), -jnp.inf, log_init.dtype)
    f = f.at[jnp.arange(k), k_first].set(log_init)

    def shift(t, by):  # out[b, s] = t[b, s - by[b]]
        cols = jnp.arange(t.shape[1])
        idx = cols[None, :] - by[:, None]
        moved = jnp.take_along_axis(t, jnp.clip(idx, 0, t.shape[1] - 1), axis=1)
        return jnp.where(idx >= 0, moved, -jnp.inf)

    def product(f, lp, deep):
        if fallback:
            return _log_matmul(f, lp), deep
        out, cols = _scaled_matmul(f, lp)
        return out, deep | jnp.any(cols)

    def step(carry, i):
        f, deep = carry
        lp = _step(log_trans, i)
        if shifts is None:
            out, deep = product(f, lp, deep)
            return (shift(out, k_col), deep), None
        new = jnp.full_like(f, -jnp.inf)
        for j in shifts:
            t, deep = product(f, jnp.where(k_pair == j, lp, -jnp.inf), deep)
            new = jnp.logaddexp(new, shift(t, jnp.full(k, j)))
        return (new, deep), None

    begin, deep = 0, jnp.zeros((), bool)
    for e, w in zip(ends, widths, strict=True):
        if e > begin:
            f = jnp.pad(f, ((0, 0), (0, w - f.shape[1])), constant_values=-jnp.inf)
            (f, deep), _ = jax.lax.scan(step, (f, deep), jnp.arange(begin, e))
            begin = e
    f = jnp.pad(f, ((0, 0), (0, size - f.shape[1])), constant_values=-jnp.inf)
    return jax.nn.logsumexp(f, axis=0), deep


def _lattice_of(log_init, log_trans, first, pair, span, rtol, max_steps, dtype):
    from jaxalign.exact._lattice import _lattice

    on_first = np.isfinite(log_init)
    on_pair = np.any(np.isfinite(log_trans.reshape(-1, *pair.shape)), axis=0)
    values = np.concatenate([first[on_first], pair[on_pair]])
    a, h, _, err = _lattice(values, span, rtol, max_steps, dtype)
    k_first = np.where(on_first, np.rint((first - a) / h), 0).astype(np.int64)
    k_pair = np.where(on_pair, np.rint((pair - a) / h), 0).astype(np.int64)
    return a, h, k_first, k_pair, on_pair, err


def _law_numpy(lm, reward, span=None, rtol=None, max_steps=1_000_000,
               algorithm="lattice", max_types=None):
    if algorithm != "lattice":
        raise ValueError(
            f"algorithm must be 'lattice' for a MarkovLM, got {algorithm!r}")
    log_init, log_trans, first, pair, dtype = _prepare(lm, reward)
    log_init, log_trans, first, pair = (
        np.asarray(x, np.float64) for x in (log_init, log_trans, first, pair))
    a, h, k_first, k_pair, on_pair, err = _lattice_of(
        log_init, log_trans, first, pair, span, rtol, max_steps, dtype)
    n, k = lm.length, lm.num_tokens
    d = int(max(k_first.max(), k_pair.max()))
    size = n * d + 1
    # The DP holds (state, S) tables in float64 with a few temporaries of that size.
    check_memory(64 * k * size,
                 f"the chain's lattice law needs K x (n * max_k + 1) = {k} x {size} DP "
                 "entries", "pass a coarser span=h or a shorter length")
    # k(a, b) = k(b) wherever P(a, b) > 0 (linear rewards): one product per step.
    k_col = np.max(np.where(on_pair, k_pair, 0), axis=0)
    linear = bool(np.all((k_pair == k_col[None, :]) | ~on_pair))
    shifts = None if linear else tuple(int(j) for j in np.unique(k_pair))
    with jax.enable_x64(True):
        args = (jnp.asarray(log_init), jnp.asarray(log_trans), jnp.asarray(k_first),
                jnp.asarray(k_pair), jnp.asarray(k_col), n, size, shifts)
        log_pmf, deep = _law_dp(*args, fallback=False)
        if bool(deep):  # underflow could matter somewhere: the exact fallback
            log_pmf, _ = _law_dp(*args, fallback=True)
        log_pmf = np.asarray(log_pmf)
    rel = 2.2e-16 * (k + 4) * n
    values = n * a + h * np.arange(size, dtype=np.float64)
    return values, log_pmf, float(n * a), float(h), float(err), rel, np.dtype(dtype)


def reward_law(lm: MarkovLM, reward, *, span: float | None = None,
               rtol: float | None = None, max_steps: int = 1_000_000,
               algorithm: str | None = None, max_types: int | None = None,
               method: str | None = None):
    r"""The exact law of ``R`` for a chain and a lattice reward.

    Every reward term (first-token and step rewards with positive probability) is
    ``a + h k`` with integers ``k`` (detected as in
    :func:`jaxalign.exact.reward_law`, or snapped with ``span=h``), so
    ``R = n a + h S`` and the DP over (state, ``S``)

    .. math::
        f_1(b, k_1(b)) = \mu(b), \qquad
        f_t(b, s) = \sum_a f_{t-1}(a, s - k(a, b))\, P_t(a, b), \qquad
        P(S = s) = \sum_b f_n(b, s)

    runs in log space, jitted (a ``lax.scan`` over ``t``, float64 whatever the x64
    mode): each step is a matrix product scaled per ``s`` column (all
    terms positive, so every probability keeps *relative* accuracy, deep tails
    included), with an exact log-sum-exp where a state more than ``e^{700}``
    below its column's largest could matter.  Cost ``O(n^2 K^2 d)`` for
    ``d = max k``; ``rel_error`` reports ``2.2e-16 (K + 4) n``.  Float64 NumPy;
    not traceable.

    Args:
      lm: the chain (homogeneous or not).
      reward: a :class:`LinearReward` or :class:`PairReward`.
      span, rtol, max_steps: the lattice, as for :func:`jaxalign.exact.reward_law`.
      algorithm: ``"lattice"`` (the only algorithm for chains; ``method=`` is its
        deprecated former name).
      max_types: accepted for the common signature; unused.

    Returns:
      A :class:`jaxalign.exact.RewardLaw`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> lm = jaxalign.MarkovLM.from_probs([1.0, 0.0], [[0.5, 0.5], [0.0, 1.0]],
      ...                                   length=3)
      >>> law = reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
      >>> [round(float(x), 3) for x in jnp.exp(law.log_pmf)]
      [0.25, 0.25, 0.5, 0.0]
    """
    from jaxalign.exact._lattice import _to_law

    algorithm = renamed_keyword(algorithm, method, old="method", new="algorithm",
                                default="lattice")
    return _to_law(*_law_numpy(lm, reward, span, rtol, max_steps, algorithm,
                               max_types))
