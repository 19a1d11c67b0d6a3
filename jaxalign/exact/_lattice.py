"""The exact law of R on its lattice (tilted FFTs with exact log-space edges),
the types law, tilted laws, exact tails and the Bahadur–Rao approximation."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxalign._numerics import compositions, lse, lse_by_group
from jaxalign._types import Array, check_memory, renamed_keyword
from jaxalign.models import BaseModel, LinearReward, MemorylessLM, check_compatible

# Relative tolerance for lattice detection, by input dtype (module docstring of
# `reward_law`).
_LATTICE_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-9}
# A tilted FFT value is final once its estimated relative error (the window's
# round-off bound over the value; ~1e-15 of the tilted peak for smooth laws) is
# below 1e-10; otherwise further tilts are tried.
_LOG_MIN_SNR = math.log(1e10)
# Bernstein bound on the aliased mass of a tilted law outside its FFT window:
# 2 exp(-72) ~ 1e-31 (counted in each window's error bound).
_ALIAS_CONST = 72.0
_ALIAS_MASS = 2.0 * math.exp(-_ALIAS_CONST)
# Peak memory of the lattice route, measured: ~50-180 bytes per lattice point
# (the window buffers, the law, its support) and a few float64 copies per token.
_BYTES_PER_POINT = 256
_BYTES_PER_TOKEN = 64
# Spectrum entries below e^-750 of the peak do not change any float64 sum.
_LOG_TINY = -750.0


class RewardLaw(NamedTuple):
    """The exact law of the sequence reward ``R`` on its (ascending) support points.

    Attributes:
      values: ``(M,)`` ascending reward values; for a lattice law
        ``offset + span * arange(M)``.  Lattice points with probability 0 are
        kept, with ``log_pmf = -inf``.
      log_pmf: ``(M,)`` natural log of ``P(R = values[i])``.
      offset: ``n a``, the smallest value (lattice laws), a Python float.
      span: the lattice span ``h`` (``nan`` for a non-lattice law).
      lattice_error: ``max_x |r(x) - (a + h k_x)|`` over tokens with positive
        probability: 0 up to rounding when a lattice was detected, the snapping
        error when ``span`` was given.
      rel_error: an estimated bound on the relative error of ``exp(log_pmf)``
        (absolute error of ``log_pmf``) from the numerical method.
    """

    values: Array
    log_pmf: Array
    offset: float
    span: float
    lattice_error: float
    rel_error: float


# ----------------------------------------------------------------------------- lattice


def _positive_tokens(lm: MemorylessLM, reward: LinearReward):
    check_compatible(lm, reward)
    log_p = np.asarray(lm.log_probs, dtype=np.float64)
    r = np.asarray(reward.token_rewards, dtype=np.float64)
    keep = np.isfinite(log_p)
    return log_p[keep], r[keep], np.dtype(lm.log_probs.dtype)


def _detect_lattice(r: np.ndarray, rtol: float, max_steps: int):
    """Return (a, h, k) with r ~= a + h k, k >= 0 integers with gcd 1, min k = 0."""
    a = float(r.min())
    diffs = r - a
    scale = float(diffs.max())
    if scale == 0.0:
        return a, 1.0, np.zeros(r.shape, dtype=np.int64), 0.0
    positive = np.unique(diffs[diffs > rtol * scale])
    base = float(positive[0])
    # Any real is within 1/q^2 of a fraction p/q, so only denominators with
    # 1/q^2 >> rtol are evidence of a lattice.
    max_den = max(1, min(max_steps, int(0.1 / math.sqrt(rtol))))
    # Integer multiples of the smallest step need no rational search.
    whole = np.abs(positive - base * np.rint(positive / base)) <= rtol * scale
    denominators = [1]
    for d in positive[~whole]:
        frac = Fraction(float(d / base)).limit_denominator(max_den)
        if abs(d - base * float(frac)) > rtol * scale:
            distinct = np.unique(r)
            raise ValueError(
                "token_rewards do not lie on a lattice a + h*k with integer k "
                f"(relative tolerance rtol={rtol:g}, step ratios with denominators "
                f"<= {max_den}): {len(distinct)} distinct rewards "
                f"{distinct[:8].tolist()}{' ...' if len(distinct) > 8 else ''}; "
                "pass span=h to snap them to a grid of span h, or use "
                "algorithm='types' for small K and n"
            )
        denominators.append(frac.denominator)
    lcm = math.lcm(*denominators)
    h = base / lcm
    k = np.rint(diffs / h).astype(np.int64)
    g = int(np.gcd.reduce(k))
    k //= g
    h *= g
    # Least-squares refinement of (a, h) on the detected integer steps.
    if k.max() > 0:
        design = np.stack([np.ones(len(k)), k.astype(np.float64)], axis=1)
        (a_fit, h_fit), *_ = np.linalg.lstsq(design, r, rcond=None)
        if k.min() == 0 and np.max(np.abs(r - a_fit - h_fit * k)) <= np.max(
            np.abs(r - a - h * k)
        ):
            a, h = float(a_fit), float(h_fit)
    err = float(np.max(np.abs(r - a - h * k)))
    if k.max() > max_steps:
        raise ValueError(
            f"token_rewards need {int(k.max())} lattice steps (span {h:g}), more "
            f"than max_steps={max_steps}; pass a coarser span=h to snap them"
        )
    return a, h, k, err


def _snap(r: np.ndarray, span: float):
    a = float(r.min())
    k = np.rint((r - a) / span).astype(np.int64)
    return a, float(span), k, float(np.max(np.abs(r - a - span * k)))


# SciPy is imported where it is used (scipy.fft and scipy.special: 0.2 s,
# scipy.optimize: 0.4 s), so importing jaxalign's samplers and theory needs none of it.


def _brentq(*args, **kwargs):
    import scipy.optimize

    return scipy.optimize.brentq(*args, **kwargs)


def _bool_convolve(x: np.ndarray, y: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` entries of the sumset indicator of ``x`` and ``y`` (0/1)."""
    import scipy.fft

    x, y = x[:width].astype(np.float64), y[:width].astype(np.float64)
    # A linear convolution by one zero-padded real FFT (scipy.fft, not
    # scipy.signal, which costs 0.9 s to import); 0/1 inputs, so rounding of
    # order 1e-12 * width never crosses 0.5.
    length = scipy.fft.next_fast_len(len(x) + len(y) - 1, real=True)
    conv = scipy.fft.irfft(scipy.fft.rfft(x, length) * scipy.fft.rfft(y, length),
                           length)[:width]
    return (conv > 0.5).astype(np.float64)


