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
# # Asymptotics of language model alignment (Yang et al., 2024)
#
# Yang, Salamatian, Sun, Suresh, Beirami, *Asymptotics of Language Model Alignment*,
# [arXiv:2404.01730](https://arxiv.org/abs/2404.01730) (ISIT 2024). For a memoryless
# model `P = p^{⊗n}` with a linear reward `R = Σ_i r(y_i)` the paper's abstract claims:
#
# 1. **Closed form** of the KL-constrained optimum: `φ_Δ ∝ P e^{λR}`, a product of
#    identical per-token tilts, with `D(φ_Δ‖P) = Δ`; any method with a comparable
#    reward-KL trade-off must be close to it in KL.
# 2. A **large deviation principle** for the reward of the optimal policy, with a fully
#    characterised rate function.
# 3. The growth of the **scaled cumulants** of the reward is given by a **Rényi cross
#    entropy**.
# 4. **Best-of-N ≍ KL-RL**: with `N = e^{nδ}`, best-of-N and the KL-constrained optimum
#    have asymptotically equal expected reward per token and are close in KL.
#
# Each section checks the claim numerically (the `assert`s), so running this notebook is
# a test. Set `JAXALIGN_NOTEBOOK_SMALL=1` for a tiny, fast run. Run as a
# script, it saves its figures as PNG files in `JAXALIGN_NOTEBOOK_OUT` (default
# `runs/notebooks`); `make notebooks` builds the executed `.ipynb`.

# %%
# %matplotlib inline
import math

import jax
import numpy as np

import jaxalign
from jaxalign import estimators, exact, plots, sample, theory

SMALL, show = plots.notebook("yang2024")


key = jax.random.key(2024)
NUM = 1024 if SMALL else 16384  # Monte Carlo draws per point
probs, rewards = [0.4, 0.3, 0.2, 0.1], [0.0, 1.0, 2.0, 3.0]
reward = jaxalign.LinearReward(rewards)
lm1 = jaxalign.MemorylessLM.from_probs(probs, length=1)

# %% [markdown]
# ## 1. The closed form and the frontier
#
# `λ_Δ` solves `n[λΛ'(λ) − Λ(λ)] = Δ`; the optimal reward is `nΛ'(λ_Δ)`. We check the
# KL of the tilt, sample the tilt, and verify that random product policies never beat
# the frontier and satisfy the Pythagorean identity
# `D(Q‖φ) = D(Q‖P) − Δ + λ(E_φ R − E_Q R)`.

# %%
n = 16
lm = jaxalign.MemorylessLM.from_probs(probs, length=n)
budgets = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
means, ses = [], []
for i, budget in enumerate(budgets):
    lam = theory.lam_for_kl(lm, reward, budget)
    assert abs(float(theory.kl(lm, reward, lam)) - budget) < 1e-9
    draws = np.asarray(sample.tilted(jax.random.fold_in(key, i), lm, reward, lam, NUM,
                                     level="law"))
    means.append(draws.mean())
    ses.append(draws.std(ddof=1) / math.sqrt(NUM))
    z = (means[-1] - float(theory.optimal_reward(lm, reward, budget))) / ses[-1]
    assert abs(z) < 5, (budget, z)

rng = np.random.default_rng(0)
p, r = np.array(probs), np.array(rewards)
q = rng.dirichlet(np.ones(4), size=64 if SMALL else 512)
q_kl = n * np.sum(q * np.log(q / p), axis=1)
q_reward = n * q @ r
frontier_at_q = np.array([float(theory.optimal_reward(lm, reward, k)) for k in q_kl])
assert np.all(q_reward <= frontier_at_q + 1e-9), "a policy beat the frontier"
lam = float(theory.lam_for_kl(lm, reward, 2.0))
phi = np.asarray(theory.tilt(lm, reward, lam).probs)
lhs = n * np.sum(q * np.log(q / phi), axis=1)
rhs = q_kl - 2.0 + lam * (float(theory.expected_reward(lm, reward, lam)) - q_reward)
np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9)

fig = plots.reward_kl(
    None, lm, reward, length=n, best_of_n_max=64,
    extra_points={
        "tilt at budget Δ (MC, law sampling)":
            plots.Points(budgets / n, np.array(means) / n, np.array(ses) / n),
        "random product policies": plots.Points(q_kl / n, q_reward / n),
    },
)
show(fig, "frontier")

