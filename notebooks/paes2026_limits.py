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
# # Theoretical limits of language model alignment (Monteiro Paes et al., 2026)
#
# Monteiro Paes, Mackraz, Theobald, Danieli, *Theoretical Limits of Language Model
# Alignment*, [arXiv:2605.07105](https://arxiv.org/abs/2605.07105). Claims checked here
# (THEORY.md §5, A1–A5), for `max_π E_π r − β KL(π‖π_0)` with optimum
# `π_β ∝ π_0 e^{r/β}`:
#
# 1. **Jeffreys gain**: the optimal reward gain is exactly `β · J(π_β, π_0)`.
# 2. **Covariance form**: the gain is `Cov_0(r, e^{r/β}) / E_0 e^{r/β}`, so it can be
#    **estimated from base-model samples alone** (self-normalised importance sampling).
# 3. **Pareto frontier**: no policy beats `(KL(π_β‖π_0), E_{π_β} r)`; best-of-N comes
#    close, policy-gradient methods (REINFORCE / PPO / GRPO) stay below.
# 4. **Reward hacking**: optimising a proxy loses gold reward, more so for larger
#    errors and smaller `β`; **ensembling** proxies reduces the error's oscillation.
#
# Set `JAXALIGN_NOTEBOOK_SMALL=1` for a tiny, fast run. Run as a
# script, it saves its figures as PNG files in `JAXALIGN_NOTEBOOK_OUT` (default
# `runs/notebooks`); `make notebooks` builds the executed `.ipynb`.

# %%
# %matplotlib inline

import jax
import jax.numpy as jnp
import numpy as np

import jaxalign
from jaxalign import plots, proxy, rl, sample, theory

SMALL, show = plots.notebook("paes2026")


key = jax.random.key(2605)
n = 4 if SMALL else 16
probs, rewards = [0.4, 0.3, 0.2, 0.1], [0.0, 1.0, 2.0, 3.0]
lm = jaxalign.MemorylessLM.from_probs(probs, length=n)
gold = jaxalign.LinearReward(rewards)
base_reward = float(theory.expected_reward(lm, gold, 0.0))
betas = np.array([4.0, 2.0, 1.0] if SMALL else [4.0, 2.0, 1.0, 0.7, 0.5, 0.35])

# %% [markdown]
# ## 1. The Jeffreys identity
#
# `E_{π_β} R − E_{π_0} R = β J(π_β, π_0)`, and at a KL budget `Δ`:
# `ΔR*(Δ) = β_Δ (Δ + KL(π_0‖π_{β_Δ}))`.

# %%
for beta in betas:
    lam = 1.0 / beta
    gain = float(theory.expected_reward(lm, gold, lam)) - base_reward
    assert abs(float(theory.jeffreys_gain(lm, gold, lam)) - gain) < 1e-10 * (1 + gain)
    assert abs(beta * float(theory.jeffreys(lm, gold, lam)) - gain) < 1e-10 * (1 + gain)
    budget = float(theory.kl(lm, gold, lam))
    lam_b = float(theory.lam_for_kl(lm, gold, budget))
    via_budget = (budget + float(theory.reverse_kl(lm, gold, lam_b))) / lam_b
    assert abs(via_budget - float(theory.optimal_reward(lm, gold, budget))
               + base_reward) < 1e-8

# %% [markdown]
# ## 2. The covariance estimator from base samples
#
# With `y_1..y_m ~ π_0` and `w_i = e^{R_i/β}`:
# `ΔR̂ = Σ w_i R_i / Σ w_i − (1/m) Σ R_i`, consistent with an `O(1/m)` bias; it degrades
# for small `β` (the effective sample size `(Σw)²/Σw²` drops). Standard errors by the
# bootstrap.

# %%
m = 2048 if SMALL else 65536
draws = np.asarray(sample.rewards(jax.random.fold_in(key, 0), lm, gold, m,
                                  level="law"))
rng = np.random.default_rng(0)
boot = rng.integers(0, m, size=(64 if SMALL else 256, m))


def covariance_estimate(r, lam):
    w = np.exp(lam * (r - r.max(axis=-1, keepdims=True)))
    return (w * r).sum(-1) / w.sum(-1) - r.mean(-1)


est, est_se, est_kl = [], [], []
for beta in betas:
    lam = 1.0 / beta
    exact_gain = float(theory.covariance_gain(lm, gold, lam))
    value = covariance_estimate(draws, lam)
    se = covariance_estimate(draws[boot], lam).std(ddof=1)
    w = np.exp(lam * (draws - draws.max()))
    ess = w.sum() ** 2 / (w**2).sum()
    print(f"β = {beta:5.2f}: exact {exact_gain:.4f}  estimate {value:.4f} ± {se:.4f}"
          f"  (ESS {ess:.0f} of {m})")
    if ess >= 0.1 * m:  # below that the O(1/ESS) bias and the bootstrap both fail
        assert abs(value - exact_gain) < 5 * se, (beta, value, exact_gain, se)
    est.append(value)
    est_se.append(se)
    est_kl.append(float(theory.kl(lm, gold, lam)))