def _bool_power(present: np.ndarray, n: int, width: int) -> np.ndarray:
    """Indicator of the n-fold sumset of {j : present[j]}, truncated to ``width``
    (truncation commutes with sums of non-negative sets)."""
    result, base, m = None, present[:width], n
    while m:
        if m & 1:
            result = base if result is None else _bool_convolve(result, base, width)
        m >>= 1
        if m:
            base = _bool_convolve(base, base, width)
    out = np.zeros(width, dtype=bool)
    out[: len(result)] = result > 0.5
    return out


def _full_from(present: np.ndarray, n: int):
    """``(s0, j)`` with ``[s0, s0 + d) ⊂ jA`` for ``A = {j : present[j]}`` and a power
    of two ``j <= n``, or ``None``.  Then, as ``0, d ∈ A``, every ``n ≥ j`` has
    ``nA ⊇ [s0, s0 + (n - j + 1) d)``."""
    d = len(present) - 1
    cur, j = present.copy(), 1
    while True:
        padded = np.r_[False, cur, False].astype(np.int8)
        starts = np.flatnonzero(np.diff(padded) == 1)
        ends = np.flatnonzero(np.diff(padded) == -1)
        long = np.flatnonzero(ends - starts >= d)
        if long.size:
            return int(starts[long[0]]), j
        if 2 * j > n:
            return None
        cur = _bool_convolve(cur, cur, 2 * len(cur) - 1) > 0.5
        j *= 2


def _support(present: np.ndarray, n: int) -> np.ndarray | None:
    """Exact support of the n-fold sum of {j : present[j]} (None = everything).

    With ``0, d`` in the set ``A``, a run ``[s0, s0 + d) ⊂ jA`` grows by ``d`` with
    each further summand, so ``nA`` is full between the first such run from the
    bottom and its mirror from the top (``O(s0)`` work found by doubling ``j``);
    only the two ends below them need the truncated n-fold sumset.
    """
    d = len(present) - 1
    if present.all():
        return None
    size = n * d + 1
    low, high = _full_from(present, n), _full_from(present[::-1], n)
    if low is None or high is None or low[1] + high[1] > n + 1:
        return _bool_power(present, n, size)
    (s_low, _), (s_high, _) = low, high
    full = np.ones(size, dtype=bool)
    if s_low:
        full[:s_low] = _bool_power(present, n, s_low)
    if s_high:
        full[size - s_high :] = _bool_power(present[::-1], n, s_high)[::-1]
    return full


def _expm1i(x: np.ndarray) -> np.ndarray:
    """e^{ix} - 1 - ix, accurate in relative terms for small |x|."""
    half = np.sin(0.5 * x)
    x2 = x * x
    series = -x * x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0)))
    return -2.0 * half * half + 1j * np.where(np.abs(x) < 0.1, series, np.sin(x) - x)


def _tail_sums(c: np.ndarray) -> np.ndarray:
    """T_l = sum_{v >= l+2} c_v (v-1-l), l = 0 .. len(c)-2 (c_v at v = 1, 2 ...)."""
    tail = np.cumsum(c[::-1])[::-1]  # sum_{v >= k} c_v, k = 1, 2, ...
    return np.cumsum(tail[::-1])[::-1][1:]


