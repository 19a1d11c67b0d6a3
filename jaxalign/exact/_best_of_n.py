"""Exact best-of-N for any N (through log N), with uniform ties."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxalign._numerics import log1mexp_of_exp, log_neg_log1m, lse
from jaxalign._types import Array, check_exactly_one
from jaxalign.exact._lattice import (
    RewardLaw,
    _check_scalar,
    _law_numpy,
    _law_options,
)
from jaxalign.models import LinearReward, MemorylessLM

# ---------------------------------------------------------------------- best of N


class BestOfNResult(NamedTuple):
    """Exact best-of-N quantities on the law of ``R``; leading shape ``G`` = grid of N.

    Attributes:
      log_num_candidates: ``(G,)`` ``log N``.
      expected_reward: ``(G,)`` ``E_BoN[R]``.
      kl: ``(G,)`` ``KL(π_BoN ‖ P)`` (policy level = reward level, ties uniform).
      win_rate: ``(G,)`` ``P(R_BoN > R') + ½ P(R_BoN = R')``, ``R' ~ P`` independent.
      log_pmf: ``(G, M)`` log-law of the selected reward on ``values``.
      values: ``(M,)`` the reward values (those of the base law).
      kl_to_tilted: ``(G,)`` ``KL(π_BoN ‖ Φ_λ)`` when ``lam`` was given, else None.
    """

    log_num_candidates: Array
    expected_reward: Array
    kl: Array
    win_rate: Array
    log_pmf: Array
    values: Array
    kl_to_tilted: Array | None


def _law_prep(log_pmf: np.ndarray):
    """Per-law float64 arrays for the best-of-N core (independent of N).

    Returns log(-log F_c), log(-log(1 - q_c/F_c)) and F_{c-1}, each (M,).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.logaddexp.accumulate(log_pmf)  # log F_c
        at_least = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
        above = np.r_[at_least[1:], -np.inf]  # log P(R > v_c)
        use_lower = lower < math.log(0.5)
        log_f = np.where(use_lower, lower, np.log1p(-np.exp(above)))
        lnl = np.where(use_lower, np.log(-np.where(use_lower, lower, -1.0)),
                       log_neg_log1m(above))
        finite = np.isfinite(log_pmf)
        ratio = np.where(finite, np.minimum(log_pmf - np.where(finite, log_f, 0.0),
                                            0.0), -np.inf)
        lnr = log_neg_log1m(ratio)
        below = np.r_[0.0, np.exp(lower[:-1])]
    return lnl, lnr, below


def _bon_core(values, log_pmf, lnl, lnr, below, log_n, lam, log_mgf_n):
    """Best-of-N on a prepared float64 law; log_n (G,); lam, log_mgf_n scalars."""
    finite_q = np.isfinite(log_pmf)
    with np.errstate(over="ignore", invalid="ignore"):
        a = -np.exp(log_n[:, None] + lnl[None, :])  # log F_c^N, (G, M)
        d = log_n[:, None] + lnr[None, :]  # log(A_c - A_{c-1})
        log_b = np.where(finite_q[None, :], a + log1mexp_of_exp(d), -np.inf)
        expected = values[0] + np.sum(np.diff(values)[None, :] * -np.expm1(a[:, :-1]),
                                      axis=1)
        b = np.exp(log_b)
        log_ratio = np.where(b > 0, log_b - np.where(finite_q, log_pmf, 0.0)[None, :],
                             0.0)
    # KL >= 0: rounding must never make it negative (N = 1 gives -4e-17 otherwise).
    kl = np.maximum(np.sum(b * log_ratio, axis=1), 0.0)
    win = b @ (below + 0.5 * np.exp(log_pmf))
    kl_tilted = kl - lam * expected + log_mgf_n
    return expected, kl, win, log_b, kl_tilted


