"""Every closed-form quantity at one tilt, as plain data (``jaxalign theory``)."""

from __future__ import annotations

import math

from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.theory._bounds import (
    best_of_n_kl_bound,
    hoeffding_variance,
    subgaussian_reward_bound,
)
from jaxalign.theory._frontier import (
    covariance_gain,
    cumulants,
    expected_reward,
    jeffreys,
    jeffreys_gain,
    kl,
    lam_for_kl,
    log_mgf,
    max_kl,
    optimal_reward,
    reverse_kl,
)
from jaxalign.theory._large_deviations import (
    best_of_n_asymptotic_reward,
    rate_function,
)


def report(lm: MemorylessLM, reward: LinearReward, *, lam: float | None = None,
           kl_budget: float | None = None, order: int = 4) -> dict:
    r"""All closed-form quantities at one tilt, as a dict of Python floats.

    Give exactly one of ``lam`` and ``kl_budget`` (sequence level; then
    ``lam = lam_for_kl(kl_budget)``).  Sequence-level unless the key says per token.
    What ``jaxalign theory`` prints (plain Python floats, ready for JSON), e.g.

    .. math::
        \mathrm{KL}(\Phi_\lambda\|P) = n\big(\lambda\Lambda'(\lambda)
        - \Lambda(\lambda)\big), \qquad
        E_{\Phi_\lambda}[R] = n\Lambda'(\lambda).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=4)
      >>> rep = report(lm, jaxalign.LinearReward([0.0, 1.0]), lam=0.0)
      >>> rep["kl"], rep["expected_reward"]
      (0.0, 2.0)

    References:
      Yang, Salamatian, Sun, Suresh, Beirami, `Asymptotics of Language Model
      Alignment <https://arxiv.org/abs/2404.01730>`_, 2024.
    """
    if (lam is None) == (kl_budget is None):
        raise ValueError("give exactly one of lam and kl_budget")
    n = lm.length
    if kl_budget is not None:
        lam = float(lam_for_kl(lm, reward, kl_budget))
    kl_seq = float(kl(lm, reward, lam))
    per_token_kl = kl_seq / n
    base_reward = float(expected_reward(lm, reward, 0.0))
    aligned_reward = float(expected_reward(lm, reward, lam))
    hoeffding = float(hoeffding_variance(reward, lm))
    out: dict = {
        "num_tokens": lm.num_tokens,
        "length": n,
        "probs": [float(p) for p in lm.probs],
        "rewards": [float(r) for r in reward.token_rewards],
        "kl_budget": kl_budget,
        "lam": lam,
        "beta": math.inf if lam == 0 else 1.0 / lam,
        "log_mgf": float(log_mgf(lm, reward, lam)),
        "cumulants": [float(c) for c in cumulants(lm, reward, order, lam)],
        "kl": kl_seq,
        "kl_per_token": per_token_kl,
        "max_kl": float(max_kl(lm, reward)),
        "reverse_kl": float(reverse_kl(lm, reward, lam)),
        "jeffreys": float(jeffreys(lm, reward, lam)),
        "expected_reward": aligned_reward,
        "base_expected_reward": base_reward,
        "reward_gain": float(covariance_gain(lm, reward, lam)),
        "optimal_reward": float(optimal_reward(lm, reward, kl_seq)),
        "rate_at_aligned_mean": float(rate_function(lm, reward,
                                                           aligned_reward / n)),
        "best_of_n_log_num_candidates": kl_seq,
        "best_of_n_kl_bound": float(best_of_n_kl_bound(log_num_candidates=kl_seq)),
        "best_of_n_asymptotic_reward": n * float(
            best_of_n_asymptotic_reward(lm, reward, per_token_kl)),
        "hoeffding_variance": hoeffding,
        "subgaussian_bound": float(subgaussian_reward_bound(n * hoeffding, kl_seq)),
    }
    if math.isfinite(lam) and lam != 0:
        out["jeffreys_gain"] = float(jeffreys_gain(lm, reward, lam))
    return out