est, est_se, est_kl = map(np.array, (est, est_se, est_kl))

# %% [markdown]
# ## 3. The Pareto frontier: best-of-N and trained policies
#
# `jaxalign.rl.frontier_data` trains memoryless policies with REINFORCE, PPO and GRPO
# for each `β` and evaluates their exact `(KL, reward)`; best-of-N is exact. Nothing
# may lie above the frontier.

# %%
algorithms = ("reinforce",) if SMALL else ("reinforce", "ppo", "grpo")
front = rl.frontier_data(jax.random.fold_in(key, 1), lm, gold, jnp.asarray(betas),
                         algorithms=algorithms, num_candidates=(2, 4, 8, 16, 32, 64),
                         num_seeds=1 if SMALL else 3, num_steps=30 if SMALL else 400,
                         batch_size=16 if SMALL else 64)
trained_kl = np.asarray(front.algorithm_kl)
trained_reward = np.asarray(front.algorithm_reward)
for kl_, rew in zip(trained_kl.ravel(), trained_reward.ravel(), strict=True):
    assert rew <= float(theory.optimal_reward(lm, gold, kl_)) + 1e-8
for kl_, rew in zip(np.asarray(front.bon_kl), np.asarray(front.bon_reward),
                    strict=True):
    assert rew <= float(theory.optimal_reward(lm, gold, kl_)) + 1e-8
extra = {
    "covariance estimator (base samples)":
        plots.Points(est_kl / n, (base_reward + est) / n, est_se / n),
}
for i, name in enumerate(front.algorithms):
    extra[f"{name} (trained)"] = plots.Points(trained_kl[i].ravel() / n,
                                              trained_reward[i].ravel() / n)
fig = plots.reward_kl(None, lm, gold, length=n, best_of_n_max=64,
                      extra_points=extra)
show(fig, "frontier")

# %% [markdown]
# ## 4. Reward hacking and ensembling
#
# A proxy that over-rates a good-but-not-best token (`r̂(2) = r(2) + 1.5`, above
# `r(3) = 3`): tilting by it first raises the gold reward, then gives part of it back
# to please the proxy (Goodhart). The exact regret
# `β KL(π̂_β‖π_β) ≥ 0` and `|G(β)| ≤ (R_max − R_min) √(n osc(e)/(4β))` hold for every
# `β`. Averaging `k` noisy proxies shrinks `osc(ē) ≤ max_j osc(e_j)`, and with it the
# bound on the gold gap (the gap itself need not shrink monotonically in `k`).

# %%
biased = proxy.biased_proxy(gold, [2], 1.5)
lams = np.linspace(0.05, 4.0, 12 if SMALL else 48)
hack = [proxy.proxy_tilt(lm, gold, biased, 1.0 / lam) for lam in lams]
hack_kl = np.array([float(h.kl) for h in hack])
hack_gold = np.array([float(h.gold_reward) for h in hack]) - base_reward
hack_proxy = np.array([float(h.proxy_reward) for h in hack]) - float(
    theory.expected_reward(lm, biased, 0.0))
for h in hack:
    assert float(h.regret) >= -1e-12 and abs(float(h.gap)) <= float(h.gap_bound) + 1e-9
assert hack_gold.max() > hack_gold[-1] + 1e-3, "no reward hacking visible"
assert np.argmax(hack_gold) < len(hack_gold) - 1  # gold peaks, then declines
opt_kl = np.array([float(theory.kl(lm, gold, lam)) for lam in lams])
opt_gain = np.array([float(theory.expected_reward(lm, gold, lam)) for lam in lams])

gains = {
    "gold tilt (optimal)": plots.Curve(opt_kl, opt_gain - base_reward),
    "biased proxy tilt: proxy gain": plots.Curve(hack_kl, hack_proxy),
    "biased proxy tilt: gold gain": plots.Curve(hack_kl, hack_gold),
}
members = proxy.gaussian_proxy(jax.random.fold_in(key, 2), gold, 1.0, num_proxies=16)
member_rewards = np.asarray(members.token_rewards)
osc = lambda e: float(e.max() - e.min())  # noqa: E731
for k in (1, 4, 16):
    ens = proxy.ensemble(member_rewards[:k])
    e_bar = np.asarray(ens.token_rewards) - np.asarray(rewards)
    worst = max(osc(row - np.asarray(rewards)) for row in member_rewards[:k])
    assert osc(e_bar) <= worst + 1e-12
    res = [proxy.proxy_tilt(lm, gold, ens, 1.0 / lam) for lam in lams]
    gains[f"ensemble of {k}: gold gain"] = plots.Curve(
        np.array([float(x.kl) for x in res]),
        np.array([float(x.gold_reward) for x in res]) - base_reward)
    print(f"k = {k:2d}: osc(ē) = {osc(e_bar):.3f}, worst member {worst:.3f}, "
          f"|gap| at β = {1 / lams[-1]:.2f}: {abs(float(res[-1].gap)):.3f}")
fig = plots.bounds(gains, {})
fig.axes[0].set_title("Reward hacking and ensembling", fontsize="medium")
show(fig, "hacking")
