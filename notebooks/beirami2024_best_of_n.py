# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Theoretical guarantees on the best-of-n alignment policy (Beirami et al., 2024)
#
# Beirami, Agarwal, Berant, D'Amour, Eisenstein, Nagpal, Suresh,
# [arXiv:2401.01879](https://arxiv.org/abs/2401.01879). Claims checked here:
#
# 1. The commonly used `KL(π_BoN‖π_ref) = log N − (N−1)/N` is only an **upper bound**;
#    for a finite outcome space the exact KL is `Σ_c b_c log(b_c/q_c)` with
#    `b_c = F_c^N − F_{c−1}^N`, and it **saturates**: for a uniform law over `L`
#    outcomes it stays below `log L` while the formula grows without bound.
# 2. Their **estimator** `D̂(ε)` (with `ε` the base probability of the returned sample)
#    tracks the true KL much better than the formula.
# 3. The **win rate** of best-of-N against the base policy is at most `N/(N+1)`.
#
# Ties are broken uniformly (what `argmax` over i.i.d. draws does). Set
# `JAXALIGN_NOTEBOOK_SMALL=1` for a tiny, fast run. Run as a
# script, it saves its figures as PNG files in `JAXALIGN_NOTEBOOK_OUT` (default
# `runs/notebooks`); `make notebooks` builds the executed `.ipynb`.

# %%
# %matplotlib inline
import math

import jax
import numpy as np

import jaxalign
from jaxalign import estimators, exact, plots, sample

SMALL, show = plots.notebook("beirami2024")


def kl_estimator(eps, num):
    """Beirami et al.'s D̂(ε) for N candidates (THEORY.md B6), vectorised."""
    eps, num = np.asarray(eps, float), np.asarray(num, float)
    log_a = num * np.log1p(-eps)  # log (1 - ε)^N
    one_minus_a = -np.expm1(log_a)  # no cancellation for tiny ε
    head = np.exp(log_a) * (np.log(num) + (num - 1) * np.log1p(-eps) - (num - 1) / num)
    return head + one_minus_a * np.log(one_minus_a / eps)


key = jax.random.key(2401)
NUM = 1024 if SMALL else 16384
num_candidates = np.unique(np.geomspace(1, 1e3 if SMALL else 1e5,
                                        7 if SMALL else 21).round().astype(int))
formula = np.log(num_candidates) - (num_candidates - 1) / num_candidates

# %% [markdown]
# ## 1. Uniform reference laws over L outcomes (distinct rewards)
#
# The exact KL saturates near `N ≈ L` at `log L`; the formula keeps growing. For a
# uniform law every sample has `ε = 1/L`, so the estimator is `D̂(1/L)` exactly.

# %%
sizes = [10, 100] if SMALL else [10, 100, 1000, 10000]
uniform_exact, uniform_est = {}, {}
for size in sizes:
    lm = jaxalign.MemorylessLM.uniform(size, length=1)
    r = jaxalign.LinearReward(np.arange(size, dtype=np.float64))
    kl = np.asarray(exact.best_of_n(lm, r, num_candidates=num_candidates).kl)
    assert np.all(kl <= formula + 1e-10), "exact KL above log N - (N-1)/N"
    assert np.all(kl <= math.log(size) + 1e-10), "exact KL above log L"
    uniform_exact[f"L = {size}"] = kl
    est = kl_estimator(np.full(num_candidates.shape, 1 / size), num_candidates)
    uniform_est[f"L = {size}"] = (est, np.zeros_like(est))
    print(f"L = {size:6d}: KL at N = {num_candidates[-1]}: exact {kl[-1]:.4f}, "
          f"estimator {est[-1]:.4f}, formula {formula[-1]:.4f}, "
          f"log L {math.log(size):.4f}")

