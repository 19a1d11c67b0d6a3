"""Every closed-form quantity at one tilt, as plain data (``jaxalign theory``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import _programs
from jaxalign._types import check_exactly_one, check_positive_int, light_jit
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
from jaxalign.theory._tilt import _lam, _prepare, _scalar


@light_jit(static_argnames=("order", "by_budget"))
def _report_values(lm: MemorylessLM, reward: LinearReward, x, order: int,
                   by_budget: bool) -> dict:
    # One compiled program for the whole report: the public functions validate
    # concrete arguments only, so under this jit they trace into one computation
    # (a cold `jaxalign theory` compiles once instead of ~230 small programs).
    n = lm.length
    lam = lam_for_kl(lm, reward, x) if by_budget else x
    kl_seq = kl(lm, reward, lam)
    aligned_reward = expected_reward(lm, reward, lam)
    hoeffding = hoeffding_variance(reward, lm)
    return {
        "lam": lam,
        "log_mgf": log_mgf(lm, reward, lam),
        "cumulants": cumulants(lm, reward, order, lam),
        "kl": kl_seq,
        "max_kl": max_kl(lm, reward),
        "reverse_kl": reverse_kl(lm, reward, lam),
        "jeffreys": jeffreys(lm, reward, lam),
        "expected_reward": aligned_reward,
        "base_expected_reward": expected_reward(lm, reward, jnp.zeros_like(lam)),
        "reward_gain": covariance_gain(lm, reward, lam),
        "optimal_reward": optimal_reward(lm, reward, kl_seq),
        "rate_at_aligned_mean": rate_function(lm, reward, aligned_reward / n),
        "best_of_n_kl_bound": best_of_n_kl_bound(log_num_candidates=kl_seq),
        "best_of_n_asymptotic_reward": n * best_of_n_asymptotic_reward(
            lm, reward, kl_seq / n),
        "hoeffding_variance": hoeffding,
        "subgaussian_bound": subgaussian_reward_bound(n * hoeffding, kl_seq),
        "jeffreys_gain": jeffreys_gain(lm, reward, lam),
    }


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
    check_exactly_one(lam=lam, kl_budget=kl_budget)
    order = check_positive_int(order, "order")
    _, _, dtype = _prepare(lm, reward)
    if kl_budget is not None:
        x = _scalar(kl_budget, "kl_budget", dtype, minimum=0.0,
                    allowed="a real number >= 0 (inf allowed)")
    else:
        x = _lam(lam, dtype)
    values = jax.device_get(_programs.call(
        _report_values, "theory.report", (lm, reward, x), order=order,
        by_budget=kl_budget is not None))
    lam = float(values["lam"])
    kl_seq = float(values["kl"])
    out: dict = {
        "num_tokens": lm.num_tokens,
        "length": lm.length,
        "probs": np.exp(np.asarray(lm.log_probs, np.float64)).tolist(),
        "rewards": np.asarray(reward.token_rewards, np.float64).tolist(),
        "kl_budget": kl_budget,
        "lam": lam,
        "beta": math.inf if lam == 0 else 1.0 / lam,
        "log_mgf": float(values["log_mgf"]),
        "cumulants": [float(c) for c in values["cumulants"]],
        "kl": kl_seq,
        "kl_per_token": kl_seq / lm.length,
    }
    for name in ("max_kl", "reverse_kl", "jeffreys", "expected_reward",
                 "base_expected_reward", "reward_gain", "optimal_reward",
                 "rate_at_aligned_mean"):
        out[name] = float(values[name])
    out["best_of_n_log_num_candidates"] = kl_seq
    for name in ("best_of_n_kl_bound", "best_of_n_asymptotic_reward",
                 "hoeffding_variance", "subgaussian_bound"):
        out[name] = float(values[name])
    if math.isfinite(lam) and lam != 0:
        out["jeffreys_gain"] = float(values["jeffreys_gain"])
    return out