# %% [markdown]
# ## 2. Scaled cumulants and the Rényi cross entropy
#
# Under `Φ_λ`, `κ_m(R)/n = Λ^{(m)}(λ)` for every `n`, and
# `(1/n) log E e^{tR} = Λ(λ+t) − Λ(λ) = t[log C − H_{1+t}(φ_λ; q_r)]` with the reward
# softmax `q_r = e^r / C`. Monte Carlo: unbiased k-statistics with jackknife standard
# errors, and the plug-in SCGF with delta-method errors (`jaxalign.estimators`).

# %%
lam, ts = 0.5, np.array([-0.25, 0.25])
lengths = np.array([4, 16] if SMALL else [4, 16, 64])
closed = np.asarray(theory.cumulants(lm1, reward, 4, lam))
scgf_cf = np.array([float(theory.scgf(lm1, reward, t, lam)) for t in ts])
scgf_re = np.array([float(theory.scgf_renyi(lm1, reward, t, lam)) for t in ts])
phi = np.asarray(theory.tilt(lm1, reward, lam).probs)
q_r = np.exp(r) / np.exp(r).sum()
by_hand = np.array([
    t * (math.log(np.exp(r).sum())
         - float(theory.renyi_cross_entropy(phi, q_r, 1 + t))) for t in ts
])
np.testing.assert_allclose(scgf_re, scgf_cf, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(by_hand, scgf_cf, rtol=1e-10, atol=1e-12)

kap, kap_se, sc, sc_se = [], [], [], []
for n_ in lengths:
    lm_n = jaxalign.MemorylessLM.from_probs(probs, length=int(n_))
    draws = sample.tilted(jax.random.fold_in(key, 100 + n_), lm_n, reward, lam, NUM,
                          level="law")
    k = estimators.scaled_cumulants(draws, length=int(n_), order=4)
    kap.append(np.asarray(k.value))
    kap_se.append(np.asarray(k.stderr))
    s = [estimators.scgf(draws, t, length=int(n_)) for t in ts]
    sc.append([float(e.value) for e in s])
    sc_se.append([float(e.stderr) for e in s])
kap, kap_se = np.array(kap), np.array(kap_se)
z = (kap[:, :2] - closed[:2]) / kap_se[:, :2]
assert np.all(np.abs(z) < 5), z
fig = plots.scaled_cumulants(lengths, kap, kap_se, closed, t=ts, scgf=sc,
                             scgf_stderr=sc_se, scgf_closed_form=scgf_cf,
                             scgf_renyi=scgf_re)
show(fig, "cumulants")

# %% [markdown]
# ## 3. Large deviations
#
# `−(1/n) log P(R ≥ nx) → I(x) = sup_t [tx − Λ(t)]` (here under the base model,
# `λ = 0`). The exact tail comes from the lattice law of `R`; the Monte Carlo estimate
# is importance sampling from the tilt `θ(x)` with `Λ'(θ) = x`, weights
# `e^{−θR + nΛ(θ)} 1[R ≥ nx]`; Bahadur–Rao adds the `−(log n)/(2n)` correction.

# %%
xs = np.array([1.5, 2.0])
lengths = np.array([4, 16] if SMALL else [10, 40, 160, 640])
rate = np.array([float(theory.rate_function(lm1, reward, x)) for x in xs])
theta = np.array([float(theory.lam_for_kl(lm1, reward, i)) for i in rate])
ex, br, is_mean, is_se = [], [], [], []
for n_ in lengths:
    lm_n = jaxalign.MemorylessLM.from_probs(probs, length=int(n_))
    ex.append(np.asarray(exact.log_tail(exact.reward_law(lm_n, reward), n_ * xs)))
    br.append(np.asarray(exact.bahadur_rao_log_tail(lm_n, reward, n_ * xs, span=1.0)))
    row_m, row_s = [], []
    for j, (x, th) in enumerate(zip(xs, theta, strict=True)):
        draws = sample.tilted(jax.random.fold_in(key, 1000 * n_ + j), lm_n, reward, th,
                              NUM, level="law")
        est = estimators.tail_probability(
            draws, n_ * x, th, int(n_) * theory.log_mgf(lm1, reward, th),
            log_scale=True)
        row_m.append(float(est.value))
        row_s.append(float(est.stderr))
    is_mean.append(row_m)
    is_se.append(row_s)
ex, br, is_mean, is_se = map(np.array, (ex, br, is_mean, is_se))
assert np.all(np.abs(is_mean - ex) < 5 * is_se), (is_mean - ex) / is_se
excess = -ex / lengths[:, None] - rate
assert np.all(excess > 0) and np.all(excess[-1] < excess[0])
assert np.all(np.abs(ex[-1] - br[-1]) < np.abs(ex[0] - br[0]))  # error O(1/n)
fig = plots.large_deviations(lengths, xs, rate, ex, mc_log_tail=is_mean,
                             mc_log_tail_stderr=is_se, bahadur_rao_log_tail=br)
show(fig, "large_deviations")

# %% [markdown]
# ## 4. Best-of-N ≍ KL-constrained RL
#
# Bernoulli(0.3) tokens, reward 0/1, `δ = 0.1`, `N = ⌈e^{nδ}⌉`: `E_BoN[R]/n → x*`,
# `D(π_BoN‖P)/n → δ`, `D(π_BoN‖Φ_{λ_δ})/n → 0`, slowly: the gap is about
# `log n / (2 λ_δ n)`. Exact values from the law of `R`; Monte Carlo at the law level
# (any `N`). The same figure comes from the `yang2024_equivalence` sweep config with
# `jaxalign sweep` then `jaxalign plot RUN_DIR`.

# %%
delta = 0.1
bern = jaxalign.LinearReward([0.0, 1.0])
b1 = jaxalign.MemorylessLM.bernoulli(0.3, length=1)
# (SMALL lengths give the same law sizes as above, 13 and 49: no new compilation.)
lengths = [12, 48] if SMALL else [10, 20, 40, 80, 160, 320, 640, 1280, 2560]
x_star = float(theory.best_of_n_asymptotic_reward(b1, bern, delta))
rows = []


def add(n_, method, quantity, mc=None, exact_value=None, asymptotic=None, **extra):
    row = dict(point=f"{method};n={n_}", model="bernoulli-0.3", length=n_,
               method=method, delta=delta, quantity=quantity, mc_mean=None,
               mc_stderr=None, exact=exact_value, asymptotic=asymptotic, **extra)
    if mc is not None:
        row["mc_mean"] = mc.mean()
        row["mc_stderr"] = mc.std(ddof=1) / math.sqrt(mc.size)
    rows.append(row)


for i, n_ in enumerate(lengths):
    lm_n = jaxalign.MemorylessLM.bernoulli(0.3, length=n_)
    lam_d = float(theory.lam_for_kl(lm_n, bern, delta * n_))
    num = math.ceil(math.exp(n_ * delta))
    bon = exact.best_of_n(lm_n, bern, num_candidates=num, lam=lam_d)
    mc = np.asarray(sample.best_of_n(jax.random.fold_in(key, 5000 + i), lm_n, bern,
                                     num, NUM, level="law").reward) / n_
    extra = dict(num_candidates=num, log_num_candidates=math.log(num))
    add(n_, "best_of_n", "reward_per_token", mc, float(bon.expected_reward) / n_,
        x_star, **extra)
    add(n_, "best_of_n", "kl_per_token", None, float(bon.kl) / n_, delta, **extra)
    add(n_, "best_of_n", "kl_bound_per_token", None,
        float(theory.best_of_n_kl_bound(num)) / n_, **extra)
    add(n_, "best_of_n", "kl_to_tilted_per_token", None,
        float(bon.kl_to_tilted) / n_, 0.0, **extra)
    tl = np.asarray(sample.tilted(jax.random.fold_in(key, 6000 + i), lm_n, bern, lam_d,
                                  NUM, level="law")) / n_
    log_ratio = lam_d * tl - float(theory.log_mgf(b1, bern, lam_d))
    add(n_, "tilted", "reward_per_token", tl,
        float(theory.expected_reward(lm_n, bern, lam_d)) / n_, x_star)
    add(n_, "tilted", "kl_per_token", log_ratio, delta, delta)

ex_bon = np.array([r_["exact"] for r_ in rows if r_["method"] == "best_of_n"
                   and r_["quantity"] == "reward_per_token"])
assert np.all(np.diff(ex_bon) > 0) and np.all(ex_bon < x_star)
kl_bon = np.array([r_["exact"] for r_ in rows if r_["quantity"] == "kl_per_token"
                   and r_["method"] == "best_of_n"])
assert abs(kl_bon[-1] - delta) < abs(kl_bon[0] - delta)
for r_ in rows:
    if r_["mc_mean"] is not None:
        assert abs(r_["mc_mean"] - r_["exact"]) < 5 * r_["mc_stderr"], r_
fig = plots.bon_vs_rl(rows, b1, bern)
show(fig, "bon_vs_rl")
