r"""Monte Carlo estimators with standard errors.

Every estimator returns an :class:`Estimate` ``(value, stderr, num_samples)``.
Standard errors are the estimator's own: the sample standard deviation over
``sqrt(m)`` for means, the delta method for smooth functions of means (SCGF, the
plug-in best-of-N KL), DeLong's variance for the two-sample win rate, and the
delete-one jackknife for k-statistics and the pool best-of-n estimator.

The module also gives the exact mean and variance of the ``k1``/``k2``/``k3``
KL estimators (Schulman 2020) for memoryless policies, as closed-form sums over
the ``K`` tokens (:func:`kl_estimator_moments`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxalign._types import Array, ArrayLike, check_positive_int, check_real
from jaxalign.models import MemorylessLM

__all__ = [
    "Estimate",
    "KLEstimates",
    "KLEstimatorMoments",
    "beirami_kl",
    "best_of_n_kl_plugin",
    "best_of_n_value",
    "kl_estimator_moments",
    "kl_estimators",
    "kl_estimator_terms",
    "mean",
    "scaled_cumulants",
    "scgf",
    "tail_probability",
    "win_rate",
]


class Estimate(NamedTuple):
    """A Monte Carlo estimate.

    Attributes:
      value: the estimate (0-d, or ``(order,)`` for :func:`scaled_cumulants`).
      stderr: its standard error, same shape as ``value``.
      num_samples: the sample size ``m`` (a Python int).
    """

    value: Array
    stderr: Array
    num_samples: int


class KLEstimates(NamedTuple):
    """The three KL estimators of :func:`kl_estimators`, each an :class:`Estimate`."""

    k1: Estimate
    k2: Estimate
    k3: Estimate


class KLEstimatorMoments(NamedTuple):
    """Exact moments of the k1/k2/k3 estimators (:func:`kl_estimator_moments`).

    Attributes:
      kl: the exact ``KL(policy || reference)`` of the sequence law, 0-d.
      mean: ``(3,)`` exact means of the k1, k2, k3 sequence estimates.
      bias: ``(3,)`` ``mean - kl``.
      variance: ``(3,)`` exact variances of the sequence estimates.
    """

    kl: Array
    mean: Array
    bias: Array
    variance: Array


def _vector(x: ArrayLike, name: str, minimum_size: int = 2) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 1 or x.shape[0] < minimum_size:
        raise ValueError(
            f"{name} must have shape (num_samples,) with num_samples >= "
            f"{minimum_size}, got shape {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


# The numerical cores are jitted: called eagerly (a sweep's rows, a notebook), each
# estimate is then one compiled program per input shape instead of one per
# primitive (a sweep point compiled ~50 tiny programs, 0.1-0.5 s each).


@jax.jit
def _mean_core(x: Array) -> tuple[Array, Array]:
    return jnp.mean(x), jnp.std(x, ddof=1) / math.sqrt(x.shape[0])


def _mean_estimate(x: Array) -> Estimate:
    return Estimate(*_mean_core(x), x.shape[0])


def mean(samples: ArrayLike) -> Estimate:
    r"""Sample mean with its standard error, e.g. the expected reward.

    .. math::
        \hat\mu = \frac1m \sum_i x_i, \qquad
        \widehat{se} = \frac{s}{\sqrt m}.

    Args:
      samples: ``(m,)`` i.i.d. draws, ``m >= 2``.

    Returns:
      An :class:`Estimate`.

    Examples:
      >>> float(mean([1.0, 2.0, 3.0]).value)
      2.0
    """
    return _mean_estimate(_vector(samples, "samples"))


def win_rate(rewards: ArrayLike, baseline_rewards: ArrayLike) -> Estimate:
    r"""Win rate of a policy against a baseline, ties counting one half.

    .. math::
        W = P(R > R') + \tfrac12 P(R = R'), \qquad
        \hat W = \frac{1}{m m'} \sum_{i,j}
        \big(1[r_i > r'_j] + \tfrac12 1[r_i = r'_j]\big).

    The all-pairs (Mann-Whitney) estimate from independent samples of the two
    policies, unbiased, with DeLong's standard error
    ``sqrt(Var(V10)/m + Var(V01)/m')`` from the per-sample placement values.

    Args:
      rewards: ``(m,)`` rewards of the policy.
      baseline_rewards: ``(m',)`` rewards of the baseline, independent.

    Returns:
      An :class:`Estimate` (``num_samples = m``).

    Examples:
      >>> float(win_rate([1.0, 2.0], [0.0, 2.0]).value)
      0.625
    """
    a = _vector(rewards, "rewards")
    b = _vector(baseline_rewards, "baseline_rewards")
    dtype = jnp.result_type(a.dtype, b.dtype)
    return Estimate(*_win_rate_core(a.astype(dtype), b.astype(dtype)), a.shape[0])


@jax.jit
def _win_rate_core(a: Array, b: Array) -> tuple[Array, Array]:
    dtype = a.dtype
    sa, sb = jnp.sort(a), jnp.sort(b)
    below = jnp.searchsorted(sb, a, side="left")
    below_eq = jnp.searchsorted(sb, a, side="right")
    v10 = (below + below_eq).astype(dtype) / (2 * b.shape[0])
    above = a.shape[0] - jnp.searchsorted(sa, b, side="right")
    above_eq = a.shape[0] - jnp.searchsorted(sa, b, side="left")
    v01 = (above + above_eq).astype(dtype) / (2 * a.shape[0])
    var = jnp.var(v10, ddof=1) / a.shape[0] + jnp.var(v01, ddof=1) / b.shape[0]
    return jnp.mean(v10), jnp.sqrt(var)


def _k_statistics(s1, s2, s3, s4, m):
    # Fisher's unbiased k-statistics from power sums (of centred data).
    k1 = s1 / m
    k2 = (m * s2 - s1**2) / (m * (m - 1))
    k3 = (2 * s1**3 - 3 * m * s1 * s2 + m**2 * s3) / (m * (m - 1) * (m - 2))
    k4 = (
        -6 * s1**4
        + 12 * m * s1**2 * s2
        - 3 * m * (m - 1) * s2**2
        - 4 * m * (m + 1) * s1 * s3
        + m**2 * (m + 1) * s4
    ) / (m * (m - 1) * (m - 2) * (m - 3))
    return jnp.stack([k1, k2, k3, k4], axis=-1)


def scaled_cumulants(rewards: ArrayLike, length: int, order: int = 4) -> Estimate:
    r"""Scaled cumulants ``κ_m(R)/n`` by unbiased k-statistics, ``m = 1..order``.

    .. math::
        \widehat{\kappa_m(R)/n} = k_m(R_1, \dots, R_M) / n,
        \qquad \mathbb E\, k_m = \kappa_m .

    For the tilted law ``κ_m(R)/n = Λ^{(m)}(λ)`` for every n (THEORY.md §1.6).
    Standard errors by the delete-one jackknife (vectorised with leave-one-out
    power sums).  The data are centred first (k_2..k_4 are shift-invariant).

    Args:
      rewards: ``(M,)`` i.i.d. sequence rewards, ``M >= 5``.
      length: the sequence length ``n`` to scale by.
      order: highest order, 1 to 4.

    Returns:
      An :class:`Estimate` with ``value`` and ``stderr`` of shape ``(order,)``.

    Examples:
      >>> est = scaled_cumulants([0.0, 1.0, 2.0, 4.0, 8.0], length=2, order=2)
      >>> [round(float(v), 3) for v in est.value]
      [1.5, 5.0]
    """
    x = _vector(rewards, "rewards", minimum_size=5)
    length = check_positive_int(length, "length")
    order = check_positive_int(order, "order")
    if order > 4:
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
    value, stderr = _cumulants_core(x, jnp.asarray(length, x.dtype), order)
    return Estimate(value, stderr, x.shape[0])


@functools.partial(jax.jit, static_argnums=2)
def _cumulants_core(x: Array, length: Array, order: int) -> tuple[Array, Array]:
    m = x.shape[0]
    center = jnp.mean(x)
    c = x - center
    powers = jnp.stack([c, c**2, c**3, c**4])  # (4, M)
    sums = jnp.sum(powers, axis=1)
    full = _k_statistics(*sums, m).at[0].add(center)
    loo = sums[:, None] - powers  # (4, M): leave-one-out power sums
    jack = _k_statistics(*loo, m - 1).at[:, 0].add(center)  # (M, 4)
    var = (
        (m - 1)
        / m
        * jnp.sum((jack - jnp.mean(jack, axis=0, keepdims=True)) ** 2, axis=0)
    )
    return full[:order] / length, jnp.sqrt(var[:order]) / length


def scgf(rewards: ArrayLike, t: ArrayLike, length: int) -> Estimate:
    r"""Scaled cumulant generating function ``(1/n) log E e^{tR}``.

    .. math::
        \hat K(t) = \frac1n \log \frac1M \sum_i e^{t R_i}, \qquad
        \widehat{se} = \frac{s(e^{tR})}{n \sqrt M\, \overline{e^{tR}}}
        \ \text{(delta method)}.

    Computed with the maximum factored out.  Under ``Φ_λ`` the target is
    ``Λ(λ+t) − Λ(λ)`` (THEORY.md §1.6); the plug-in is biased by ``O(1/M)`` and
    needs ``M`` large against the variance of ``e^{tR}`` (large ``|t| n``).

    Args:
      rewards: ``(M,)`` i.i.d. sequence rewards.
      t: scalar argument.
      length: the sequence length ``n``.

    Returns:
      An :class:`Estimate`.

    Examples:
      >>> round(float(scgf([0.0, 0.0], 1.0, length=1).value), 6)
      0.0
    """
    x = _vector(rewards, "rewards")
    check_real(t, "t")
    length = check_positive_int(length, "length")
    a = jnp.asarray(t, x.dtype) * x
    top = jnp.max(a)
    w = jnp.exp(a - top)
    w_mean = jnp.mean(w)
    value = (top + jnp.log(w_mean)) / length
    stderr = jnp.std(w, ddof=1) / (math.sqrt(x.shape[0]) * w_mean) / length
    return Estimate(value, stderr, x.shape[0])


def tail_probability(
    tilted_rewards: ArrayLike,
    threshold: ArrayLike,
    theta: ArrayLike,
    log_normalizer: ArrayLike,
    *,
    log_scale: bool = False,
) -> Estimate:
    r"""``P(R >= threshold)`` under the base law, by importance sampling a tilt.

    .. math::
        P(R \ge a) = \mathbb E_{\Phi_\theta}\big[1[R \ge a]\,
        e^{-\theta R + n\Lambda(\theta)}\big].

    Draw ``tilted_rewards`` under ``Φ_θ`` (e.g. ``sample.tilted(key, lm, r,
    theta, M)``) with ``θ`` near the saddle point ``Λ'(θ) = a/n``; the
    likelihood ratio is exact, so the estimate is unbiased and reaches events of
    probability ``e^{-500}`` where plain Monte Carlo never sees one.

    Args:
      tilted_rewards: ``(M,)`` rewards drawn under ``Φ_θ``.
      threshold: the level ``a = n x``.
      theta: the tilt ``θ`` used to draw (any real).
      log_normalizer: ``n Λ(θ)``, e.g. ``n * theory.log_mgf(lm, r, theta)``.
      log_scale: return ``log P`` and the delta-method standard error of the log
        (for probabilities below the dtype's range).

    Returns:
      An :class:`Estimate`.

    Examples:
      >>> est = tail_probability([1.0, 3.0], 2.0, 0.0, 0.0)
      >>> float(est.value)
      0.5
    """
    x = _vector(tilted_rewards, "tilted_rewards")
    check_real(threshold, "threshold")
    check_real(theta, "theta")
    check_real(log_normalizer, "log_normalizer")
    dtype = x.dtype
    log_w = -jnp.asarray(theta, dtype) * x + jnp.asarray(log_normalizer, dtype)
    log_w = jnp.where(x >= jnp.asarray(threshold, dtype), log_w, -jnp.inf)
    m = x.shape[0]
    top = jnp.max(log_w)
    safe_top = jnp.where(jnp.isfinite(top), top, 0)
    w = jnp.exp(log_w - safe_top)
    w_mean = jnp.mean(w)
    rel = jnp.std(w, ddof=1) / (math.sqrt(m) * w_mean)
    if log_scale:
        return Estimate(safe_top + jnp.log(w_mean), rel, m)
    value = jnp.exp(safe_top) * w_mean
    return Estimate(value, jnp.exp(safe_top) * jnp.std(w, ddof=1) / math.sqrt(m), m)


def _bon_kl_of_classes(q: Array, num_candidates: float) -> Array:
    cdf = jnp.minimum(jnp.cumsum(q), 1.0)
    below = jnp.maximum(cdf - q, 0.0)
    positive = q > 0
    safe_cdf = jnp.where(positive, cdf, 1.0)
    safe_below = jnp.where(below > 0, below, 1.0)
    top = jnp.exp(num_candidates * jnp.log(safe_cdf))
    low = jnp.where(below > 0, jnp.exp(num_candidates * jnp.log(safe_below)), 0.0)
    b = jnp.where(positive, top - low, 0.0)
    safe_b = jnp.where(b > 0, b, 1.0)
    safe_q = jnp.where(positive, q, 1.0)
    return jnp.sum(jnp.where(b > 0, b * (jnp.log(safe_b) - jnp.log(safe_q)), 0.0))


def best_of_n_kl_plugin(base_rewards: ArrayLike, num_candidates: int) -> Estimate:
    r"""Plug-in estimate of ``KL(π_BoN || P)`` from base-policy rewards.

    .. math::
        \widehat{KL} = \sum_c \hat b_c \log\frac{\hat b_c}{\hat q_c},\qquad
        \hat b_c = \hat F_c^N - \hat F_{c-1}^N,

    on the empirical law of the rewards (THEORY.md §1.9; policy-level KL equals
    reward-level KL).  The standard error is the delta method: the gradient of
    the KL in the class probabilities (autodiff) under the multinomial
    covariance.  Consistent; biased when classes are poorly sampled (small
    ``m`` against ``N`` or the number of classes).

    Args:
      base_rewards: ``(m,)`` rewards of i.i.d. base samples.
      num_candidates: ``N >= 1``.

    Returns:
      An :class:`Estimate`.

    Examples:
      >>> round(float(best_of_n_kl_plugin([0.0, 1.0], 2).value), 4)
      0.1308
    """
    x = _vector(base_rewards, "base_rewards")
    num_candidates = check_positive_int(num_candidates, "num_candidates")
    m = x.shape[0]
    xs = jnp.sort(x)
    new_class = jnp.concatenate([jnp.ones(1, bool), xs[1:] != xs[:-1]])
    class_id = jnp.cumsum(new_class) - 1
    q = jax.ops.segment_sum(jnp.full(m, 1.0 / m, x.dtype), class_id, num_segments=m)
    n_float = float(num_candidates)
    value, grad = jax.value_and_grad(_bon_kl_of_classes)(q, n_float)
    var = (jnp.sum(q * grad**2) - jnp.sum(q * grad) ** 2) / m
    return Estimate(value, jnp.sqrt(jnp.maximum(var, 0.0)), m)


def beirami_kl(log_base_probs: ArrayLike, num_candidates: int) -> Estimate:
    r"""Beirami et al.'s best-of-N KL estimator, averaged over best-of-N draws.

    .. math::
        \hat D(\varepsilon) = (1-\varepsilon)^N\Big[\log N + (N-1)\log(1-\varepsilon)
        - \tfrac{N-1}{N}\Big] + \big(1-(1-\varepsilon)^N\big)
        \log\frac{1-(1-\varepsilon)^N}{\varepsilon},

    with ``ε = P(y)`` the base probability of the returned sequence (pass its
    log).  ``D̂(ε)`` is the exact best-of-N KL for a law made of a top atom of
    mass ε above a continuous remainder (THEORY.md B6); ``0 <= D̂ <= log N -
    (N-1)/N``.  Computed with ``log1p``/``expm1``.

    Args:
      log_base_probs: ``(m,)`` ``log P(y)`` of best-of-N outputs.
      num_candidates: ``N >= 1``.

    Returns:
      An :class:`Estimate` of ``E D̂``.

    References:
      Beirami et al., `Theoretical guarantees on the best-of-n alignment policy
      <https://arxiv.org/abs/2401.01879>`_, 2024.

    Examples:
      >>> round(float(beirami_kl([0.0, 0.0], 4).value), 6)
      0.0
    """
    log_eps = _vector(log_base_probs, "log_base_probs")
    num_candidates = check_positive_int(num_candidates, "num_candidates")
    return _mean_estimate(_beirami_d(log_eps, float(num_candidates)))


def _beirami_d(log_eps: Array, n: float) -> Array:
    eps = jnp.exp(log_eps)
    log_keep = jnp.log1p(-jnp.minimum(eps, 1.0))  # log(1 - eps), -inf at eps = 1
    a = jnp.exp(n * log_keep)
    one_minus_a = -jnp.expm1(n * log_keep)
    safe_keep = jnp.where(a > 0, log_keep, 0.0)
    first = jnp.where(a > 0, a * (math.log(n) + (n - 1) * safe_keep - (n - 1) / n), 0.0)
    safe = jnp.where(one_minus_a > 0, one_minus_a, 1.0)
    second = jnp.where(one_minus_a > 0, one_minus_a * (jnp.log(safe) - log_eps), 0.0)
    return first + second


def best_of_n_value(
    scores: ArrayLike, num_candidates: int, values: ArrayLike | None = None
) -> Estimate:
    r"""Unbiased best-of-n value from one pool of ``M >= n`` i.i.d. samples.

    .. math::
        \hat V = \sum_{i=1}^M w_i\, g_{(i)}, \qquad
        w_i = \binom{i-1}{n-1} \Big/ \binom{M}{n},

    with the pool sorted ascending by score: rank ``i`` is the winner of a
    uniformly random ``n``-subset with probability ``w_i`` (THEORY.md §6.2).
    Tied scores share the average of their weights (uniform tie-breaking), so
    ``E V̂`` is exactly the best-of-n expectation of ``values``.  Standard error
    by the delete-one jackknife (closed form with prefix sums, ties broken by
    sort order for the jackknife only).

    Args:
      scores: ``(M,)`` selection scores (the proxy reward).
      num_candidates: ``n``, ``1 <= n <= M``.
      values: ``(M,)`` what to average (a gold reward); defaults to ``scores``.

    Returns:
      An :class:`Estimate`.

    Examples:
      >>> round(float(best_of_n_value([1.0, 2.0, 3.0], 2).value), 4)
      2.6667
    """
    s = _vector(scores, "scores")
    g = s if values is None else _vector(values, "values")
    if g.shape != s.shape:
        raise ValueError(
            f"values must have the shape of scores {s.shape}, got {g.shape}"
        )
    m = s.shape[0]
    num_candidates = check_positive_int(num_candidates, "num_candidates")
    if num_candidates > m:
        raise ValueError(
            f"num_candidates must be <= the pool size {m}, got {num_candidates}"
        )
    dtype = jnp.result_type(s.dtype, g.dtype)
    order = jnp.argsort(s)
    s_sorted, g_sorted = s[order], g[order].astype(dtype)
    nn = num_candidates
    ranks = jnp.arange(1, m + 1, dtype=dtype)

    def log_weight(rank, pool):
        # log C(rank-1, nn-1) - log C(pool, nn); -inf when rank < nn.
        ok = rank >= nn
        r = jnp.where(ok, rank, nn)
        lw = (
            gammaln(r)
            - gammaln(r - nn + 1)
            - gammaln(jnp.asarray(nn, dtype))
            - (
                gammaln(jnp.asarray(pool + 1, dtype))
                - gammaln(jnp.asarray(nn + 1, dtype))
                - gammaln(jnp.asarray(pool - nn + 1, dtype))
            )
        )
        return jnp.where(ok, lw, -jnp.inf)

    w = jnp.exp(log_weight(ranks, m))
    # Average the weights within tie groups of the scores.
    new = jnp.concatenate([jnp.ones(1, bool), s_sorted[1:] != s_sorted[:-1]])
    group = jnp.cumsum(new) - 1
    group_sum = jax.ops.segment_sum(w, group, num_segments=m)
    group_size = jax.ops.segment_sum(jnp.ones(m, dtype), group, num_segments=m)
    w_tied = (group_sum / jnp.maximum(group_size, 1))[group]
    value = jnp.sum(w_tied * g_sorted)
    if m - 1 < nn:
        return Estimate(value, jnp.full((), jnp.nan, dtype), m)
    # Jackknife: removing sorted item k shifts the ranks of the items above it.
    u = jnp.exp(log_weight(ranks, m - 1)) * g_sorted  # item below k keeps rank i
    v = jnp.exp(log_weight(ranks - 1, m - 1)) * g_sorted  # item above k: rank i-1
    below = jnp.cumsum(u) - u
    above = jnp.sum(v) - jnp.cumsum(v)
    loo = below + above
    var = (m - 1) / m * jnp.sum((loo - jnp.mean(loo)) ** 2)
    return Estimate(value, jnp.sqrt(var), m)


def kl_estimator_terms(log_ratio: ArrayLike) -> Array:
    r"""Per-token values of the k1, k2, k3 KL estimators, stacked on a new first axis.

    .. math::
        k_1 = -\log\rho,\quad k_2 = \tfrac12(\log\rho)^2,\quad
        k_3 = (\rho - 1) - \log\rho,\qquad \log\rho = \log\pi_{ref}(x)-\log\pi(x).

    The single definition shared by :func:`kl_estimators`,
    :func:`kl_estimator_moments` and the KL penalties of :mod:`jaxalign.rl`.

    Args:
      log_ratio: ``(...)`` values of ``log π_ref(x) − log π(x)``.

    Returns:
      ``(3, ...)`` the k1, k2, k3 values.

    Examples:
      >>> kl_estimator_terms(0.0).tolist()
      [-0.0, 0.0, 0.0]
    """
    lr = jnp.asarray(log_ratio)
    return jnp.stack([-lr, 0.5 * lr**2, jnp.expm1(lr) - lr])


def kl_estimators(log_ratio: ArrayLike) -> KLEstimates:
    r"""The k1, k2, k3 estimators of ``KL(π || π_ref)`` from samples of ``π``.

    .. math::
        \rho = \frac{\pi_{ref}(x)}{\pi(x)},\quad
        k_1 = -\log\rho,\quad k_2 = \tfrac12(\log\rho)^2,\quad
        k_3 = (\rho - 1) - \log\rho .

    ``E k1 = E k3 = KL`` (k3 needs ``supp π ⊆ supp π_ref``); k2 is biased.  With
    a 2-d ``log_ratio (M, n)`` of per-token ``log π_ref − log π`` the estimators
    are applied per token and summed over tokens, as RLHF codebases do.

    Args:
      log_ratio: ``(M,)`` or ``(M, n)`` values of ``log π_ref(x) − log π(x)``
        at samples ``x ~ π``.

    Returns:
      :class:`KLEstimates` of Estimates.

    References:
      Schulman, `Approximating KL divergence
      <http://joschu.net/blog/kl-approx.html>`_, 2020.

    Examples:
      >>> est = kl_estimators([0.0, 0.0])
      >>> float(est.k3.value)
      0.0
    """
    lr = jnp.asarray(log_ratio)
    if lr.ndim not in (1, 2) or lr.shape[0] < 2:
        raise ValueError(
            f"log_ratio must have shape (M,) or (M, n) with M >= 2, got {lr.shape}"
        )
    if not jnp.issubdtype(lr.dtype, jnp.floating):
        lr = lr.astype(jnp.result_type(float))
    ks = kl_estimator_terms(lr)
    if lr.ndim == 2:
        ks = jnp.sum(ks, axis=2)
    return KLEstimates(*(_mean_estimate(k) for k in ks))


def kl_estimator_moments(
    policy: MemorylessLM, reference: MemorylessLM
) -> KLEstimatorMoments:
    r"""Exact mean, bias and variance of the k1/k2/k3 estimators, memoryless case.

    .. math::
        \mathbb E[k] = n \sum_x \pi(x)\, k(x), \quad
        \mathrm{Var}[k] = n \Big(\sum_x \pi(x) k(x)^2
        - \big(\sum_x \pi(x) k(x)\big)^2\Big),

    for the per-token estimators summed over the ``n`` tokens of a sequence
    drawn from ``π = policy`` (i.i.d. tokens), with ``log ρ(x) = log
    π_ref(x) − log π(x)``.  Tokens with ``π(x) = 0`` never occur.

    Args:
      policy: the sampling policy ``π`` (its ``length`` is n).
      reference: the reference ``π_ref`` (same ``K``).

    Returns:
      :class:`KLEstimatorMoments`.

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=3)
      >>> float(kl_estimator_moments(lm, lm).kl)
      0.0
    """
    if not isinstance(policy, MemorylessLM) or not isinstance(reference, MemorylessLM):
        raise ValueError(
            "policy and reference must be MemorylessLM, got "
            f"{type(policy).__name__} and {type(reference).__name__}"
        )
    if policy.num_tokens != reference.num_tokens:
        raise ValueError(
            f"policy has K = {policy.num_tokens} tokens, reference has K = "
            f"{reference.num_tokens}"
        )
    lp, lq = policy.log_probs, reference.log_probs
    p = jnp.exp(lp)
    live = p > 0
    lr = jnp.where(live, lq - jnp.where(live, lp, 0.0), 0.0)
    ks = kl_estimator_terms(lr)  # (3, K)
    first = jnp.sum(jnp.where(live[None], p[None] * ks, 0.0), axis=1)
    second = jnp.sum(jnp.where(live[None], p[None] * ks**2, 0.0), axis=1)
    n = policy.length
    kl = n * first[0]
    mean_ = n * first
    return KLEstimatorMoments(kl, mean_, mean_ - kl, n * (second - first**2))