# %% [markdown]
# ## 2. Bernoulli sequences: ties and step-like growth
#
# `n` i.i.d. Bernoulli(0.3) tokens, reward = number of ones: the reward classes have
# binomial masses and the top class has mass `ε_∞ = 0.3^n`, so the KL is capped by
# `log(1/ε_∞) = n log(1/0.3)`. The estimator averages `D̂(P(y))` over best-of-N draws,
# with `P(y) = 0.3^R 0.7^{n−R}`: exactly (on the law of the selected reward, since
# `P(y)` depends on `y` only through `R`) and by Monte Carlo.

# %%
n = 8 if SMALL else 12
q = 0.3
lm = jaxalign.MemorylessLM.bernoulli(q, length=n)
coin = jaxalign.LinearReward([0.0, 1.0])
law = exact.reward_law(lm, coin)
bon = exact.best_of_n(lm, coin, num_candidates=num_candidates)
k = np.arange(n + 1)
np.testing.assert_allclose(np.asarray(bon.values)[: n + 1], k)
eps = q**k * (1 - q) ** (n - k)  # P(y) of a sequence with R = k ones
cap = -n * math.log(q)
bern_kl = np.asarray(bon.kl)
assert np.all(bern_kl <= formula + 1e-10) and np.all(bern_kl <= cap + 1e-10)
pmf_sel = np.exp(np.asarray(bon.log_pmf))[:, : n + 1]
est_exact = np.array([pmf_sel[g] @ kl_estimator(eps, num)
                      for g, num in enumerate(num_candidates)])
est_mc, est_se, win_mc, win_se = [], [], [], []
base = np.asarray(sample.rewards_from_law(jax.random.fold_in(key, 0), law.values,
                                          law.log_pmf, NUM))
for g, num in enumerate(num_candidates):
    sel = np.asarray(sample.best_of_n_from_law(jax.random.fold_in(key, 1 + g),
                                               law.values, law.log_pmf, int(num), NUM))
    log_eps = np.log(eps[np.rint(sel).astype(int)])
    est = estimators.beirami_kl(log_eps, int(num))  # the library's estimator
    est_mc.append(float(est.value))
    est_se.append(float(est.stderr))
    w = np.where(sel > base, 1.0, np.where(sel == base, 0.5, 0.0))
    win_mc.append(w.mean())
    win_se.append(w.std(ddof=1) / math.sqrt(NUM))
est_mc, est_se = np.array(est_mc), np.array(est_se)
# 5 standard errors, plus float64 rounding (for large n nearly every draw has a tiny ε
# and D̂ ≈ log N − (N−1)/N, so the standard error can fall below 1e-15).
assert np.all(np.abs(est_mc - est_exact) < 5 * est_se + 1e-12), (est_mc, est_exact)
print("estimator mean >= exact KL (their Conjecture 4.4):",
      bool(np.all(est_exact >= bern_kl - 1e-12)))

# %% [markdown]
# ## 3. Win rate
#
# `W = P(R_BoN > R') + ½ P(R_BoN = R')` against an independent base draw `R'`:
# `W = Σ_c b_c (F_{c−1} + q_c/2) ≤ N/(N+1)`, with equality for continuous rewards.

# %%
win = np.asarray(bon.win_rate)
assert np.all(win <= num_candidates / (num_candidates + 1) + 1e-12)
z = (np.array(win_mc) - win) / np.maximum(np.array(win_se), 1e-12)
assert np.all((np.abs(z) < 5) | (np.array(win_se) == 0)), z
for num, w_, wm in zip(num_candidates, win, win_mc, strict=True):
    print(f"N = {num:6d}: win rate exact {w_:.4f}  MC {wm:.4f}  "
          f"N/(N+1) = {num / (num + 1):.4f}")

# %%
fig = plots.best_of_n_kl([
    plots.KLPanel("uniform law over L outcomes", num_candidates, uniform_exact,
                  estimator=uniform_est,
                  saturation={k: math.log(int(k[4:])) for k in uniform_exact}),
    plots.KLPanel(f"Bernoulli({q}) sequences, n = {n} (ties)", num_candidates,
                  {"R = #ones": bern_kl},
                  estimator={"R = #ones": (est_mc, est_se)},
                  saturation={"R = #ones": cap}),
])
show(fig, "kl")