def _low_frequencies(x: np.ndarray, length: int, cut: int) -> np.ndarray:
    """``sum_l x_l e^{iω_k l}`` at ``ω_k = 2π k / length``, ``k < cut``: directly
    (``e^{iωl}`` as products of two accurate exponentials, over blocks of about
    ``sqrt(len(x))``) when that is cheaper than a length-``length`` FFT."""
    import scipy.fft

    if cut * len(x) > length or len(x) == 0:
        return np.conj(scipy.fft.rfft(x, length)[:cut])
    block = max(1, math.isqrt(len(x)))
    count = -(-len(x) // block)
    padded = np.zeros(block * count)
    padded[: len(x)] = x
    omega = 2.0 * np.pi * np.arange(cut) / length
    inner = np.exp(1j * omega[:, None] * np.arange(float(block))[None, :])
    outer = np.exp(1j * omega[:, None] * (block * np.arange(float(count)))[None, :])
    partial = np.einsum("kj,bj->kb", inner, padded.reshape(count, block))
    return np.einsum("kb,kb->k", partial, outer)


def _centred_cf(w: np.ndarray, length: int, floor: float):
    r"""(m, δ, log(1 + z), error bound): the log of the centred characteristic
    function of a pmf ``w`` on ``0..d`` (``d < length``) at
    ``ω_k = 2π k / length``, ``k = 0 .. length // 2``, with its round-off bound;
    ``-inf`` where ``log|1 + z| < floor``.

    .. math::
        1 + z_k = \sum_j w_j e^{iω_k (j - μ)}, \qquad μ = \sum_j j w_j.

    ``n log|1 + z|`` must keep relative accuracy where ``|z| ~ ω² σ²`` is tiny, so
    with ``m = round(μ)``, ``v = j - m``, ``δ = μ - m``, ``q = e^{iω} - 1`` and two
    summations by parts, ``e^{iωv} = 1 + v q + q² Σ_{l=0}^{v-2} (v-1-l) e^{iωl}``
    (``v ≥ 0``; mirrored for ``v < 0``), so that

    .. math::
        z = G(-ωδ) + e^{-iωδ}\big(P E(ω) + N E(-ω) + q² A_+(ω) + \bar q² A_-(ω)\big),

    with ``E(x) = e^{ix} - 1 - ix``, ``G(x) = x² + E(x)(1 - ix)``,
    ``P = Σ_{v>0} v w``, ``N = Σ_{v<0} |v| w`` and ``A_±`` FFTs of the positive
    double tail sums of ``w`` on either side of ``m``.  Every term is
    ``O(ω² E v²)`` and computed in relative terms, so the error is
    ``~ε ω² E v²`` like a direct sum of ``w_j E(ω(j - μ))``, at ``O(length log length)``
    cost.  Where ``ω² E v² > 1`` the plain FFT ``e^{-iωδ} Σ_j w_j e^{iωv} - 1``
    (error ``~ε``) is as accurate and is used instead.  With few steps the low
    frequencies are the direct sum ``Σ_j w_j E(ω(j - μ))`` (same error).
    """
    import scipy.fft

    d = len(w) - 1
    m = int(round(float(np.sum(w * np.arange(d + 1.0)))))
    plus, minus = w[m + 1 :], w[:m][::-1]
    v_plus, v_minus = np.arange(1.0, len(plus) + 1), np.arange(1.0, len(minus) + 1)
    p1, n1 = float(np.sum(plus * v_plus)), float(np.sum(minus * v_minus))
    delta = p1 - n1
    second = float(np.sum(plus * v_plus**2) + np.sum(minus * v_minus**2))
    omega = 2.0 * np.pi * np.arange(length // 2 + 1) / length
    rolled = np.zeros(length)
    rolled[: d + 1] = w
    phi = np.conj(scipy.fft.rfft(np.roll(rolled, -m)))  # sum_j w_j e^{iωv}
    with np.errstate(divide="ignore"):
        log_abs = 0.5 * np.log(phi.real**2 + phi.imag**2)
    out = np.full(len(omega), -np.inf + 0j)
    keep = np.flatnonzero(log_abs >= floor)
    angle = np.angle(phi[keep]) - omega[keep] * delta
    out[keep] = log_abs[keep] + 1j * angle
    # Round-off bounds on log(1 + z): the FFT's ~ε log2(L) ||w||_2 on φ, and ε
    # relative on the log and the angle.
    eps, digits = np.finfo(np.float64).eps, math.log2(length)
    err = np.zeros(len(omega))
    err[keep] = eps * (digits * math.sqrt(np.sum(w * w)) * np.exp(-log_abs[keep])
                       + np.abs(log_abs[keep]) + np.abs(angle) + 2.0 * np.abs(
                           omega[keep] * delta))
    cut = int(np.searchsorted(omega * omega * second, 1.0, side="right"))
    steps = np.flatnonzero(w)
    om = omega[:cut]
    if cut and cut * len(steps) <= length:
        # Few steps: the direct sum of w_j E(ω(j - μ)) costs less than an FFT.
        z = np.sum(_expm1i(om[:, None] * ((steps - m) - delta)[None, :])
                   * w[steps][None, :], axis=1)
    elif cut:
        e_plus = _expm1i(om)
        q = e_plus + 1j * om
        a_plus = _low_frequencies(_tail_sums(plus), length, cut)
        a_minus = np.conj(_low_frequencies(_tail_sums(minus), length, cut))
        x = -om * delta
        z = x * x + _expm1i(x) * (1.0 - 1j * x) + np.exp(1j * x) * (
            p1 * e_plus + n1 * np.conj(e_plus) + q * q * a_plus
            + np.conj(q) ** 2 * a_minus)
    if cut:
        out[:cut] = 0.5 * np.log1p(2.0 * z.real + (z.real**2 + z.imag**2)) + 1j * (
            np.arctan2(z.imag, 1.0 + z.real))
        err[:cut] = eps * (4.0 + digits) * om * om * second
    return m, delta, out, err


class _Tilter:
    """Tilted-FFT evaluation of the law of S = sum of n i.i.d. steps in {0..d}."""

    def __init__(self, log_w: np.ndarray, n: int):
        self.log_w = log_w
        self.n = n
        self.d = len(log_w) - 1
        self.size = n * self.d + 1
        self.steps = np.flatnonzero(np.isfinite(log_w))
        self.lw = log_w[self.steps]
        self.jf = self.steps.astype(np.float64)

    def log_mgf(self, theta: float) -> float:
        return float(lse(self.lw + theta * self.jf))

    def mean(self, theta: float) -> float:
        t = self.lw + theta * self.jf
        w = np.exp(t - t.max())
        return float(np.sum(w * self.jf) / w.sum())

    def solve(self, target_mean: float) -> float:
        lo, hi = -1.0, 1.0
        while self.mean(lo) > target_mean:
            lo *= 2.0
        while self.mean(hi) < target_mean:
            hi *= 2.0
        return _brentq(
            lambda t: self.mean(t) - target_mean, lo, hi, xtol=1e-12, rtol=1e-14
        )

    def window(self, theta: float):
        """(first s, log P(S = s) for s in the window, log of its signal-to-noise
        ratio: the inverse of the estimated relative error of P(S = s))."""
        import scipy.fft

        n, size = self.n, self.size
        lam = self.log_mgf(theta)
        tilted = np.zeros(self.d + 1)
        tilted[self.steps] = np.exp(self.lw + theta * self.jf - lam)
        tilted /= tilted.sum()
        mu = float(np.sum(tilted[self.steps] * self.jf))
        var = float(np.sum(tilted[self.steps] * (self.jf - mu) ** 2))
        # Bernstein: P(|S - n mu| >= t) <= 2 exp(-t^2 / (2 (n var + d t / 3))).
        c = 2.0 * _ALIAS_CONST
        half = c * self.d / 3.0 + math.sqrt(c * n * var + (c * self.d / 3.0) ** 2)
        half = int(math.ceil(half)) + 2
        if 2 * half + 1 >= size:
            length = scipy.fft.next_fast_len(size)
            center = 0
        else:
            length = scipy.fft.next_fast_len(2 * half + 1)
            center = int(round(n * mu)) - length // 2
            center = min(max(center, 0), size - length)
        m, delta, log_cf, err = _centred_cf(tilted, length, _LOG_TINY / n)
        # P(S = center + s) = (1/L) sum_k E[e^{iw_k (S - center)}] e^{-iw_k s},
        # E[e^{iw (S - center)}] = exp(n log_cf(w) + i (n m - center + n δ) w),
        # the integer part of the shift reduced mod L exactly.
        keep = np.flatnonzero(np.isfinite(log_cf.real))
        turns = (keep * ((n * m - center) % length)) % length + n * delta * keep
        spectrum = np.zeros(len(log_cf), dtype=complex)
        spectrum[keep] = np.exp(np.conj(n * log_cf[keep])
                                - 2j * np.pi / length * turns)
        b = scipy.fft.irfft(spectrum, length)
        # Error of every b_s: the errors n err_k of the exponents, the inverse FFT's
        # round-off, and the aliased mass.
        size_h = np.abs(spectrum[keep])
        noise = (2.0 * n * np.sum(size_h * err[keep])
                 + np.finfo(np.float64).eps * math.log2(length)
                 * math.sqrt(2.0 * np.sum(size_h**2))) / length + _ALIAS_MASS
        count = min(length, size - center)
        b = b[:count]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_b = np.where(b > 0, np.log(np.where(b > 0, b, 1.0)), -np.inf)
        s = center + np.arange(count)
        log_p = log_b + n * lam - theta * s
        return center, log_p, log_b - math.log(noise)


_MAX_EDGE = 1500
# Locally deep points up to this far from an end are recomputed exactly.
_MAX_WIDEN = 6000


# Blocks of the exact edge convolutions; a block pair is convolved directly in
# linear space after a common tilt e^{θ i} when the log-ranges of its two tilted
# blocks sum to at most _LOG_RANGE (products then stay normal floats, >= 1e-282).
_BLOCK = 512
_LOG_RANGE = 650.0


def _log_convolve_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log of the full convolution of exp(a) and exp(b) (short blocks, log space).

    Positive terms only, so a direct sum has relative error ``<= len ε``.  The
    tilt that equalises the end points of ``a`` or of ``b`` usually brings both
    into range; otherwise (locally deep points) the sum is taken in log space.
    """
    size = len(a) + len(b) - 1
    fa, fb = np.flatnonzero(np.isfinite(a)), np.flatnonzero(np.isfinite(b))
    if fa.size == 0 or fb.size == 0:
        return np.full(size, -np.inf)

    def spread(theta):
        ta, tb = a[fa] + theta * fa, b[fb] + theta * fb
        return float(np.ptp(ta) + np.ptp(tb))

    chords = [(x[f[0]] - x[f[-1]]) / (f[-1] - f[0])
              for x, f in ((a, fa), (b, fb)) if f.size > 1]
    theta = min([0.0, *chords], key=spread)
    if spread(theta) <= _LOG_RANGE:
        ta = a + theta * np.arange(len(a))
        tb = b + theta * np.arange(len(b))
        peak_a, peak_b = np.max(ta), np.max(tb)
        conv = np.convolve(np.exp(ta - peak_a), np.exp(tb - peak_b))
        with np.errstate(divide="ignore"):
            return np.log(conv) + (peak_a + peak_b) - theta * np.arange(size)
    i = np.arange(len(a))
    diff = np.arange(size)[:, None] - i[None, :]
    inside = (diff >= 0) & (diff < len(b))
    terms = np.where(inside, a[None, :] + b[np.clip(diff, 0, len(b) - 1)], -np.inf)
    return lse(terms, axis=1)


def _log_convolve_truncated(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log of the first len(a) coefficients of the product of two log-polynomials,
    by blocks of ``_BLOCK`` (memory ``O(_BLOCK²)``, time ``O(len(a)²)``)."""
    width = len(a)
    out = np.full(width, -np.inf)
    for i in range(0, width, _BLOCK):
        for j in range(0, width - i, _BLOCK):
            part = _log_convolve_block(a[i : i + _BLOCK], b[j : j + _BLOCK])
            part = part[: width - i - j]
            out[i + j : i + j + len(part)] = np.logaddexp(
                out[i + j : i + j + len(part)], part)
    return out


def _log_power_truncated(log_w: np.ndarray, n: int, width: int) -> np.ndarray:
    """log [z^s] (sum_j w_j z^j)^n for s < width, in log space (all terms positive)."""
    base = np.full(width, -np.inf)
    base[: min(width, len(log_w))] = log_w[:width]
    result = None
    m = n
    while m:
        if m & 1:
            result = base if result is None else _log_convolve_truncated(result, base)
        m >>= 1
        if m:
            base = _log_convolve_truncated(base, base)
    return result


def _lattice_log_pmf(log_w: np.ndarray, n: int):
    """log P(S = s), s = 0..n d, for S a sum of n i.i.d. steps with log weights log_w.

    n = 1 is the step pmf itself.  Edges of width ~d^2 (where gaps and locally
    deep points live) are computed exactly by convolution powers (direct sums);
    the rest by tilted FFTs, each point from the tilt with the smallest error
    bound.
    Returns (log_pmf, rel_error_estimate).
    """
    d = len(log_w) - 1
    size = n * d + 1
    finite = np.isfinite(log_w)
    if d == 0 or n == 1:
        return log_w.copy(), 4e-16 * (float(np.max(np.abs(log_w[finite]))) + 1.0)

    def exact_snr(width):
        # Direct sums of positive terms: ~ε sqrt(width) per convolution.
        return -math.log(1e-16 * math.sqrt(width) * (1.0 + math.log2(n)))

    support = _support(finite, n)
    out = np.full(size, -np.inf)
    best = np.full(size, -np.inf)
    need = np.ones(size, dtype=bool) if support is None else support.copy()
    edge = min(max(d * d + 2, 32), _MAX_EDGE)
    if 2 * edge >= size:
        out = _log_power_truncated(log_w, n, size)
        return out, math.exp(-exact_snr(size)) + 4e-16 * (
            float(np.max(np.abs(out[np.isfinite(out)]))) + n)
    out[:edge] = _log_power_truncated(log_w, n, edge)
    out[size - edge :] = _log_power_truncated(log_w[::-1], n, edge)[::-1]
    need[:edge] = False
    need[size - edge :] = False
    best[:edge] = best[size - edge :] = exact_snr(edge)
    tilter = _Tilter(log_w, n)
    cur = 0
    step = 1.0
    while True:
        remaining = np.flatnonzero(need[cur:])
        if remaining.size == 0:
            break
        cur += int(remaining[0])
        target = min(max(cur + step, 0.5), size - 1.5)
        theta = tilter.solve(target / n)
        start, log_p, snr = tilter.window(theta)
        sl = slice(start, start + len(log_p))
        better = (snr > best[sl]) & (need[sl] | np.isneginf(out[sl]))
        if support is not None:
            better &= support[sl]
        out[sl] = np.where(better, log_p, out[sl])
        best[sl] = np.where(better, snr, best[sl])
        need[sl] &= best[sl] < _LOG_MIN_SNR
        if not need[cur]:
            covered = np.flatnonzero(need[cur:])
            hi = cur + (int(covered[0]) if covered.size else size - cur) - 1
            step = max(1.0, 0.9 * (hi - target))
        elif step > 0.5:
            step = 0.5 * step if step > 1.0 else 0.0
        else:
            # Locally deep point: no tilt lifts it near its peak; keep the best value.
            need[cur] = False
    # Locally deep points (e.g. residues reachable only through a rare step) can
    # sit farther from the edges than d^2: widen the exact edges to cover them.
    deep = np.flatnonzero(np.isfinite(out) & (best < _LOG_MIN_SNR))
    for far, flip in ((deep, False), (size - 1 - deep, True)):
        near = far[far < _MAX_WIDEN - 16]
        if near.size:
            width = int(near.max()) + 17
            part = _log_power_truncated(log_w[::-1] if flip else log_w, n, width)
            sl = slice(size - width, size) if flip else slice(0, width)
            out[sl] = part[::-1] if flip else part
            best[sl] = exact_snr(width)
    in_support = np.isfinite(out)
    # The worst point's estimated error, plus float64 rounding of log P itself.
    worst = float(np.min(best[in_support]))
    scale = float(np.max(np.abs(out[in_support])))
    return out, math.exp(-worst) + 4e-16 * (scale + n)


_MAX_TYPES_DEFAULT = 2_000_000


def _types_law(log_p: np.ndarray, r: np.ndarray, n: int, max_types: int):
    """Exact law of R by enumerating types (counts per distinct reward value)."""
    import scipy.special

    distinct, inverse = np.unique(r, return_inverse=True)
    log_w = lse_by_group(inverse, log_p, len(distinct))
    k = len(distinct)
    count = math.comb(n + k - 1, k - 1)
    if count > max_types:
        raise ValueError(
            f"algorithm='types' would enumerate C(n+K-1, K-1) = {count} types for "
            f"n={n} and K={k} distinct rewards, more than max_types={max_types}; "
            "snap the rewards to a lattice with span=h instead"
        )
    counts = compositions(n, k)
    log_prob = (
        scipy.special.gammaln(n + 1)
        - scipy.special.gammaln(counts + 1).sum(axis=1)
        + counts @ log_w
    )
    values = counts @ distinct
    order = np.argsort(values, kind="stable")
    values, log_prob = values[order], log_prob[order]
    # Merge values equal up to rounding of the sums.
    scale = max(float(np.max(np.abs(values))), 1e-300)
    new_group = np.r_[True, np.diff(values) > 1e-12 * scale]
    group = np.cumsum(new_group) - 1
    merged = np.full(int(group[-1]) + 1, -np.inf)
    np.logaddexp.at(merged, group, log_prob)
    return values[new_group], merged


def _check_memory(points: int, tokens: int) -> None:
    """Refuse, before any work, a lattice law that would not fit in memory."""
    check_memory(
        _BYTES_PER_POINT * points + _BYTES_PER_TOKEN * tokens,
        f"the lattice law has n * max_k + 1 = {points} points ({_BYTES_PER_POINT} "
        "bytes a point)",
        "pass a coarser span=h or a shorter length, or use bahadur_rao_log_tail or "
        "token-level sampling")


def _law_numpy(lm, reward, span, rtol, max_steps, algorithm, max_types):
    """Float64 NumPy core of `reward_law`: (values, log_pmf, offset, h, err, rel)."""
    if algorithm not in ("lattice", "types"):
        raise ValueError(f"algorithm must be 'lattice' or 'types', got {algorithm!r}")
    log_p, r, dtype = _positive_tokens(lm, reward)
    n = lm.length
    if algorithm == "types":
        if span is not None:
            raise ValueError("span applies to algorithm='lattice' only, got span with "
                             "algorithm='types'")
        values, log_pmf = _types_law(log_p, r, n, int(max_types))
        return values, log_pmf, float(values[0]), math.nan, 0.0, 1e-15 * n, dtype
    a, h, k, err = _lattice(r, span, rtol, max_steps, dtype)
    d = int(k.max())
    _check_memory(n * d + 1, len(r))
    log_w = lse_by_group(k, log_p, d + 1)
    log_pmf, rel_error = _lattice_log_pmf(log_w, n)
    values = n * a + h * np.arange(n * d + 1, dtype=np.float64)
    return values, log_pmf, float(n * a), float(h), err, float(rel_error), dtype


def _lattice(r: np.ndarray, span, rtol, max_steps, dtype):
    """``(a, h, k, err)`` with ``r ≈ a + h k``: snapped to ``span`` when given, else
    detected to relative tolerance ``rtol`` (default by dtype)."""
    if span is not None:
        if not (np.isfinite(span) and span > 0):
            raise ValueError(f"span must be a finite number > 0, got {span!r}")
        return _snap(r, float(span))
    if rtol is None:
        rtol = _LATTICE_RTOL.get(np.dtype(dtype), 1e-9)
    if not (np.isfinite(rtol) and 0 < rtol < 1):
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    return _detect_lattice(r, float(rtol), int(max_steps))


def _to_law(values, log_pmf, offset, h, err, rel, dtype) -> RewardLaw:
    return RewardLaw(
        values=jnp.asarray(values, dtype=dtype),
        log_pmf=jnp.asarray(log_pmf, dtype=dtype),
        offset=offset,
        span=h,
        lattice_error=err,
        rel_error=rel,
    )


def reward_law(
    lm: MemorylessLM,
    reward: LinearReward,
    *,
    span: float | None = None,
    rtol: float | None = None,
    max_steps: int = 1_000_000,
    algorithm: str | None = None,
    max_types: int = _MAX_TYPES_DEFAULT,
    method: str | None = None,
) -> RewardLaw:
    r"""The exact law of the sequence reward :math:`R = \sum_{i=1}^n r(y_i)`.

    .. math::
        r(x) = a + h k_x,\ k_x \in \mathbb{Z}_{\ge 0}
        \quad\Rightarrow\quad
        P(R = n a + h s) = [z^s] \Big(\sum_x p(x) z^{k_x}\Big)^n .

    **Lattice** (``algorithm="lattice"``, the default).  The lattice ``(a, h, k)``
    is detected from the rewards of the tokens with positive probability
    (zero-probability tokens are ignored): every ``r(x)`` must be within
    ``rtol * (max r - min r)`` of ``a + h k_x``, with ``h`` the largest such span
    (default ``rtol`` 1e-9 for float64 rewards, 1e-6 for float32) and at most
    ``max_steps`` steps ``k``.  Otherwise a ``ValueError`` is raised.  With
    ``span=h`` the rewards are instead *snapped* to ``a + h round((r - a)/h)``
    (``a = min r``), and the largest change ``|r(x) - snapped r(x)|`` is
    reported as ``lattice_error`` (the law is then exact for the snapped
    rewards; ``|R - R_snapped| <= n * lattice_error``).

    Method: the token probabilities are first summed per lattice step
    (``w_j = Σ_{k_x = j} p(x)``, ``O(K)``), so everything after depends on ``K``
    only through ``max k``.  Near the two ends of the support (widths
    ``~(max k)^2`` up to 1500, where gaps and locally deep points live) the pmf
    is an exact convolution power (direct sums of positive terms, tilted by
    blocks so that nothing underflows).  Elsewhere the law of ``S = sum k`` is
    evaluated under exponential tilts ``P_θ(s) ∝ P(s) e^{θ s}``, each by an FFT
    over a window around its mode: the tilted step pmf's characteristic
    function, centred at its mean, is itself an FFT of ``w_θ``, computed near
    ``ω = 0`` by summation by parts so that ``n log φ`` keeps relative accuracy
    (error ``~ε ω² E(k - μ)²``), and raised to the ``n``-th power in log space.
    Every window carries a round-off bound (the exponents' errors weighted by
    the spectrum, the inverse FFT's round-off, the aliased mass ``2e^{-72}``);
    each point takes the tilt with the smallest relative bound, further tilts
    are tried until it is below ``1e-10``, and points no tilt resolves
    (locally deep points) within 6000 of an end are recomputed exactly.
    **Accuracy: relative error of every probability below 1e-9** where
    ``rel_error`` (the largest of these bounds, plus float64 rounding of
    ``log P``) says so; it is ``~1e-10`` for the laws tested (against mpmath to
    ``1e-9`` in log space for ``n`` up to ``10^5``, including ``P = 0.3^{1000}``;
    against direct sums and log-space powers on whole supports with gaps and
    locally deep points; K = 20 000 and 131 072 against direct sums and plain
    FFT powers of tilted step pmfs).  Rough step pmfs can leave locally deep
    points far from the ends that no tilt resolves; ``rel_error`` then reports
    their larger error.  Unreachable lattice points are found exactly and get
    ``-inf``.  Cost ``O(M log M)`` time for ``M = n max k + 1`` lattice points
    (``O(M)`` per tilt window, ``O(1500²)`` for the ends) and ``O(K + M)``
    memory (about 50-250 bytes a point); a law whose estimated memory exceeds
    the memory available is refused with a ``ValueError`` before any work.
    Measured on a 2-core CPU (``benchmarks/bench_exact.py``): K = 1000,
    ``n = 256``, ``M = 5·10^4``: 0.3 s (15 s before); a Zipf vocabulary of
    131 072 tokens, ``n = 1024``, ``M = 9.4·10^5``: 1.4-1.9 s and 51 MB.

    **Types** (``algorithm="types"``), for non-lattice rewards with small ``K``:
    enumerates the ``C(n+K-1, K-1)`` types (counts of each distinct reward),
    each with its exact multinomial log-probability, and merges equal sums.
    Raises ``ValueError`` beyond ``max_types`` types.  ``span`` is ``nan``.

    Args:
      lm: the model (``K`` tokens, ``length`` n); another base model (a
        :class:`jaxalign.MarkovLM`) is passed to its own ``reward_law``.
      reward: per-token rewards ``(K,)``.
      span: optional grid span ``h > 0`` to snap the rewards to.
      rtol: relative lattice-detection tolerance (see above).
      max_steps: largest allowed ``max k`` (lattice size per token).
      algorithm: ``"lattice"`` (default) or ``"types"`` (``method=``, its former
        name, still works with a ``DeprecationWarning``).
      max_types: largest number of types enumerated by ``algorithm="types"``.

    Returns:
      A :class:`RewardLaw`; arrays ``(M,)`` in the model's dtype (computed in
      float64).  Not traceable under ``jit`` (its size depends on the values).

    Raises:
      ValueError: non-lattice rewards without ``span``; a lattice law larger
      than the available memory (the message gives the estimate) or too many
      types; bad ``span``, ``rtol`` or ``algorithm``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> from jaxalign import exact
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.3, length=3)
      >>> law = exact.reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
      >>> [round(float(v), 3) for v in jnp.exp(law.log_pmf)]
      [0.343, 0.441, 0.189, 0.027]
    """
    algorithm = renamed_keyword(algorithm, method, old="method", new="algorithm",
                                default="lattice")
    if not isinstance(lm, MemorylessLM) and isinstance(lm, BaseModel):
        return lm.reward_law(reward, span=span, rtol=rtol, max_steps=max_steps,
                             algorithm=algorithm, max_types=max_types)
    return _to_law(*_law_numpy(lm, reward, span, rtol, max_steps, algorithm, max_types))


def tilted_law(
    lm: MemorylessLM, reward: LinearReward, lam: float, **law_kwargs
) -> RewardLaw:
    r"""The exact law of ``R`` under the tilted policy :math:`\Phi_\lambda`.

    .. math::
        \Phi_\lambda(R = v) = P(R = v)\, e^{\lambda v - n \Lambda(\lambda)},
        \qquad n\Lambda(\lambda) = \log \sum_v P(R = v) e^{\lambda v}.

    The normaliser is taken from the law itself, so it is exact for snapped
    rewards too; relative accuracy is that of :func:`reward_law` plus
    ``~1e-16 |λ| max|v|``.

    Args:
      lm, reward: model and reward.
      lam: a real scalar ``λ``.
      **law_kwargs: passed to :func:`reward_law` (``span``, ``algorithm`` ...).

    Returns:
      A :class:`RewardLaw` on the same values.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=2)
      >>> law = tilted_law(lm, jaxalign.LinearReward([0.0, 1.0]), 0.0)
      >>> [round(float(v), 3) for v in jnp.exp(law.log_pmf)]
      [0.25, 0.5, 0.25]
    """
    _check_scalar(lam, "lam")
    lam = float(lam)
    values, log_pmf, offset, h, err, rel, dtype = _law_numpy(
        lm, reward, **_law_options(law_kwargs))
    shifted = log_pmf + lam * (values - offset)
    shifted = shifted - lse(shifted)
    rel = rel + 1e-16 * abs(lam) * float(np.max(np.abs(values - offset)))
    return _to_law(values, shifted, offset, h, err, rel, dtype)


def _check_scalar(value, name):
    arr = np.asarray(value)
    if arr.shape != () or arr.dtype.kind not in "biuf" or not np.isfinite(arr):
        raise ValueError(f"{name} must be a finite real scalar, got {value!r}")



def _law_options(kwargs):
    kwargs = dict(kwargs)
    if "method" in kwargs:
        kwargs["algorithm"] = renamed_keyword(kwargs.get("algorithm"),
                                              kwargs.pop("method"), old="method",
                                              new="algorithm", stacklevel=4)
    options = dict(span=None, rtol=None, max_steps=1_000_000, algorithm="lattice",
                   max_types=_MAX_TYPES_DEFAULT)
    unknown = set(kwargs) - set(options)
    if unknown:
        raise ValueError(f"unknown keyword arguments {sorted(unknown)}; allowed: "
                         f"{sorted(options)}")
    options.update(kwargs)
    return options


# ---------------------------------------------------------------------- tails


def log_tail(law: RewardLaw, t, upper: bool = True) -> Array:
    r"""Exact log tail probabilities of a law, in log space.

    .. math::
        \log P(R \ge t) \ (\texttt{upper=True}), \qquad \log P(R \le t)
        \ (\texttt{upper=False}).

    Values within ``1e-9 * span`` of ``t`` (``1e-12 * max|v|`` for non-lattice
    laws) count as equal to ``t``.  Sums are cumulative log-sum-exps, so deep
    tails keep the law's relative accuracy.

    Args:
      law: a :class:`RewardLaw`.
      t: thresholds, any shape.
      upper: the upper tail ``P(R >= t)`` or the lower tail ``P(R <= t)``.

    Returns:
      An array shaped like ``t`` (``-inf`` for an empty tail).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=2)
      >>> law = reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
      >>> float(jnp.exp(log_tail(law, 1.0)))
      0.75
    """
    values = np.asarray(law.values, dtype=np.float64)
    log_pmf = np.asarray(law.log_pmf, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if np.any(np.isnan(t)):
        raise ValueError(f"t must not be NaN, got {t!r}")
    if np.isfinite(law.span):
        tol = 1e-9 * law.span
    else:
        tol = 1e-12 * max(float(np.max(np.abs(values))), 1e-300)
    with np.errstate(divide="ignore"):
        if upper:
            cum = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
            idx = np.searchsorted(values, t - tol, side="left")
            padded = np.r_[cum, -np.inf]
            out = padded[idx]
        else:
            cum = np.logaddexp.accumulate(log_pmf)
            idx = np.searchsorted(values, t + tol, side="right") - 1
            padded = np.r_[-np.inf, cum]
            out = padded[idx + 1]
    return jnp.asarray(out, dtype=law.log_pmf.dtype)


def bahadur_rao_log_tail(
    lm: MemorylessLM,
    reward: LinearReward,
    t,
    *,
    upper: bool = True,
    span: float | None = None,
) -> Array:
    r"""Bahadur–Rao (saddle-point) approximation of a log tail of ``R`` (THEORY §1.8).

    For ``x = t/n`` beyond the mean, ``θ = (Λ')^{-1}(x)``, ``I = θx - Λ(θ)``,
    ``σ² = Λ''(θ)``:

    .. math::
        P(R \ge t) \approx \frac{e^{-nI}}{|\theta| \sigma \sqrt{2\pi n}}
        \ \text{(non-lattice)}, \qquad
        P(R \ge t) \approx \frac{e^{-nI}\, h}{(1 - e^{-|\theta| h}) \sigma
        \sqrt{2\pi n}} \ \text{(lattice, } t \text{ on the lattice)},

    and the same with ``θ < 0`` for ``P(R <= t)`` below the mean.  The relative
    error is ``O(1/n)`` for fixed ``x`` strictly inside ``(min r, max r)``; it
    blows up as ``t`` approaches the mean.  Returns ``nan`` when ``t`` is on the
    wrong side of the mean for the requested tail or outside the range.

    Args:
      lm, reward: model and reward (``Λ`` from the token law, in float64).
      t: thresholds (any shape) on the scale of ``R``.
      upper: upper tail ``P(R >= t)`` or lower tail ``P(R <= t)``.
      span: the lattice span ``h`` for the lattice formula; ``None`` for the
        non-lattice one.

    Returns:
      ``log P`` approximations shaped like ``t``, in the model's dtype.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.3, length=1000)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> approx = bahadur_rao_log_tail(lm, r, 400.0, span=1.0)
      >>> exact_ = log_tail(reward_law(lm, r), 400.0)
      >>> bool(abs(float(approx - exact_)) < 0.05)
      True
    """
    log_p, r, dtype = _positive_tokens(lm, reward)
    n = lm.length
    t = np.asarray(t, dtype=np.float64)

    def moments(theta):
        z = log_p + theta * r
        lam = lse(z)
        w = np.exp(z - lam)
        mean = float(np.dot(w, r))
        return lam, mean, float(np.dot(w, (r - mean) ** 2))

    _, mean0, _ = moments(0.0)
    out = np.full(t.shape, np.nan)
    for i, ti in np.ndenumerate(t):
        x = ti / n
        if not (r.min() < x < r.max()) or (x > mean0) != upper or x == mean0:
            continue
        lo, hi = (0.0, 1.0) if upper else (-1.0, 0.0)
        while moments(hi)[1] < x:
            hi *= 2.0
        while moments(lo)[1] > x:
            lo *= 2.0
        theta = _brentq(lambda th, x=x: moments(th)[1] - x, lo, hi,
                                      xtol=1e-14, rtol=1e-15)
        lam, _, var = moments(theta)
        rate = theta * x - lam
        sigma = math.sqrt(var)
        a = abs(theta)
        if span is None:
            pref = -math.log(a * sigma * math.sqrt(2 * math.pi * n))
        else:
            pref = math.log(span) - math.log(-math.expm1(-a * span)) - math.log(
                sigma * math.sqrt(2 * math.pi * n))
        out[i] = -n * rate + pref
    return jnp.asarray(out, dtype=dtype)
