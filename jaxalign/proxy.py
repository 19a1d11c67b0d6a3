r"""Proxy rewards, reward hacking and ensembles (THEORY.md A3, A4, M5).

A gold per-token reward ``r`` and a proxy ``r̂ = r + e`` (error models:
:func:`gaussian_proxy`, :func:`biased_proxy`).  Optimising the proxy and scoring by
the gold:

- **tilting** by a linear proxy, closed form (:func:`proxy_tilt`): the policy
  ``π̂_β ∝ P e^{R̂/β}`` is memoryless, so every quantity of A3 is ``n`` times a
  per-token sum;
- **tilting and best-of-N by any sequence score** that depends on a sequence only
  through its token counts (:func:`sequence_tilt`, :func:`sequence_best_of_n`): an
  exact sum over the ``C(n+K-1, K-1)`` count vectors ("types") of ``X^n``.  This covers
  ensembles aggregated at the sequence level (``min_j R̂_j(y)`` is not linear);
- **RL** by the proxy: train with :func:`jaxalign.rl.train` on the proxy and score the
  returned logits with :func:`jaxalign.rl.evaluate` on the gold.

A3 identities (exact, for ``π_β ∝ P e^{R/β}``):
``[E_{π_β}R − βKL(π_β‖P)] − [E_{π̂_β}R − βKL(π̂_β‖P)] = β KL(π̂_β‖π_β)`` and
``G(β) = E_{π_β}R − E_{π̂_β}R = β[KL(π_β‖P) − KL(π̂_β‖P) + KL(π̂_β‖π_β)]``, with
``|G| ≤ (R_max − R_min)·sqrt(osc(E)/(4β))`` where ``E = Σ_i e(x_i)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._numerics import compositions
from jaxalign._types import (
    Array,
    ArrayLike,
    PRNGKey,
    check_key,
    check_real,
    classic_threefry,
    is_concrete,
)
from jaxalign.models import LinearReward, MemorylessLM, check_compatible
from jaxalign.theory._renyi import _categorical_kl
from jaxalign.theory._tilt import _kl_token, _tilted

__all__ = [
    "AGGREGATIONS",
    "ProxyTiltResult",
    "SelectionResult",
    "GoodhartData",
    "gaussian_proxy",
    "biased_proxy",
    "ensemble",
    "proxy_tilt",
    "type_counts",
    "sequence_tilt",
    "sequence_best_of_n",
    "goodhart_data",
]

AGGREGATIONS = ("mean", "min", "max", "median")
_MAX_TYPES = 500_000


# -- proxies -------------------------------------------------------------------------


def gaussian_proxy(key: PRNGKey, gold: LinearReward, scale: ArrayLike,
                   num_proxies: int | None = None) -> LinearReward:
    r"""Proxy ``r̂(x) = r(x) + scale · ξ_x`` with i.i.d. ``ξ_x ~ N(0, 1)`` per token.

    Args:
      key: typed PRNG key.
      gold: the gold reward ``r (K,)``.
      scale: noise standard deviation ``>= 0`` (scalar or ``(K,)``).
      num_proxies: if given, ``k`` independent proxies stacked as token rewards
        ``(k, K)`` (a batched :class:`LinearReward`, for :func:`ensemble` and the
        ``sequence_*`` functions); otherwise one ``(K,)`` proxy.

    Examples:
      >>> import jax, jaxalign
      >>> gold = jaxalign.LinearReward([0.0, 1.0, 2.0])
      >>> gaussian_proxy(jax.random.key(0), gold, 0.0).token_rewards.tolist()
      [0.0, 1.0, 2.0]
    """
    check_key(key)
    _check_reward(gold, "gold")
    check_real(scale, "scale", minimum=0.0)
    r = gold.token_rewards
    shape = r.shape if num_proxies is None else (int(num_proxies),) + r.shape
    if num_proxies is not None and int(num_proxies) < 1:
        raise ValueError(f"num_proxies must be an integer >= 1, got {num_proxies!r}")
    noise = classic_threefry(jax.random.normal)(key, shape, dtype=r.dtype)
    scale = jnp.asarray(scale, dtype=r.dtype)
    if num_proxies is not None:
        r, scale = r[None], jnp.reshape(jnp.broadcast_to(scale, r.shape), (1, -1))
    return LinearReward.unchecked(r + scale * noise)


def biased_proxy(gold: LinearReward, tokens: ArrayLike, bias: ArrayLike
                 ) -> LinearReward:
    r"""Proxy with a systematic error on chosen tokens: ``r̂ = r + bias·1[x ∈ tokens]``.

    Args:
      gold: the gold reward ``(K,)``.
      tokens: integer token indices in ``[0, K)`` that the proxy over-rates.
      bias: scalar (or one value per listed token) added to those tokens.

    Examples:
      >>> import jaxalign
      >>> gold = jaxalign.LinearReward([0.0, 1.0, 2.0])
      >>> biased_proxy(gold, [0], 3.0).token_rewards.tolist()
      [3.0, 1.0, 2.0]
    """
    _check_reward(gold, "gold")
    k = gold.num_tokens
    tokens = np.atleast_1d(np.asarray(tokens))
    if tokens.dtype.kind not in "iu" or np.any(tokens < 0) or np.any(tokens >= k):
        raise ValueError(
            f"tokens must be integer indices in [0, {k}), got {tokens.tolist()}"
        )
    check_real(bias, "bias")
    r = gold.token_rewards
    return LinearReward(r.at[tokens].add(jnp.asarray(bias, dtype=r.dtype)))


def _check_reward(reward, name: str) -> None:
    if not isinstance(reward, LinearReward):
        raise ValueError(f"{name} must be a LinearReward, got {type(reward).__name__}")


def _stacked(proxies, num_tokens: int | None = None) -> Array:
    """``(k, K)`` token rewards from a batched LinearReward, a sequence or an array."""
    if isinstance(proxies, LinearReward):
        arr = proxies.token_rewards
    elif isinstance(proxies, Sequence) and proxies and all(
            isinstance(p, LinearReward) for p in proxies):
        arr = jnp.stack([p.token_rewards for p in proxies])
    else:
        arr = jnp.asarray(proxies)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(
            f"proxies must be token rewards of shape (K,) or (k, K), got {arr.shape}"
        )
    if num_tokens is not None and arr.shape[1] != num_tokens:
        raise ValueError(
            f"proxies must have K = {num_tokens} tokens, got shape {arr.shape}"
        )
    check_real(arr, "proxies")
    return arr


def _check_how(how: str) -> str:
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    return how


def _aggregate(values: Array, how: str) -> Array:
    return {"mean": jnp.mean, "min": jnp.min, "max": jnp.max,
            "median": jnp.median}[how](values, axis=0)


def ensemble(proxies, how: str = "mean") -> LinearReward:
    r"""Token-level ensemble of ``k`` proxies: ``r̄(x) = agg_j r̂_j(x)``.

    For ``how="mean"`` this is also the sequence-level mean ``(1/k) Σ_j R̂_j(y)``
    (linearity), with error ``ē`` and ``osc(ē) ≤ (1/k) Σ_j osc(e_j)`` (A4).  For
    ``min``/``max``/``median`` the token-level aggregate differs from aggregating
    sequence rewards; use :func:`sequence_tilt` / :func:`sequence_best_of_n` with
    ``how=...`` for the latter.

    Args:
      proxies: ``(k, K)`` token rewards, a batched :class:`LinearReward`, or a list of
        :class:`LinearReward`.
      how: one of :data:`AGGREGATIONS`.

    Examples:
      >>> ensemble(jnp.array([[0.0, 2.0], [1.0, 0.0]]), "min").token_rewards.tolist()
      [0.0, 0.0]
    """
    _check_how(how)
    return LinearReward(_aggregate(_stacked(proxies), how))


# -- closed-form tilting by a linear proxy ------------------------------------------


class ProxyTiltResult(NamedTuple):
    """Tilting by a proxy at ``β`` scored by the gold (sequence level, 0-d arrays)."""

    kl: Array  # KL(π̂_β ‖ P)
    proxy_reward: Array  # E_{π̂_β} R̂
    gold_reward: Array  # E_{π̂_β} R
    optimal_kl: Array  # KL(π_β ‖ P), the gold tilt at the same β
    optimal_reward: Array  # E_{π_β} R
    gap: Array  # G(β) = E_{π_β} R − E_{π̂_β} R
    regret: Array  # β KL(π̂_β ‖ π_β): loss in the regularised gold objective
    kl_to_optimal: Array  # KL(π̂_β ‖ π_β)
    jeffreys: Array  # J(π̂_β, π_β) = (E_{π̂_β} E − E_{π_β} E) / β
    gap_bound: Array  # (R_max − R_min) sqrt(n osc(e) / (4β)) >= |G|


def proxy_tilt(lm: MemorylessLM, gold: LinearReward, proxy: LinearReward,
               beta: ArrayLike) -> ProxyTiltResult:
    r"""Exact reward-hacking quantities of the proxy tilt ``π̂_β ∝ P e^{R̂/β}`` (A3).

    .. math::
        G(\beta) = \beta\left[\mathrm{KL}(\pi_\beta\|P) - \mathrm{KL}(\hat\pi_\beta\|P)
            + \mathrm{KL}(\hat\pi_\beta\|\pi_\beta)\right], \qquad
        |G(\beta)| \le (R_{\max}-R_{\min}) \sqrt{\frac{n\,\mathrm{osc}(e)}{4\beta}}.

    All fields are computed directly (``n`` times per-token sums); the identities are
    properties the tests check, not how the fields are built (except ``gap_bound``).

    Args:
      lm: base model ``P`` of length ``n``.
      gold: gold reward ``r``; proxy: ``r̂`` (same ``K``).
      beta: scalar ``β > 0`` (``λ = 1/β``); vmap for a curve.

    Returns:
      A :class:`ProxyTiltResult` of 0-d arrays.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(2, length=3)
      >>> gold = jaxalign.LinearReward([0.0, 1.0])
      >>> abs(float(proxy_tilt(lm, gold, gold, 1.0).gap)) < 1e-12
      True
    """
    check_compatible(lm, gold)
    check_compatible(lm, proxy)
    check_real(beta, "beta", minimum=0.0)
    if is_concrete(beta) and float(np.min(beta)) == 0.0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    beta = jnp.asarray(beta, dtype=lm.log_probs.dtype)
    return _proxy_tilt_core(lm.log_probs, gold.token_rewards, proxy.token_rewards,
                            beta, lm.length)


@jax.jit(static_argnames="n")
def _proxy_tilt_core(log_p, r, rh, beta, n):

    t_hat, t_opt = _tilted(log_p, rh, 1 / beta), _tilted(log_p, r, 1 / beta)
    log_hat, log_opt = t_hat.log_phi, t_opt.log_phi
    hat, opt = t_hat.phi, t_opt.phi
    kl_hat, kl_opt = n * _kl_token(t_hat), n * _kl_token(t_opt)
    gold_hat, gold_opt = n * jnp.sum(hat * r), n * jnp.sum(opt * r)
    kl_ho = n * _categorical_kl(log_hat, log_opt)
    kl_oh = n * _categorical_kl(log_opt, log_hat)
    support = ~jnp.isneginf(log_p)
    err = rh - r
    osc_e = jnp.max(jnp.where(support, err, -jnp.inf)) - jnp.min(
        jnp.where(support, err, jnp.inf))
    r_range = n * (jnp.max(jnp.where(support, r, -jnp.inf))
                   - jnp.min(jnp.where(support, r, jnp.inf)))
    return ProxyTiltResult(
        kl=kl_hat,
        proxy_reward=n * jnp.sum(hat * rh),
        gold_reward=gold_hat,
        optimal_kl=kl_opt,
        optimal_reward=gold_opt,
        gap=gold_opt - gold_hat,
        regret=beta * kl_ho,
        kl_to_optimal=kl_ho,
        jeffreys=kl_ho + kl_oh,
        gap_bound=r_range * jnp.sqrt(n * osc_e / (4 * beta)),
    )


# -- exact laws over types (count vectors) -------------------------------------------


def type_counts(num_tokens: int, length: int) -> np.ndarray:
    """All count vectors ``c ∈ N^K`` with ``Σ c = n``: the types of ``X^n``.

    Returns an ``(M, K)`` integer array, ``M = C(n+K-1, K-1)``.

    Examples:
      >>> type_counts(2, 2).tolist()
      [[2, 0], [1, 1], [0, 2]]
    """
    k, n = int(num_tokens), int(length)
    m = math.comb(n + k - 1, k - 1)
    if m > _MAX_TYPES:
        raise ValueError(
            f"type enumeration needs C(n+K-1, K-1) = {m} types for K = {k}, n = {n}; "
            f"allowed at most {_MAX_TYPES}"
        )
    return compositions(n, k)


class SelectionResult(NamedTuple):
    """Exact outcome of a selection rule driven by a (proxy) score, scored by gold."""

    kl: Array  # KL(Q ‖ P), sequence level
    score: Array  # E_Q[S], the selection score (proxy)
    gold_reward: Array  # E_Q[R], the gold reward


@functools.lru_cache(maxsize=32)
def _type_tables(num_tokens: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    counts = type_counts(num_tokens, length)
    log_coef = math.lgamma(length + 1) - np.sum(
        [[math.lgamma(c + 1) for c in row] for row in counts], axis=1)
    return counts, log_coef


def _types_setup(lm: MemorylessLM, gold: LinearReward, proxies, how: str):
    check_compatible(lm, gold)
    _check_how(how)
    dtype = lm.log_probs.dtype
    prox = _stacked(proxies, lm.num_tokens).astype(dtype)
    counts, log_coef = _type_tables(lm.num_tokens, lm.length)
    return (lm.log_probs, gold.token_rewards, prox, jnp.asarray(counts, dtype=dtype),
            jnp.asarray(log_coef, dtype=dtype))


def _types_core(log_p, r, prox, counts, log_coef, how):
    terms = jnp.where(counts > 0, counts * log_p[None, :], 0.0)
    log_mult = log_coef + jnp.sum(terms, axis=1)
    scores = _aggregate(prox @ counts.T, how)  # (k, M) -> (M,)
    return log_mult, scores, counts @ r


@jax.jit(static_argnames="how")
def _sequence_tilt_core(log_p, r, prox, counts, log_coef, lam, how):
    log_mult, s, g = _types_core(log_p, r, prox, counts, log_coef, how)
    log_w = log_mult + lam * s
    log_z = jax.nn.logsumexp(log_w)
    q = jnp.exp(log_w - log_z)
    kl = jnp.sum(jnp.where(q > 0, q * (lam * s - log_z), 0.0))
    return SelectionResult(kl, jnp.sum(q * s), jnp.sum(q * g))


@jax.jit(static_argnames="how")
def _sequence_bon_core(log_p, r, prox, counts, log_coef, num, tie_rtol, how):
    log_mult, s, g = _types_core(log_p, r, prox, counts, log_coef, how)
    dtype = log_mult.dtype
    m = s.shape[0]
    order = jnp.argsort(s, stable=True)
    s_sorted = s[order]
    tol = tie_rtol * (1 + jnp.max(jnp.abs(s)))
    new = jnp.concatenate([jnp.ones(1, bool), jnp.diff(s_sorted) > tol])
    cls = jnp.cumsum(new) - 1
    mult_sorted = jnp.exp(log_mult[order])
    q = jax.ops.segment_sum(mult_sorted, cls, num_segments=m)
    f = jnp.cumsum(q)
    f_minus = jnp.concatenate([jnp.zeros(1, dtype), f[:-1]])
    log_f = jnp.log(f)
    gap = jnp.where(q > 0, jnp.log(jnp.where(f_minus > 0, f_minus, 1.0)) - log_f, 0.0)
    gap = jnp.where(f_minus > 0, gap, -jnp.inf)
    b = jnp.where(q > 0, jnp.exp(num * log_f) * -jnp.expm1(num * gap), 0.0)
    ratio = jnp.where(q > 0, b / jnp.where(q > 0, q, 1.0), 0.0)
    kl = jnp.sum(jnp.where(b > 0, b * jnp.log(jnp.where(b > 0, ratio, 1.0)), 0.0))
    w = mult_sorted * ratio[cls]
    return SelectionResult(kl, jnp.sum(w * s_sorted), jnp.sum(w * g[order]))


def sequence_tilt(lm: MemorylessLM, gold: LinearReward, proxies, lam: ArrayLike,
                  how: str = "mean") -> SelectionResult:
    r"""Exact tilt by a sequence score ``S(y) = agg_j R̂_j(y)``, scored by the gold.

    .. math::
        Q(y) \propto P(y) e^{\lambda S(y)}, \qquad
        \mathrm{KL}(Q\|P) = \lambda E_Q S - \log E_P e^{\lambda S},

    summed exactly over the types of ``X^n`` (:func:`type_counts`).  With one proxy
    (or ``how="mean"``) ``Q`` is memoryless and equals :func:`proxy_tilt`.

    Args:
      lm: base model (``K``, ``n`` small enough for type enumeration).
      gold: gold reward ``(K,)``.
      proxies: ``(K,)`` or ``(k, K)`` proxy token rewards (see :func:`ensemble`).
      lam: scalar tilt ``λ = 1/β >= 0``.
      how: sequence-level aggregation of the ``k`` proxy rewards.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(2, length=2)
      >>> gold = jaxalign.LinearReward([0.0, 1.0])
      >>> float(sequence_tilt(lm, gold, gold.token_rewards, 0.0).gold_reward)
      1.0
    """
    check_real(lam, "lam", minimum=0.0)
    args = _types_setup(lm, gold, proxies, how)
    lam = jnp.asarray(lam, dtype=lm.log_probs.dtype)
    return _sequence_tilt_core(*args, lam, how=how)


def sequence_best_of_n(lm: MemorylessLM, gold: LinearReward, proxies,
                       num_candidates: ArrayLike, how: str = "mean",
                       tie_rtol: float | None = None) -> SelectionResult:
    r"""Exact best-of-N selected by a sequence score ``S`` and scored by the gold.

    Uniform tie-breaking among candidates with equal ``S`` (THEORY.md §1.9): with
    score classes ``v_1 < … < v_C``, masses ``q_c`` and ``F_c = Σ_{j≤c} q_j``,
    ``b_c = F_c^N − F_{c−1}^N`` and ``π_BoN(y) = P(y) b_{c(y)}/q_{c(y)}``, so

    .. math::
        \mathrm{KL} = \sum_c b_c \log\frac{b_c}{q_c}, \qquad
        E_{BoN}[R] = \sum_y P(y) \frac{b_{c(y)}}{q_{c(y)}} R(y).

    Scores equal within ``tie_rtol · (1 + max|S|)`` (default ``1000·eps`` of the
    dtype) form one class, so float rounding of equal sums does not split ties.

    Args:
      lm, gold, proxies, how: as in :func:`sequence_tilt`.
      num_candidates: scalar ``N >= 1`` (may be traced; vmap for a grid).
      tie_rtol: relative tolerance for ties.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(2, length=1)
      >>> gold = jaxalign.LinearReward([0.0, 1.0])
      >>> float(sequence_best_of_n(lm, gold, gold.token_rewards, 2).gold_reward)
      0.75
    """
    check_real(num_candidates, "num_candidates", minimum=1.0)
    args = _types_setup(lm, gold, proxies, how)
    dtype = lm.log_probs.dtype
    if tie_rtol is None:
        tie_rtol = 1000 * float(jnp.finfo(dtype).eps)
    num = jnp.asarray(num_candidates, dtype=dtype)
    return _sequence_bon_core(*args, num, jnp.asarray(tie_rtol, dtype=dtype), how=how)


# -- Goodhart curves ---------------------------------------------------------------


class GoodhartData(NamedTuple):
    """Gold-vs-proxy curves for tilting and best-of-N by a proxy (plot data)."""

    betas: Array  # (B,)
    tilt_kl: Array  # (B,) KL of the proxy tilt
    tilt_proxy_reward: Array  # (B,)
    tilt_gold_reward: Array  # (B,)
    optimal_kl: Array  # (B,) KL of the gold tilt at the same β
    optimal_reward: Array  # (B,) gold reward of the gold tilt
    num_candidates: Array  # (C,)
    bon_kl: Array  # (C,) KL of best-of-N by the proxy
    bon_proxy_reward: Array  # (C,)
    bon_gold_reward: Array  # (C,)


def goodhart_data(lm: MemorylessLM, gold: LinearReward, proxies, betas: ArrayLike,
                  num_candidates: ArrayLike, how: str = "mean") -> GoodhartData:
    r"""Goodhart curves: gold and proxy reward against KL for tilting and best-of-N.

    Both selections use the sequence score ``agg_j R̂_j`` (exact over types); the gold
    tilt at each ``β`` gives the unhacked reference.

    Args:
      lm, gold, proxies, how: as in :func:`sequence_tilt`.
      betas: ``(B,)`` values ``β > 0``.
      num_candidates: ``(C,)`` values ``N >= 1``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.uniform(2, length=2)
      >>> gold = jaxalign.LinearReward([0.0, 1.0])
      >>> d = goodhart_data(lm, gold, jnp.array([1.0, 0.0]), jnp.array([1.0]),
      ...                   jnp.array([1.0, 4.0]))
      >>> d.bon_gold_reward.shape
      (2,)
    """
    betas = jnp.asarray(betas, dtype=lm.log_probs.dtype)
    nc = jnp.asarray(num_candidates, dtype=lm.log_probs.dtype)
    if betas.ndim != 1 or nc.ndim != 1:
        raise ValueError(
            f"betas and num_candidates must be 1-d, got shapes {betas.shape} "
            f"and {nc.shape}"
        )
    check_real(betas, "betas", minimum=0.0)
    if is_concrete(betas) and np.any(np.asarray(betas) == 0):
        raise ValueError(f"betas must be > 0, got {np.asarray(betas)}")
    check_real(nc, "num_candidates", minimum=1.0)
    _stacked(proxies, lm.num_tokens)
    tilt = jax.vmap(lambda b: sequence_tilt(lm, gold, proxies, 1 / b, how))(betas)
    opt = jax.vmap(lambda b: sequence_tilt(lm, gold, gold.token_rewards, 1 / b))(betas)
    bon = jax.vmap(lambda k: sequence_best_of_n(lm, gold, proxies, k, how))(nc)
    return GoodhartData(betas, tilt.kl, tilt.score, tilt.gold_reward, opt.kl,
                        opt.gold_reward, nc, bon.kl, bon.score, bon.gold_reward)