def _log_candidates(num_candidates, log_num_candidates) -> np.ndarray:
    check_exactly_one(num_candidates=num_candidates,
                      log_num_candidates=log_num_candidates)
    if num_candidates is not None:
        arr = np.asarray(num_candidates, dtype=object)
        flat = arr.reshape(-1)
        logs = np.empty(flat.shape, dtype=np.float64)
        for i, v in enumerate(flat):
            try:
                iv = int(v)
            except (TypeError, ValueError, OverflowError):
                iv = None
            if iv is None or isinstance(v, bool) or iv != v or iv < 1:
                raise ValueError(
                    f"num_candidates must be integers >= 1, got {num_candidates!r}"
                )
            logs[i] = math.log(iv)
        return logs.reshape(arr.shape)
    logs = np.asarray(log_num_candidates, dtype=np.float64)
    if np.any(np.isnan(logs)) or np.any(logs < 0) or np.any(np.isinf(logs)):
        raise ValueError(
            "log_num_candidates must be finite and >= 0 (N >= 1), got "
            f"{log_num_candidates!r}"
        )
    return logs


def best_of_n_from_law(
    law: RewardLaw,
    *,
    num_candidates=None,
    log_num_candidates=None,
    lam: float | None = None,
) -> BestOfNResult:
    r"""Exact best-of-N on a given law of the reward (see :func:`best_of_n`).

    Args:
      law: a :class:`RewardLaw` (or any ascending ``values``/``log_pmf``).
      num_candidates: ``N``, an integer or array of integers ``>= 1`` (Python
        integers may be arbitrarily large).
      log_num_candidates: ``log N`` instead, floats ``>= 0``, any shape.
      lam: optional tilt ``λ`` for ``kl_to_tilted``.

    Returns:
      A :class:`BestOfNResult` with leading shape that of ``N``.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> law = reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
      >>> float(best_of_n_from_law(law, num_candidates=2).expected_reward)
      0.75
    """
    log_n = _log_candidates(num_candidates, log_num_candidates)
    return _bon(np.asarray(law.values, dtype=np.float64),
                np.asarray(law.log_pmf, dtype=np.float64), log_n, lam,
                law.log_pmf.dtype)


def _bon(values, log_pmf, log_n, lam, dtype) -> BestOfNResult:
    if lam is None:
        lam64, mgf = 0.0, 0.0
    else:
        _check_scalar(lam, "lam")
        lam64 = float(lam)
        mgf = float(lse(log_pmf + lam64 * values))
    shape = log_n.shape
    expected, kl, win, log_b, kl_tilted = _bon_core(
        values, log_pmf, *_law_prep(log_pmf), log_n.reshape(-1), lam64, mgf)

    def cast(x, extra=()):
        return jnp.asarray(x.reshape(shape + extra), dtype=dtype)

    # A best-of-N log-probability N log F(v) can be finite in float64 and below
    # float32's range (N = e^200, F(v) = 1 - 1e-45): its float32 value is -inf, the
    # log of a probability that rounds to 0 there; cast without NumPy's overflow
    # warning (an error under -W error).
    with np.errstate(over="ignore"):
        log_b = log_b.astype(np.dtype(dtype))
    return BestOfNResult(
        log_num_candidates=cast(log_n),
        expected_reward=cast(expected),
        kl=cast(kl),
        win_rate=cast(win),
        log_pmf=cast(log_b, values.shape),
        values=jnp.asarray(values, dtype=dtype),
        kl_to_tilted=None if lam is None else cast(kl_tilted),
    )


