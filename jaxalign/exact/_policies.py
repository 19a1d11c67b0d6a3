"""The exact law of every policy p·g(R) of :mod:`jaxalign.policies`."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxalign._numerics import lse
from jaxalign._types import Array
from jaxalign.exact._lattice import _law_options
from jaxalign.models import BaseModel

# ---------------------------------------------------------------------- policies


def _win_between(log_a: np.ndarray, log_b: np.ndarray) -> float:
    """P(X > Y) + P(X = Y)/2 for independent X ~ a, Y ~ b on one ascending support."""
    from jaxalign.policies import calibrated_reward

    return float(np.dot(np.exp(log_a), calibrated_reward(log_b)))


class PolicyLaw(NamedTuple):
    r"""The exact law of ``R`` under a policy ``π = p·g(R)``, and what follows from it.

    Attributes (arrays in the base law's dtype; computed in float64):
      values: ``(M,)`` ascending reward values (the base law's support).
      log_pmf: ``(M,)`` ``log π(R = s)``.
      base_log_pmf: ``(M,)`` ``log P(R = s)``.
      expected_reward: ``E_π[R]``.
      variance: ``Var_π[R]``.
      kl: ``KL(π‖P) = Σ_s q(s) log(q(s)/P(s))`` (exact: ``dπ/dP = g(R)``), ``>= 0``.
      reverse_kl: ``KL(P‖π)`` (``inf`` when ``π`` misses part of the support).
      win_rate: ``P(R_π > R') + ½ P(R_π = R')`` with ``R' ~ P`` independent.

    Methods: :meth:`renyi` (Rényi divergence ``D_α(π‖P)``) and
    :meth:`inference_win_rate` (best-of-``k`` from ``π`` against best-of-``k`` from
    ``P``).
    """

    values: Array
    log_pmf: Array
    base_log_pmf: Array
    expected_reward: Array
    variance: Array
    kl: Array
    reverse_kl: Array
    win_rate: Array

    def log_weight(self) -> np.ndarray:
        """``log g = log(π(R = s) / P(R = s))`` on ``values`` in float64 (``-inf``
        where ``P(R = s) = 0`` or ``π`` gives ``s`` no mass)."""
        lq = np.asarray(self.log_pmf, np.float64)
        lp = np.asarray(self.base_log_pmf, np.float64)
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(lp), lq - lp, -np.inf)

    def renyi(self, alpha) -> Array:
        r"""Rényi divergence of order ``α > 0`` (``inf`` allowed):

        .. math::
            D_\alpha(\pi\|P) = \frac{1}{\alpha - 1}
            \log \sum_s P(s)\, g(s)^\alpha, \qquad
            D_1 = \mathrm{KL}, \quad D_\infty = \log \max_s g(s).

        Examples:
          >>> import jaxalign
          >>> from jaxalign import policies
          >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
          >>> law = policy_law(lm, jaxalign.LinearReward([0.0, 1.0]),
          ...                  policies.BestOfN(2))
          >>> round(float(law.renyi(float("inf"))), 6)  # log max g = log(3/2)
          0.405465
        """
        a = np.asarray(alpha, np.float64)
        if a.shape != () or not a > 0:
            raise ValueError(f"alpha must be a real scalar > 0, got {alpha!r}")
        log_g = self.log_weight()
        lp = np.asarray(self.base_log_pmf, np.float64)
        on = np.isfinite(lp)
        if a == 1.0:
            out = float(self.kl)
        elif np.isinf(a):
            out = float(np.max(log_g[on]))
        else:
            with np.errstate(invalid="ignore"):
                terms = np.where(np.isfinite(log_g), lp + a * log_g, -np.inf)[on]
            out = float(lse(terms)) / (float(a) - 1.0)
        return jnp.asarray(max(out, 0.0), self.log_pmf.dtype)

    def inference_win_rate(self, num_candidates) -> Array:
        r"""InfAlign's inference-time win rate (Balashankar et al. 2024):
        best-of-``k`` drawn from ``π`` against best-of-``k`` drawn from ``P``,
        ties counting one half.  Both select by ``R``, so the laws are
        ``F_π^k`` and ``F_P^k``.

        Examples:
          >>> import jaxalign
          >>> from jaxalign import policies
          >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
          >>> law = policy_law(lm, jaxalign.LinearReward([0.0, 1.0]), policies.Base())
          >>> float(law.inference_win_rate(4))
          0.5
        """
        from jaxalign.policies import BestOfN

        bon = BestOfN(num_candidates)
        v = np.asarray(self.values, np.float64)
        lq = np.asarray(self.log_pmf, np.float64)
        lp = np.asarray(self.base_log_pmf, np.float64)
        win = _win_between(bon.log_pmf(v, lq), bon.log_pmf(v, lp))
        return jnp.asarray(win, self.log_pmf.dtype)


def policy_law_from_law(law, policy) -> PolicyLaw:
    r"""The exact law of a policy ``π = p·g(R)`` from the base law of ``R``.

    .. math::
        q(s) = P(R = s)\, g(s), \quad
        \mathrm{KL}(\pi\|P) = \sum_s q(s) \log\frac{q(s)}{P(R=s)}, \quad
        W = \sum_s q(s)\big(F(s^-) + \tfrac12 P(R=s)\big).

    Because ``dπ/dP`` depends on the sequence only through ``R``, the
    reward-level sums are the policy-level divergences.  Accuracy: that of the
    base law (relative ~1e-11 per probability, :func:`reward_law`) plus the
    policy's own (exact for every registered policy but soft best-of-N, ~1e-12).

    Args:
      law: a :class:`RewardLaw` (or anything with ascending ``values`` and
        ``log_pmf``).
      policy: a :class:`jaxalign.policies.Policy`.

    Returns:
      A :class:`PolicyLaw` in the law's dtype.

    Examples:
      >>> import jaxalign
      >>> from jaxalign import policies
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=2)
      >>> law = reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))
      >>> above = policy_law_from_law(law, policies.Rejection(1.0))  # R >= 1
      >>> round(float(above.expected_reward), 12)
      1.333333333333
    """
    from jaxalign.policies import Policy, calibrated_reward

    if not isinstance(policy, Policy):
        raise ValueError(
            f"policy must be a jaxalign.policies.Policy, got {type(policy).__name__}")
    v = np.asarray(law.values, np.float64)
    lp = np.asarray(law.log_pmf, np.float64)
    if v.ndim != 1 or lp.shape != v.shape or np.any(np.diff(v) <= 0):
        raise ValueError("law must have ascending values and log_pmf of one shape (M,)")
    lp = lp - lse(lp)
    lq = np.asarray(policy.log_pmf(v, lp), np.float64)
    q = np.exp(lq)
    on_q = q > 0
    expected = v[0] + float(np.dot(q, v - v[0]))
    variance = float(np.dot(q, (v - expected) ** 2))
    kl = float(np.dot(q[on_q], lq[on_q] - lp[on_q]))
    on_p = np.isfinite(lp)
    if np.any(on_p & ~on_q):
        reverse = math.inf
    else:
        reverse = float(np.dot(np.exp(lp[on_p]), lp[on_p] - lq[on_p]))
    win = float(np.dot(q, calibrated_reward(lp)))
    dtype = law.log_pmf.dtype

    def cast(x):
        return jnp.asarray(x, dtype)

    return PolicyLaw(
        values=cast(v), log_pmf=cast(lq), base_log_pmf=cast(lp),
        expected_reward=cast(expected), variance=cast(variance),
        kl=cast(max(kl, 0.0)), reverse_kl=cast(max(reverse, 0.0)),
        win_rate=cast(win))


def policy_law(lm: BaseModel, reward, policy, **law_kwargs) -> PolicyLaw:
    r"""The exact law of ``R`` under ``policy``: :func:`policy_law_from_law` on
    the model's law of ``R`` (``law_kwargs``: ``span``, ``method`` ...).

    ``lm`` is any base model of the :class:`jaxalign.models.BaseModel` protocol:
    a :class:`jaxalign.MemorylessLM` (law from :func:`reward_law`) or a
    :class:`jaxalign.MarkovLM` (law from :func:`jaxalign.markov.reward_law`), with
    a reward it accepts.

    Examples:
      >>> import jaxalign
      >>> from jaxalign import policies
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
      >>> law = policy_law(lm, jaxalign.LinearReward([0.0, 1.0]), policies.BestOfN(3))
      >>> float(law.win_rate)  # sum_s q(s) (F(s-) + P(s)/2) = 1/8 * 1/4 + 7/8 * 3/4
      0.6875
    """
    # Unknown options raise ValueError here, not TypeError from the model.
    options = _law_options(law_kwargs)
    if not isinstance(lm, BaseModel):
        raise ValueError(f"lm must be a base model (MemorylessLM, MarkovLM), got "
                         f"{type(lm).__name__}")
    return policy_law_from_law(lm.reward_law(reward, **options), policy)
