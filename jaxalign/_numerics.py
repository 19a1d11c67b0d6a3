"""Float64 NumPy numerics shared by the exact routes (private): one home for each.

Everything here works in log space and keeps *relative* accuracy for tiny and huge
arguments, so laws with probabilities like ``1e-300`` and ``N = e^{1000}`` candidates
stay exact.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "compositions",
    "lse",
    "lse_by_group",
    "log1mexp_of_exp",
    "log_neg_log1m",
    "log_cdf_sf",
]


def lse(x, axis=None):
    """NumPy log-sum-exp (scipy's array-API wrapper is slow for small inputs)."""
    x = np.asarray(x, dtype=np.float64)
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out.reshape(()) if axis is None else np.squeeze(out, axis=axis)


def lse_by_group(labels: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    """``log sum_{i: labels_i = g} exp(x_i)`` for ``g = 0 .. size - 1`` (``-inf`` for
    an empty group), in ``O(len(x) + size)``: each group is scaled by its own maximum,
    so every group sum keeps relative accuracy."""
    x = np.asarray(x, dtype=np.float64)
    peak = np.full(size, -np.inf)
    np.maximum.at(peak, labels, x)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    total = np.bincount(labels, weights=np.exp(x - peak[labels]), minlength=size)
    with np.errstate(divide="ignore"):
        return np.log(total) + peak


def log_neg_log1m(log_u: np.ndarray) -> np.ndarray:
    """log(-log(1 - u)) for u = exp(log_u) in [0, 1], accurate for tiny u."""
    log_u = np.minimum(log_u, 0.0)
    small = log_u < -20.0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        direct = np.log(-np.log1p(-np.exp(np.where(small, -1.0, log_u))))
        tiny = log_u + 0.5 * np.exp(np.where(small, log_u, -1.0))
    return np.where(small, tiny, direct)


def log1mexp_of_exp(log_x: np.ndarray) -> np.ndarray:
    """log(1 - e^{-x}) for x = exp(log_x) >= 0, accurate for tiny and huge x."""
    small = log_x < -20.0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = np.exp(np.where(small, -20.0, log_x))
        mid = np.where(x < math.log(2.0), np.log(-np.expm1(-x)), np.log1p(-np.exp(-x)))
        tiny = log_x - 0.5 * np.exp(np.where(small, log_x, -20.0))
    return np.where(small, tiny, mid)


def log_cdf_sf(log_pmf: np.ndarray):
    """``(log F_c, log S_c)`` of a discrete law: ``F_c = P(R <= v_c)``,
    ``S_c = P(R > v_c)``, each with relative accuracy (``F`` from ``1 - S`` near the
    top, so ``log F_c`` is accurate even when ``F_c`` rounds to 1)."""
    log_pmf = np.asarray(log_pmf, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.logaddexp.accumulate(log_pmf)
        at_least = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
        log_sf = np.r_[at_least[1:], -np.inf]
        log_cdf = np.where(lower < math.log(0.5), lower, np.log1p(-np.exp(log_sf)))
    return log_cdf, log_sf


def compositions(n: int, k: int) -> np.ndarray:
    """All ``(C(n+k-1, k-1), k)`` non-negative integer vectors summing to ``n`` (the
    types of a sequence of ``n`` tokens over ``k`` values), the first entry
    descending, then the rest recursively."""
    if k == 1:
        return np.array([[n]], dtype=np.int64)
    blocks = []
    for first in range(n, -1, -1):
        rest = compositions(n - first, k - 1)
        blocks.append(np.concatenate([np.full((len(rest), 1), first), rest], axis=1))
    return np.concatenate(blocks, axis=0)