def best_of_n(
    lm: MemorylessLM,
    reward: LinearReward,
    num_candidates=None,
    log_num_candidates=None,
    *,
    lam: float | None = None,
    **law_kwargs,
) -> BestOfNResult:
    r"""Exact best-of-N (uniform tie-breaking) for any N, on the exact law of R.

    With reward classes :math:`v_1 < \dots < v_M`, :math:`q_c = P(R = v_c)`,
    :math:`F_c = \sum_{j \le c} q_j` (THEORY.md §1.9, B3, B7):

    .. math::
        b_c = F_c^N - F_{c-1}^N, \quad
        \mathrm{KL}(\pi_{BoN}\|P) = \sum_c b_c \log\frac{b_c}{q_c}, \quad
        E_{BoN}[R] = v_1 + \sum_{c\ge 2} (v_c - v_{c-1})(1 - F_{c-1}^N),

    .. math::
        W = P(R_{BoN} > R') + \tfrac12 P(R_{BoN} = R') = \sum_c b_c (F_{c-1} + q_c/2),
        \quad
        \mathrm{KL}(\pi_{BoN}\|\Phi_\lambda) = \mathrm{KL}(\pi_{BoN}\|P)
            - \lambda E_{BoN}[R] + n\Lambda(\lambda).

    ``R'`` in the win rate is an independent draw from the base model ``P``.
    Both policies depend on a sequence only through ``R``, so the policy-level
    KLs equal these reward-level sums.  ``F^N`` is ``exp(N log F)`` evaluated as
    ``-exp(log N + log(-log F))`` with ``log1p``/``expm1``, so ``N`` is never
    formed as a float (``log N = 1000`` is fine); ``b_c`` is
    ``F_c^N (1 - e^{-(A_c - A_{c-1})})`` with the exponent gap computed from
    ``log(-log(1 - q_c/F_c))``, so it keeps relative accuracy: the error of
    ``log b_c`` is about the law's ``rel_error`` times ``max(1, |log b_c|)``
    (``N log F`` scales the relative error of ``log F``).

    Args:
      lm, reward: model and reward (the law comes from :func:`reward_law`).
      num_candidates: ``N``, integer(s) ``>= 1``, any shape (the grid).
      log_num_candidates: ``log N`` instead (exactly one of the two).
      lam: optional tilt for ``kl_to_tilted``.
      **law_kwargs: passed to :func:`reward_law` (``span``, ``method`` ...).

    Returns:
      A :class:`BestOfNResult` (fields shaped like the ``N`` grid, plus ``(M,)``
      for ``log_pmf``), in the model's dtype, computed in float64.

    Raises:
      ValueError: both or neither of ``num_candidates``/``log_num_candidates``,
      ``N < 1``, or a law error from :func:`reward_law`.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> res = best_of_n(lm, jaxalign.LinearReward([0.0, 1.0]), num_candidates=[1, 2])
      >>> [float(v) for v in res.expected_reward]
      [0.5, 0.75]
    """
    log_n = _log_candidates(num_candidates, log_num_candidates)
    values, log_pmf, *_, dtype = _law_numpy(lm, reward, **_law_options(law_kwargs))
    return _bon(values, log_pmf, log_n, lam, dtype)



def best_of_n_report(lm: MemorylessLM, reward: LinearReward,
                     log_num_candidates) -> list[dict[str, float]]:
    """Exact best-of-N rows, each beside the tilted policy with the same KL (what
    ``jaxalign exact`` prints): ``E[R]``, ``KL``, its bound ``log N - (N-1)/N``,
    the win rate and the frontier ``optimal_reward`` at that KL.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> rows = best_of_n_report(lm, jaxalign.LinearReward([0.0, 1.0]), [0.0])
      >>> rows[0]["expected_reward"], rows[0]["win_rate"]
      (0.5, 0.5)
    """
    from jaxalign import theory

    bon = best_of_n(lm, reward, log_num_candidates=log_num_candidates)
    rows = []
    for i, log_n in enumerate(log_num_candidates):
        kl = float(bon.kl[i])
        rows.append({
            "log_num_candidates": float(log_n),
            "expected_reward": float(bon.expected_reward[i]),
            "kl": kl,
            "kl_bound": float(theory.best_of_n_kl_bound(log_num_candidates=log_n)),
            "win_rate": float(bon.win_rate[i]),
            "tilted_reward_at_same_kl": float(theory.optimal_reward(lm, reward, kl)),
        })
    return rows
